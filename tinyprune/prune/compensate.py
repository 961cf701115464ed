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

S is the Ledoit-Wolf shrunk covariance (scikit-learn): with the raw one the regression fits
noise where a layer sees few vectors (a classifier after global pooling: one per sample), which on
DS-CNN tripled the classifier's weights and cost 0.3-0.6 points after the fine-tune (benchmarks/RESULTS.md).
Statistics are measured on the model as it is when each group goes, so earlier removals and
compensations are included.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from tinyprune.prune.groups import forward_with_hooks, removes_inputs

RIDGE = 1e-6  # lambda relative to the kept channels' mean variance: numerical safety (Ledoit-Wolf shrinks)
SAMPLES = 256  # analysis samples per measurement
POSITIONS = 20000  # conv input vectors (sample x position) kept for the moments
# a linear layer reading a large flattened map (C x H x W features) is left alone: its covariance
# would take (C H W)^2 memory and a fit per removed group, from far fewer samples than features
MAX_FEATURES = 1024


def _consumers(group) -> list[tuple[nn.Module, list[int]]]:
    """(layer, input channels removed) for each conv/linear of ``group`` that reads the channels."""
    out = []
    for item in group:
        layer = item.dep.target.module
        if not removes_inputs(item.dep) or not isinstance(layer, (nn.Conv2d, nn.Conv1d, nn.Linear)):
            continue
        if not isinstance(layer, nn.Linear) and layer.groups > 1:
            continue
        if isinstance(layer, nn.Linear) and layer.in_features > MAX_FEATURES:
            continue
        out.append((layer, list(item.idxs)))
    return out


def _moments(model: nn.Module, layers: list[nn.Module], x: np.ndarray, seed: int) -> dict:
    """Mean and Ledoit-Wolf covariance (float64) of each layer's input channels over ``x``."""
    from sklearn.covariance import LedoitWolf

    rows: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in layers}

    def hook(module, inputs, _output):
        if module not in rows:
            return
        t = inputs[0].detach()
        if isinstance(module, nn.Linear):
            rows[module].append(t.reshape(-1, t.shape[-1]))
        else:
            rows[module].append(t.transpose(0, 1).reshape(t.shape[1], -1).T)  # [samples x positions, C]

    forward_with_hooks(model, (torch.from_numpy(x[s:s + 128]) for s in range(0, len(x), 128)), hook)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for m, parts in rows.items():
        if not parts:
            continue
        v = torch.cat(parts)
        if v.shape[0] > POSITIONS:
            v = v[torch.randperm(v.shape[0], generator=gen)[:POSITIONS]]
        fit = LedoitWolf().fit(v.double().numpy())
        out[m] = (torch.from_numpy(fit.location_), torch.from_numpy(fit.covariance_))
    return out


def compensate(model: nn.Module, group, x: np.ndarray, seed: int = 0) -> int:
    """Fold the removed channels' predictable part into their consumers (before ``group.prune()``).

    Returns the number of layers changed."""
    consumers = _consumers(group)
    if not consumers:
        return 0
    stats = _moments(model, [m for m, _ in consumers], x[:SAMPLES], seed)
    changed = 0
    for layer, removed in consumers:
        if layer not in stats:
            continue
        mean, cov = stats[layer]
        n = cov.shape[0]
        r = torch.as_tensor(sorted(set(removed)), dtype=torch.long)
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
