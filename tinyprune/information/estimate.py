"""One entry point per quantity, dispatching on ``method`` to the estimator modules."""

from __future__ import annotations

import inspect

import numpy as np

from tinyprune.errors import ConfigError
from tinyprune.information.binning import binning_channel_mi, binning_entropy, binning_mi
from tinyprune.information.kde import kde_channel_mi, kde_entropy, kde_mi
from tinyprune.information.kde_binned import binned_kde_channel_mi
from tinyprune.information.renyi import renyi_channel_mi, renyi_entropy, renyi_mi

METHODS = ("kde", "binning", "renyi")

_MI = {"kde": kde_mi, "binning": binning_mi, "renyi": renyi_mi}
_ENTROPY = {"kde": kde_entropy, "binning": binning_entropy, "renyi": renyi_entropy}
# "kde-binned": the "kde" upper bound with labels, by binned FFT kernel sums (O(N) per channel)
_CHANNEL = {"kde": kde_channel_mi, "kde-binned": binned_kde_channel_mi, "binning": binning_channel_mi,
            "renyi": renyi_channel_mi}


def _resolve(table: dict, method: str, args: tuple, options: dict):
    if method not in table:
        raise ConfigError(f"unknown MI method '{method}'; choose one of {', '.join(table)}")
    fn = table[method]
    try:
        inspect.signature(fn).bind(*args, **options)
    except TypeError:
        allowed = [p for p in inspect.signature(fn).parameters][len(args):]
        raise ConfigError(
            f"method '{method}' does not take option(s) {', '.join(sorted(options))}; "
            f"its options are {', '.join(allowed)}"
        ) from None
    return fn


def estimate_mi(t, y, method: str = "kde", **options) -> float:
    """I(T;Y) in nats between activations ``t [N, d]`` and ``y`` (``[N]`` labels or ``[N, k]``).

    ``method``: ``"kde"`` (Kolchinsky-Tracey, options ``bound``, ``sigma``, ``standardize``;
    use ``sigma="median"`` when t has more than a few dimensions),
    ``"binning"`` (options ``bins``, ``value_range``, ``miller_madow``) or ``"renyi"`` (matrix
    Renyi, options ``alpha``, ``sigma``, ``standardize``); all take ``discrete_y`` to override
    whether y is labels. See each module for what exactly is estimated.
    """
    return _resolve(_MI, method, (t, y), options)(t, y, **options)


def entropy(t, method: str = "kde", **options) -> float:
    """Entropy of ``t [N, d]`` in nats: differential (kde bound of T + noise), of the binned
    symbols (binning), or matrix-based Renyi (renyi)."""
    return _resolve(_ENTROPY, method, (t,), options)(t, **options)


def channel_mi(acts, y, method: str = "kde", **options) -> np.ndarray:
    """``I(T_c; Y)`` in nats for every channel c of ``acts [N, C]``, as a float64 array ``[C]``."""
    return np.asarray(_resolve(_CHANNEL, method, (acts, y), options)(acts, y, **options), dtype=np.float64)
