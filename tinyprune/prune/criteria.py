"""The criterion registry. A criterion turns (model, data) into a torch-pruning ``Importance``.

The information criteria register here by name next to the baselines, so ``--criterion NAME``
needs no change anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch.nn as nn

from tinyprune.errors import ConfigError


@dataclass(frozen=True)
class Criterion:
    name: str
    description: str
    # make(model, calibration inputs, labels) -> torch_pruning Importance
    make: Callable[[nn.Module, np.ndarray, np.ndarray], object]
    global_ranking: bool  # one ranking across layers (layers lose different fractions) or per layer
    skip_units: bool = False  # first remove whole residual/concat units (MSPIC), then channels
    # prepare(model, prune_cfg, x_train, y_train, classes, progress) -> (model, kept, info): runs once
    # before the MAC loop on the training data (VIBNet: train gates, remove closed units, fold).
    # make then receives info as a fourth argument.
    prepare: Callable | None = None
    # pre_step(model, x, y, retrain=, macs_sparsity=) -> (model, report with "kept"): prunes
    # before the channel loop (MIPP); the loop then goes on with ``make`` if MACs remain
    pre_step: Callable | None = None


CRITERIA: dict[str, Criterion] = {}


def register(criterion: Criterion) -> Criterion:
    CRITERIA[criterion.name] = criterion
    return criterion


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise ConfigError(f"unknown criterion '{name}'; known criteria: {', '.join(sorted(CRITERIA))}")
    return CRITERIA[name]


def removes_outputs(dep) -> bool:
    """Whether a torch-pruning dependency removes output channels (conv, depthwise conv, linear)."""
    return getattr(dep.pruning_fn, "__name__", "") == "prune_out_channels"


def group_mean(model: nn.Module, group, scores_of):
    """Per-channel importance of a torch-pruning group: the mean, over the group's conv/linear
    output layers that ``scores_of(layer name)`` knows, of their scores for the coupled channels.

    ``scores_of`` returns the layer's current per-channel scores (a tensor) or None. A mean, not a
    sum, so a channel shared by several layers (residual adds) is not favoured in a global
    ranking merely for appearing in more of them. None when no layer of the group is scored:
    torch-pruning then leaves the group alone.
    """
    import torch

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


def _l1(model, x, y):
    import torch_pruning as tp

    # Li et al. 2016: the L1 norm of the layer's own filters ("first" member of the coupled
    # group), not of the consumers' input columns, which the group sum would add in.
    return tp.importance.GroupMagnitudeImportance(
        p=1, group_reduction="first", normalizer=None, target_types=[nn.modules.conv._ConvNd, nn.Linear])


def _random(model, x, y):
    import torch_pruning as tp

    return tp.importance.RandomImportance()


def _mi(model, x, y):
    from tinyprune.prune.mi import MIImportance

    return MIImportance(model, x, y)


def _vib(model, x, y, prepared=None):
    from tinyprune.prune.vib import VibImportance

    return VibImportance(model, prepared["log_alpha"] if prepared else {})


def _vib_prepare(model, cfg, x, y, classes, progress=None):
    from tinyprune.prune.vib import prepare_vib

    return prepare_vib(model, cfg, x, y, classes, progress)


def _mipp_pre_step(model, x, y, retrain=None, macs_sparsity=None):
    from tinyprune.prune.mipp import mipp_pre_step

    return mipp_pre_step(model, x, y, retrain=retrain, macs_sparsity=macs_sparsity)


register(Criterion("mi", "I(channel; label) by the KDE bound, discounted for redundancy; one global ranking",
                   _mi, True))
register(Criterion("mspic", "MSPIC: remove residual/concat units by MI clustering, then mi channels to the target",
                   _mi, True, skip_units=True))
register(Criterion("vib", "VIBNet (Dai et al. 2018): train information-bottleneck gates (--vib-gamma, --vib-epochs), "
                          "remove units with log alpha < --vib-threshold, fold the gates; then lowest log alpha",
                   _vib, True, prepare=_vib_prepare))
register(Criterion("mipp", "MIPP (Westphal et al.): keep the nodes that preserve I(layer; next layer), TERC from "
                           "the output back; mi channels after it if MACs remain", _mi, True, pre_step=_mipp_pre_step))
register(Criterion("l1", "L1 norm of each filter (Li et al. 2016), same ratio in every layer", _l1, False))
register(Criterion("random", "uniformly random channels, same ratio in every layer (baseline)", _random, False))
