"""Least-squares compensation: what a removed channel carried that the kept channels predict
is written into the consumer's weights before the channel goes.

A consumer layer (conv or linear) reads input channels K (kept) and R (removed). Over the
analysis samples, with means m and covariance S of its input channels, the best linear
prediction of the removed channels from the kept ones is

    x_R ~ m_R + B (x_K - m_K),    B = S_RK S_KK^-1,

so the consumer's output keeps its expected value and every part of x_R that x_K explains when
``W_K += W_R B`` and ``bias += W_R (m_R - B m_K)``. What is lost is x_R's variance conditioned on
x_K: exactly what the ``flow`` criterion ranks channels by, so compensation makes its measure
the actual loss (He et al. 2017 and ThiNet fit the same least squares; this is the closed form
on second moments, no solver). For a conv the regression is over channels, shared by every
position and kernel tap; the mean term is exact except at zero-padded borders. A depthwise or
grouped consumer loses the channel's filter with it and is left alone, and so is a linear layer
with more than MAX_FEATURES inputs; an identity path (a residual addition) cannot be compensated
either. ``prune`` does not compensate under ``at_init`` (a fresh initialization has nothing to
carry over).

S is the Ledoit-Wolf shrunk covariance: with the raw one the regression fits noise where a layer
sees few vectors (a classifier after global pooling: one per sample), which on DS-CNN tripled the
classifier's weights and cost 0.3-0.6 points after the fine-tune (benchmarks/RESULTS.md).

Statistics are measured once per pruning step (:class:`StepStatistics`): one forward pass over
the first SAMPLES analysis samples streams the moments of every compensable layer's input
(``tinyprune.prune.statistics``; at most POSITIONS vectors per layer, drawn at random, float32
products), and every group of the step is compensated from them. Within a step a consumer's
statistics lose the rows and columns of the channels removed from it (the marginal of the kept
channels is unchanged by the removal); what earlier groups of the same step did to the layers
upstream of it is not seen until the next step's measurement. Measuring before every group, as
before, cost one forward pass and one fit per group: 10-70x the pruning time of plain l1.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from tinyprune.prune.groups import removes_inputs
from tinyprune.prune.statistics import Request, collect

RIDGE = 1e-6  # lambda relative to the kept channels' mean variance: numerical safety (Ledoit-Wolf shrinks)
SAMPLES = 256  # analysis samples per measurement
POSITIONS = 20000  # conv input vectors (sample x position) per layer kept for the moments
# a linear layer reading a large flattened map (C x H x W features) is left alone: its covariance
# would take (C H W)^2 memory and a fit per removed group, from far fewer samples than features
MAX_FEATURES = 1024


def compensable(layer: nn.Module) -> bool:
    """A dense conv or a linear layer of at most MAX_FEATURES inputs."""
    if isinstance(layer, nn.Linear):
        return layer.in_features <= MAX_FEATURES
    return isinstance(layer, (nn.Conv2d, nn.Conv1d)) and layer.groups == 1


def _in_width(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _consumers(group) -> dict[nn.Module, list[int]]:
    """Input channels removed from each compensable conv/linear of ``group`` that reads them."""
    out: dict[nn.Module, set[int]] = {}
    for item in group:
        layer = item.dep.target.module
        if removes_inputs(item.dep) and compensable(layer):
            out.setdefault(layer, set()).update(int(i) for i in item.idxs)
    return {layer: sorted(r) for layer, r in out.items()}


class StepStatistics:
    """Mean and Ledoit-Wolf covariance of the compensable layers' inputs, measured in one forward
    pass when first asked for and kept for the rest of the step."""

    def __init__(self, model: nn.Module, x, seed: int = 0, layers: list[nn.Module] | None = None):
        self.model, self.x, self.seed = model, x[:SAMPLES], seed
        self.layers = layers
        self._moments: dict | None = None
        self._fits: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        self.passes = 0

    def _measure(self) -> None:
        layers = self.layers if self.layers is not None else [m for m in self.model.modules() if compensable(m)]
        # one generator per layer (its position in the model), so a layer's draw does not depend
        # on which other layers are measured with it
        index = {m: i for i, m in enumerate(self.model.modules())}
        requests = [Request(m, cap=POSITIONS, fourth=True, dtype=torch.float32, seed=self.seed * 100003 + index[m])
                    for m in layers]
        stats = collect(self.model, self.x, requests)
        self._moments = {r.layer: stats[r] for r in requests if r in stats}
        self._fits = {}
        self.passes += 1

    def get(self, layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mean, covariance) of ``layer``'s input channels as they are now; None if it never ran."""
        if self._moments is None:
            self._measure()
        if layer not in self._fits:
            if layer not in self._moments:
                return None
            self._fits[layer] = self._moments[layer].ledoit_wolf()
        fit = self._fits[layer]
        if fit[1].shape[0] != _in_width(layer):  # changed outside this step's groups: measure again
            self._measure()
            return self.get(layer) if layer in self._moments else None
        return fit

    def remove(self, layer: nn.Module, removed: list[int]) -> None:
        """``layer`` loses input channels ``removed`` (indices as they are now)."""
        fit = self.get(layer)
        if fit is None:
            return
        keep = torch.ones(fit[0].shape[0], dtype=torch.bool)
        keep[torch.as_tensor(removed, dtype=torch.long)] = False
        self._fits[layer] = (fit[0][keep], fit[1][keep][:, keep])


def compensate(model: nn.Module, group, x, seed: int = 0, stats: StepStatistics | None = None) -> int:
    """Fold the removed channels' predictable part into their consumers (before ``group.prune()``).

    ``stats``: the step's statistics (measured for this group alone when None). Returns the
    number of layers changed."""
    consumers = _consumers(group)
    if not consumers:
        return 0
    if stats is None:
        stats = StepStatistics(model, x, seed, layers=list(consumers))
    changed = 0
    for layer, removed in consumers.items():
        fit = stats.get(layer)
        if fit is None:
            continue
        mean, cov = fit
        stats.remove(layer, removed)
        n = cov.shape[0]
        r = torch.as_tensor(removed, dtype=torch.long)
        keep_mask = torch.ones(n, dtype=torch.bool)
        keep_mask[r] = False
        k = keep_mask.nonzero().flatten()
        if len(k) == 0:
            continue
        skk = cov[k][:, k]
        ridge = RIDGE * float(torch.diagonal(skk).mean().clamp_min(1e-12))
        b = torch.linalg.solve(skk + ridge * torch.eye(len(k), dtype=skk.dtype), cov[k][:, r]).T  # [R, K]
        shift = mean[r] - b @ mean[k]  # [R]
        with torch.no_grad():
            w = layer.weight.double()
            wr = w[:, r]  # [out, R, *kernel]
            w[:, k] += torch.einsum("or...,rk->ok...", wr, b)
            offset = torch.einsum("or...,r->o", wr, shift)
            layer.weight.copy_(w.to(layer.weight.dtype))
            if layer.bias is None:
                w0 = layer.weight
                layer.bias = nn.Parameter(torch.zeros(w0.shape[0], dtype=w0.dtype, device=w0.device),
                                          requires_grad=w0.requires_grad)
            layer.bias.add_(offset.to(layer.bias.dtype))
        changed += 1
    return changed
