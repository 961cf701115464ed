"""Input handling shared by the estimators: conversion, label detection, scaling, widths.

Everything returns float64 torch tensors on the CPU: the estimators sum thousands of log-terms
and subtract entropies of similar size, where float32 rounding would show in the result.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from tinyprune.errors import ConfigError, DataError

# Elements per temporary block in the pairwise loops (8M float64 = 64 MB); several such
# temporaries are alive at once, so the peak stays well under a GB whatever N is.
BLOCK_ELEMENTS = 8 * 1024 * 1024


def as_matrix(a, name: str = "t") -> torch.Tensor:
    """``a`` (numpy or torch) as a float64 ``[N, d]`` tensor; ``[N]`` becomes ``[N, 1]``.

    Trailing dimensions beyond the second are flattened, so a ``[N, C, H, W]`` map is one
    ``C*H*W``-dimensional variable.
    """
    x = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a)
    x = x.detach().to("cpu", torch.float64)
    if x.ndim == 0:
        raise DataError(f"{name} must have a sample axis, got a scalar")
    x = x.reshape(x.shape[0], -1)
    if x.shape[0] < 2:
        raise DataError(f"{name} needs at least 2 samples, got {x.shape[0]}")
    if not torch.isfinite(x).all():
        raise DataError(f"{name} contains NaN or infinite values")
    return x


def _is_integer(a) -> bool:
    if isinstance(a, torch.Tensor):
        return not (a.dtype.is_floating_point or a.dtype.is_complex)
    return np.issubdtype(np.asarray(a).dtype, np.integer) or np.asarray(a).dtype == np.bool_


def split_y(y, n: int, discrete: bool | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Return ``(labels, None)`` for class labels or ``(None, values)`` for a continuous ``y``.

    ``discrete=None`` decides from the data: integer/bool ``[N]`` or ``[N, 1]`` arrays are labels,
    anything else is a continuous ``[N, k]`` variable. Labels come back as 0..K-1 codes.
    """
    shape = tuple(y.shape) if hasattr(y, "shape") else np.shape(y)
    if not shape or shape[0] != n:
        raise DataError(f"y has {shape[0] if shape else 0} samples but t has {n}")
    if discrete is None:
        discrete = _is_integer(y) and (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1))
    if discrete:
        raw = y.detach().cpu() if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
        raw = raw.reshape(n, -1)
        # Rows as symbols, so a discrete [N, k] y (several label columns) is one joint label.
        _, codes = torch.unique(raw, dim=0, return_inverse=True)
        return codes.long(), None
    return None, as_matrix(y, "y")


def standardize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Z-score each column; returns ``(z, std)``. Constant columns stay 0 (std treated as 1)."""
    std = x.std(dim=0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (x - x.mean(dim=0)) / std, std


def silverman_width(n: int, d: int) -> float:
    """Silverman's multivariate rule of thumb for unit-variance data: ``(4/(d+2))^(1/(d+4)) n^(-1/(d+4))``.

    It shrinks with n just slowly enough for a Gaussian KDE to stay consistent, so estimators
    built on it converge to the noise-free quantity as n grows (in low dimensions).
    """
    return (4.0 / (d + 2)) ** (1.0 / (d + 4)) * n ** (-1.0 / (d + 4))


MEDIAN_SAMPLES = 1000


def median_width(x: torch.Tensor) -> float:
    """Median-heuristic kernel std of the rows of ``x [N, d]``: sqrt(median |x_i - x_j|^2 / 2).

    The kernel exp(-D / (2 sigma^2)) is then e^-1 at the median pair whatever d, where a
    density rule leaves high-dimensional kernels disjoint. The median is over the pairs of at
    most MEDIAN_SAMPLES evenly spaced samples (cheap, deterministic); a mostly constant
    variable (median 0) falls back to the mean, an exactly constant one to 1.
    """
    n = x.shape[0]
    sub = x[torch.linspace(0, n - 1, min(n, MEDIAN_SAMPLES)).round().long()]
    sq = (sub * sub).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * sub @ sub.T).clamp_min_(0.0)
    iu = torch.triu_indices(len(sub), len(sub), 1)
    pairs = d2[iu[0], iu[1]]
    med = float(pairs.median()) if pairs.numel() else 0.0
    if med <= 0.0:
        med = float(pairs.mean()) if pairs.numel() else 0.0
    return math.sqrt(med / 2.0) if med > 0.0 else 1.0


def label_counts(labels: torch.Tensor) -> torch.Tensor:
    return torch.bincount(labels).to(torch.float64)


def shannon_from_counts(counts: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Plug-in Shannon entropy (nats) of the histogram(s) ``counts`` along ``dim``."""
    total = counts.sum(dim=dim, keepdim=True)
    p = counts / total
    return -(torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))).sum(dim=dim)


def label_entropy(labels: torch.Tensor) -> float:
    """H(Y) in nats of the empirical label distribution."""
    return float(shannon_from_counts(label_counts(labels)))


def sort_by_label(labels: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Permutation that groups equal labels, and the ``(start, end)`` slice of each class."""
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels).tolist()
    bounds, start = [], 0
    for c in counts:
        if c:
            bounds.append((start, start + c))
        start += c
    return order, bounds


def check_positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    return float(value)
