"""Shared model mechanics of the pruning side: which layers are prunable, which layer is the
classifier, channel widths and identities, torch-pruning group helpers, re-initialization."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)  # layers whose output channels are removed


def width(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every prunable layer, by module name."""
    return {name: width(m) for name, m in model.named_modules() if isinstance(m, PRUNABLE)}


def classifier_layers(model: nn.Module, classes: int | None) -> list[str]:
    """Names of the layers whose outputs are class scores (never pruned): the last conv/linear
    with ``classes`` outputs, or the last conv/linear when none has (or ``classes`` is None)."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE)]
    if not layers:
        return []
    if classes is not None:
        match = [n for n, m in layers if width(m) == classes]
        if match:
            return match[-1:]
    return [layers[-1][0]]


def removes_outputs(dep) -> bool:
    """Whether a torch-pruning dependency removes output channels (conv, depthwise conv, linear)."""
    return getattr(dep.pruning_fn, "__name__", "") == "prune_out_channels"


def removes_inputs(dep) -> bool:
    return getattr(dep.pruning_fn, "__name__", "") == "prune_in_channels"


def follow_removal(kept: dict[str, list[int]], group, names: dict) -> None:
    """Update channel identities (``kept``: layer -> original ids of its remaining outputs) for
    a torch-pruning group about to be pruned."""
    for dep, idxs in group:
        name = names.get(dep.layer)
        if removes_outputs(dep) and name in kept:
            drop = set(int(i) for i in idxs)
            kept[name] = [c for pos, c in enumerate(kept[name]) if pos not in drop]


def group_mean(model: nn.Module, group, scores_of):
    """Per-channel importance of a torch-pruning group: the mean, over the group's conv/linear
    output layers that ``scores_of(layer name)`` knows, of their scores for the coupled channels.

    ``scores_of`` returns the layer's current per-channel scores (a tensor) or None. A mean, not a
    sum, so a channel shared by several layers (residual adds) is not favoured in a global
    ranking merely for appearing in more of them. None when no layer of the group is scored:
    torch-pruning then leaves the group alone.
    """
    names = {m: n for n, m in model.named_modules()}
    total = count = None
    for i, (dep, idxs) in enumerate(group):
        scores = scores_of(names.get(dep.layer, ""))
        if scores is None or not removes_outputs(dep):
            continue
        root = torch.as_tensor(group[i].root_idxs)
        local = scores[torch.as_tensor(idxs)].float()
        if total is None:
            total, count = torch.zeros(len(group[0].idxs)), torch.zeros(len(group[0].idxs))
        total.index_add_(0, root, local)
        count.index_add_(0, root, torch.ones_like(local))
    return None if total is None else total / count.clamp_min(1)


def forward_with_hooks(model: nn.Module, batches, hook, types: tuple = PRUNABLE) -> None:
    """Run ``batches`` through ``model`` (``tinyprune.information.capture.run_hooks``) with
    ``hook(module, inputs, output)`` on every module of ``types`` (default the prunable layers)."""
    from tinyprune.information.capture import run_hooks

    run_hooks(model, batches, [(m, hook) for m in model.modules() if isinstance(m, types)])


def output_positions(model: nn.Module, example: torch.Tensor) -> dict[nn.Module, int]:
    """Spatial positions of each prunable layer's output for one sample (1 for Linear)."""
    out: dict[nn.Module, int] = {}

    def hook(module, _inp, result):
        out[module] = 1 if isinstance(module, nn.Linear) else result[0].numel() // result.shape[1]

    forward_with_hooks(model, [example], hook)
    return out


def consumer_macs(module: nn.Module, positions: int) -> float:
    """MACs one input channel of a conv/linear costs."""
    if isinstance(module, nn.Linear):
        return float(module.out_features)
    return float(module.out_channels // module.groups * math.prod(module.kernel_size) * positions)


def producer_macs(module: nn.Module, positions: int) -> float:
    """MACs one output channel of a conv/linear costs."""
    if isinstance(module, nn.Linear):
        return float(module.in_features)
    return float(module.in_channels // module.groups * math.prod(module.kernel_size) * positions)


def _per_channel_macs(group, positions: dict[nn.Module, int]):
    """(item, MACs one of its channels costs) for the conv/linear items of a torch-pruning group,
    as ``count_torch`` counts them; a depthwise layer (in and out coupled) is counted once."""
    seen_out = set()
    for item in group:
        dep, layer = item.dep, item.dep.layer
        if not isinstance(layer, PRUNABLE) or layer not in positions:
            continue
        depthwise = not isinstance(layer, nn.Linear) and layer.groups > 1 and layer.groups == layer.in_channels
        if removes_outputs(dep):
            seen_out.add(layer)
            yield item, producer_macs(layer, positions[layer])
        elif removes_inputs(dep) and not depthwise:
            yield item, consumer_macs(layer, positions[layer])


def group_channel_macs(group, positions: dict[nn.Module, int]) -> torch.Tensor:
    """MACs saved by removing each channel of a full torch-pruning group (root idxs 0..n-1)."""
    macs = torch.zeros(len(group[0].idxs), dtype=torch.float64)
    for item, per in _per_channel_macs(group, positions):
        macs.index_add_(0, torch.as_tensor(item.root_idxs), torch.full((len(item.idxs),), per, dtype=torch.float64))
    return macs


def group_macs(group, positions: dict[nn.Module, int]) -> float:
    """MACs saved by pruning a group as it stands (a pruner step's group: the channels it removes)."""
    return sum(per * len(item.idxs) for item, per in _per_channel_macs(group, positions))


def reinitialize(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with every parameter freshly initialized (``reset_parameters``)."""
    fresh = copy.deepcopy(model)
    torch.manual_seed(seed)
    for m in fresh.modules():
        if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
            m.reset_parameters()
    return fresh


def channel_groups(group) -> int:
    """How many channels one removal must take: a grouped (not depthwise) conv in the group keeps
    equal channel groups only when one channel goes from each (as Torch-Pruning's step does)."""
    g = 1
    for item in group:
        m = item.dep.target.module
        if isinstance(m, nn.Conv2d) and 1 < m.groups and not (m.groups == m.in_channels == m.out_channels):
            g = max(g, m.groups)
    return g
