"""Mutual-information estimators for activations, and activation capture.

All quantities are in nats. ``t`` is an ``[N, d]`` array (numpy or torch); ``y`` is ``[N]``
integer labels or ``[N, k]`` continuous values. Three estimators, chosen by ``method``:

- ``"kde"`` (:mod:`.kde`): Kolchinsky-Tracey pairwise-distance bounds for a Gaussian mixture
  centred on the samples, i.e. the MI of ``T + noise``; default ``bound="upper"``.
- ``"binning"`` (:mod:`.binning`): plug-in MI of equal-width binned activations.
- ``"renyi"`` (:mod:`.renyi`): matrix-based Renyi alpha-entropy functional (Gram eigenvalues),
  which also takes a list of arrays as one multivariate ``t``.

Activations come from :func:`capture_activations` / :func:`cached_activations` as per-channel
summaries ``[N, C]``; :func:`channel_mi` scores every channel against the labels.
"""

from tinyprune.information.binning import binning_channel_mi, binning_entropy, binning_mi, discretize
from tinyprune.information.capture import activation_key, cached_activations, capture_activations
from tinyprune.information.estimate import METHODS, channel_mi, entropy, estimate_mi
from tinyprune.information.kde import kde_channel_mi, kde_entropy, kde_mi, kde_width
from tinyprune.information.renyi import matrix_entropy, renyi_channel_mi, renyi_entropy, renyi_mi

__all__ = [
    "METHODS",
    "activation_key",
    "binning_channel_mi",
    "binning_entropy",
    "binning_mi",
    "cached_activations",
    "capture_activations",
    "channel_mi",
    "discretize",
    "entropy",
    "estimate_mi",
    "kde_channel_mi",
    "kde_entropy",
    "kde_mi",
    "kde_width",
    "matrix_entropy",
    "renyi_channel_mi",
    "renyi_entropy",
    "renyi_mi",
]
