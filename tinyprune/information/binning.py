"""Binning (plug-in) estimator of entropy and mutual information (Shwartz-Ziv & Tishby 2017; Tewary 2023).

Each dimension is cut into ``bins`` equal-width bins, each sample's vector of bin indices is one
discrete symbol, and MI is computed from the empirical joint histogram:
``I(T;Y) = H(T) + H(Y) - H(T,Y)`` in nats. What is estimated is the MI of the *discretized*
variables, which is at most H(Y) for labels; it is exact (up to sampling) when T is a function
of Y that the bins resolve.

Bin edges: by default the observed [min, max] of each dimension; ``value_range=(lo, hi)`` fixes
them instead (Tewary (2023) maps activations to [-1, 1] with tanh and bins that range; values
outside are clipped into the end bins). A continuous ``y`` is binned the same way.

Bias: the plug-in MI of independent variables is positive, about
``(|T| - 1)(|Y| - 1) / (2N)`` nats for |T|, |Y| occupied symbols (Miller-Madow); with many
dimensions every sample becomes its own symbol and I -> H(Y) whatever the data. Pass
``miller_madow=True`` to subtract the first-order bias of each entropy.
"""

from __future__ import annotations

import numpy as np
import torch

from tinyprune.errors import ConfigError
from tinyprune.information._common import as_matrix, shannon_from_counts, split_y

DEFAULT_BINS = 30


def _check_bins(bins) -> int:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ConfigError(f"bins must be a positive integer, got {bins!r}")
    return int(bins)


def discretize(x, bins: int = DEFAULT_BINS, value_range: tuple[float, float] | None = None) -> torch.Tensor:
    """Bin index ``[N, d]`` (int64, 0..bins-1) of every entry of ``x``, equal-width per column."""
    bins = _check_bins(bins)
    x = as_matrix(x, "t")
    if value_range is None:
        lo, hi = x.min(dim=0).values, x.max(dim=0).values
    else:
        lo_v, hi_v = (float(v) for v in value_range)
        if not hi_v > lo_v:
            raise ConfigError(f"value_range must be (low, high) with low < high, got {value_range!r}")
        lo = torch.full((x.shape[1],), lo_v, dtype=x.dtype)
        hi = torch.full((x.shape[1],), hi_v, dtype=x.dtype)
    width = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    # floor((x - lo) / width * bins), with the max itself in the last bin, not one past it.
    idx = torch.floor((x - lo) / width * bins).long()
    return idx.clamp_(0, bins - 1)


def symbols(idx: torch.Tensor) -> torch.Tensor:
    """One integer code 0..S-1 per row of ``idx``: the joint symbol of its bin vector."""
    if idx.shape[1] == 1:
        return torch.unique(idx[:, 0], return_inverse=True)[1]
    return torch.unique(idx, dim=0, return_inverse=True)[1]


def _entropy_of_codes(codes: torch.Tensor, miller_madow: bool) -> float:
    counts = torch.bincount(codes).to(torch.float64)
    h = float(shannon_from_counts(counts))
    if miller_madow:
        h += (int((counts > 0).sum()) - 1) / (2.0 * codes.numel())
    return h


def _y_codes(y, n: int, bins: int, value_range, discrete_y) -> torch.Tensor:
    labels, yc = split_y(y, n, discrete_y)
    return labels if labels is not None else symbols(discretize(yc, bins, value_range))


def binning_entropy(
    t, bins: int = DEFAULT_BINS, value_range: tuple[float, float] | None = None, miller_madow: bool = False
) -> float:
    """Shannon entropy (nats) of the binned symbol of each row of ``t``."""
    return _entropy_of_codes(symbols(discretize(t, bins, value_range)), miller_madow)


def binning_mi(
    t,
    y,
    bins: int = DEFAULT_BINS,
    value_range: tuple[float, float] | None = None,
    miller_madow: bool = False,
    discrete_y: bool | None = None,
) -> float:
    """Plug-in I(T;Y) in nats of the binned ``t [N, d]`` and ``y`` (labels, or binned if continuous)."""
    ct = symbols(discretize(t, bins, value_range))
    n = ct.numel()
    cy = _y_codes(y, n, bins, value_range, discrete_y)
    joint = ct * (int(cy.max()) + 1) + cy
    mi = (
        _entropy_of_codes(ct, miller_madow)
        + _entropy_of_codes(cy, miller_madow)
        - _entropy_of_codes(joint, miller_madow)
    )
    return mi


def binning_channel_mi(
    acts,
    y,
    bins: int = DEFAULT_BINS,
    value_range: tuple[float, float] | None = None,
    miller_madow: bool = False,
    discrete_y: bool | None = None,
) -> np.ndarray:
    """``I(T_c; Y)`` in nats for every column of ``acts [N, C]``, all channels in one histogram pass."""
    idx = discretize(acts, bins, value_range)  # [N, C]
    n, c = idx.shape
    cy = _y_codes(y, n, bins, value_range, discrete_y)
    ny = int(cy.max()) + 1
    offsets = torch.arange(c)[None, :] * (bins * ny)
    joint = torch.bincount((offsets + idx * ny + cy[:, None]).reshape(-1), minlength=c * bins * ny)
    joint = joint.reshape(c, bins, ny).to(torch.float64)
    h_t = shannon_from_counts(joint.sum(2))
    h_y = shannon_from_counts(joint[0].sum(0))
    h_ty = shannon_from_counts(joint.reshape(c, -1))
    if miller_madow:
        h_t = h_t + ((joint.sum(2) > 0).sum(1) - 1) / (2.0 * n)
        h_y = h_y + (int((joint[0].sum(0) > 0).sum()) - 1) / (2.0 * n)
        h_ty = h_ty + ((joint.reshape(c, -1) > 0).sum(1) - 1) / (2.0 * n)
    return (h_t + h_y - h_ty).numpy()
