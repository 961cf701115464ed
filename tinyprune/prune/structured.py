"""Physical channel removal with torch-pruning until a MAC budget is met.

``--sparsity`` is the fraction of MACs removed. Removing a fraction r of channels in every
layer cuts MACs by roughly 1-(1-r)^2, and residual couplings make it irregular, so the
pruner advances in small steps and stops at the first step that meets the target.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from tinyprune.config import PruneConfig
from tinyprune.errors import ConfigError
from tinyprune.measure.macs import count_torch
from tinyprune.prune.criteria import removes_outputs, get_criterion


@dataclass
class PruneResult:
    model: nn.Module
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    layers: list[dict]  # name, channels_before, channels_after
    steps: int
    kept: dict[str, list[int]]  # per layer: original indices of the output channels that remain
    units: list[dict] = field(default_factory=list)  # MSPIC stage records (skip-unit criteria only)
    prepared: dict | None = None  # what a criterion's prepare step reported (vib: gates, history)
    pre_step: dict | None = None  # the pre-step's report (MIPP)


def _output_layers(model: nn.Module, classes: int) -> list[nn.Module]:
    """The layers whose outputs are class scores: their output channels must stay."""
    last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv1d))]
    return [m for m in last if (m.out_features if isinstance(m, nn.Linear) else m.out_channels) == classes][-1:]


def _widths(model: nn.Module) -> dict[str, int]:
    return {
        name: (m.out_features if isinstance(m, nn.Linear) else m.out_channels)
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))
    }


def prune_to_macs(model: nn.Module, cfg: PruneConfig, x_calib: np.ndarray, y_calib: np.ndarray,
                  classes: int, retrain=None, train: tuple[np.ndarray, np.ndarray] | None = None,
                  progress=None) -> PruneResult:
    """Return a pruned copy of ``model`` with at most (1 - sparsity) of its MACs.

    ``retrain(model) -> model`` fine-tunes between MSPIC stages (skip-unit criteria only).
    ``train``: (x, y) for a criterion's prepare step (vib trains on it; default the calibration
    data). A prepare step may remove more than ``sparsity`` asks: the target is a floor.
    """
    import torch_pruning as tp

    model = copy.deepcopy(model).eval()
    example = torch.from_numpy(x_calib[:1])
    macs0, params0 = count_torch(model, example)
    before = _widths(model)
    units: list[dict] = []
    criterion = get_criterion(cfg.criterion)
    prepared, kept_prepared = None, {}
    if criterion.prepare is not None:
        x_train, y_train = train if train is not None else (x_calib, y_calib)
        model, kept_prepared, prepared = criterion.prepare(model, cfg, x_train, y_train, classes, progress)
        model.eval()
    if cfg.sparsity > 0 and criterion.skip_units:
        from tinyprune.prune.skip_units import mspic

        model, units = mspic(model, x_calib, y_calib, retrain=retrain)
        model.eval()
    pre_report, pre_kept = None, {}
    if cfg.sparsity > 0 and criterion.pre_step is not None:
        model, pre_report = criterion.pre_step(model, x_calib, y_calib, retrain=retrain, macs_sparsity=cfg.sparsity)
        model.eval()
        pre_kept = pre_report["kept"]
    kept = {name: list(pre_kept.get(name, range(width))) for name, width in before.items() if name in _widths(model)}
    kept.update({k: list(v) for k, v in kept_prepared.items() if k in kept})
    if cfg.sparsity == 0:
        macs1, params1 = count_torch(model, example)
        now = _widths(model)
        return PruneResult(model, macs0, macs1, params0, params1,
                           [{"name": k, "channels_before": v, "channels_after": now.get(k, 0)} for k, v in before.items()],
                           0, kept, units, prepared)
    if criterion.prepare is not None:
        importance = criterion.make(model, x_calib, y_calib, prepared)
    else:
        importance = criterion.make(model, x_calib, y_calib)
    if hasattr(importance, "kept"):
        importance.kept = kept  # lets measured scores follow the channels between measurements
    target = (1.0 - cfg.sparsity) * macs0
    # About 1 % of the channels per step: a global ranking can empty a small layer in one
    # coarse step and overshoot the MAC target far (all of LeNet-5's conv1 is 6 channels).
    channels = sum(before.values())
    steps_total = max(cfg.max_steps, min(400, channels))
    names = {m: n for n, m in model.named_modules()}
    macs = count_torch(model, example)[0]  # skip-unit removal may already have met the target
    steps = 0
    # A global ranking can stop short of the target when its per-layer floors bind on the
    # layers that hold the MACs; the rest of the cut is then spread evenly over the layers.
    for global_ranking in ([True, False] if criterion.global_ranking else [False]):
        if macs <= target:
            break
        pruner = tp.pruner.MetaPruner(
            model,
            example,
            importance=importance,
            global_pruning=global_ranking,
            # A channel ratio of 0.95 spread over the steps: the loop stops at the MAC target.
            pruning_ratio=0.95,
            # the floor of global rankings: no layer loses more than 80 % of its channels
            max_pruning_ratio=0.8 if global_ranking else 1.0,
            iterative_steps=steps_total,
            ignored_layers=_output_layers(model, classes),
            round_to=None,
        )
        phase_steps = 0
        while macs > target and phase_steps < steps_total:
            phase_steps += 1
            for group in pruner.step(interactive=True):
                # Follow each channel's identity through the steps, for the per-layer report.
                for dep, idxs in group:
                    name = names.get(dep.layer)
                    if removes_outputs(dep) and name in kept:
                        drop = set(int(i) for i in idxs)
                        kept[name] = [c for pos, c in enumerate(kept[name]) if pos not in drop]
                group.prune()
            macs, _ = count_torch(model, example)
        steps += phase_steps
    if macs > target * 1.02:
        raise ConfigError(
            f"could not remove {cfg.sparsity:.0%} of MACs with criterion {cfg.criterion} "
            f"(reached {1 - macs / macs0:.1%}); lower --sparsity"
        )
    macs1, params1 = count_torch(model, example)
    after = _widths(model)
    layers = [{"name": k, "channels_before": v, "channels_after": after.get(k, 0)} for k, v in before.items()]
    return PruneResult(model, macs0, macs1, params0, params1, layers, steps, kept, units, prepared, pre_report)
