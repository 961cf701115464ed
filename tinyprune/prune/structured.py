"""Physical channel removal with torch-pruning until a MAC budget is met.

``--sparsity`` is the fraction of MACs removed. Removing a fraction r of channels in every
layer cuts MACs by roughly 1-(1-r)^2, and residual couplings make it irregular, so the
pruner advances in small steps and stops at the first step that meets the target.
The criterion (``tinyprune.prune.protocol``) may prune first in its own way (``prepare``) and
ranks channels for the steps (``importance``); this module names no criterion.
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
from tinyprune.prune import protocol
from tinyprune.prune import compensate as comp
from tinyprune.prune.groups import (PRUNABLE, channel_groups, classifier_layers, follow_removal, group_channel_macs, group_macs,
                                    output_positions,
                                    reinitialize, widths)
from tinyprune.prune.protocol import Context, Step


# Criteria are compared at equal MACs: a step that would carry the cut more than this fraction of
# the original MACs past the target is not taken; single channels are removed instead (_land).
LANDING = 0.01


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
    record: dict = field(default_factory=dict)  # the criterion's own record (report.json, verbatim)
    source: nn.Module | None = None  # the model pruning started from (re-initialized with at_init)


def prune_to_macs(model: nn.Module, cfg: PruneConfig, x_calib: np.ndarray, y_calib: np.ndarray,
                  classes: int, retrain=None, train: tuple[np.ndarray, np.ndarray] | None = None,
                  progress=None, seed: int = 0, cache_dir=None, labels: np.ndarray | None = None) -> PruneResult:
    """Return a pruned copy of ``model`` with at most (1 - sparsity) of its MACs.

    ``x_calib``/``y_calib``: the analysis samples the criterion looks at. ``retrain(model, label)
    -> model`` fine-tunes between a criterion's stages (MSPIC). ``train``: (x, y) for criteria
    that train (vib; default the analysis samples). A criterion's ``prepare`` may remove more
    than ``sparsity`` asks: the target is a floor. ``labels``: the discrete variable label-MI
    criteria measure information about when the task has no classes (default ``y_calib``).
    """
    x_train, y_train = train if train is not None else (None, None)
    ctx = Context(seed=seed, x=x_calib, y=y_calib, classes=classes, sparsity=cfg.sparsity,
                  x_train=x_train, y_train=y_train, retrain=retrain, progress=progress,
                  cache_dir=cache_dir, labels=labels)
    return prune(model, cfg, ctx)


def prune(model: nn.Module, cfg: PruneConfig, ctx: Context) -> PruneResult:
    import torch_pruning as tp

    criterion = protocol.build(cfg.criterion, cfg.options)
    source = reinitialize(model, ctx.seed) if cfg.at_init else model
    model = copy.deepcopy(source).eval()
    example = torch.from_numpy(ctx.x[:1])
    macs0, params0 = count_torch(model, example)
    before = widths(model)
    step = criterion.prepare(model, ctx) or Step(model)
    model = step.model.eval()
    now = widths(model)
    kept = {name: list(step.kept.get(name, range(width))) for name, width in before.items() if name in now}
    if cfg.sparsity == 0:
        macs1, params1 = count_torch(model, example)
        return PruneResult(model, macs0, macs1, params0, params1, _layers(before, now), 0, kept, step.record, source)
    importance = criterion.importance(model, ctx, step)
    compensating = cfg.compensating
    if compensating:  # the statistics' sampling, stated in report.json beside the criterion's record
        step.record = {**step.record, "compensation": {"samples": comp.SAMPLES, "positions_per_layer": comp.POSITIONS,
                                                       "measured": "once per pruning step"}}
    if hasattr(importance, "kept"):
        importance.kept = kept  # lets measured scores follow the channels between measurements
    target = (1.0 - cfg.sparsity) * macs0
    floor = target - LANDING * macs0  # every criterion removes between sparsity and sparsity + LANDING
    # About 1 % of the channels per step: a global ranking can empty a small layer in one
    # coarse step and overshoot the MAC target far (all of LeNet-5's conv1 is 6 channels).
    steps_total = max(cfg.max_steps, min(400, sum(before.values())))
    names = {m: n for n, m in model.named_modules()}
    classifier = {m for n, m in model.named_modules() if n in classifier_layers(model, ctx.classes)}
    macs = count_torch(model, example)[0]  # the criterion's own step may already have met the target
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
            ignored_layers=list(classifier),
            round_to=None,
        )
        phase_steps, overshoot = 0, False
        while macs > target and phase_steps < steps_total and not overshoot:
            phase_steps += 1
            positions = output_positions(model, example)
            predicted = macs
            stats = comp.StepStatistics(model, ctx.x, ctx.seed) if compensating else None  # measured once, if needed
            for group in pruner.step(interactive=True):
                drop = group_macs(group, positions)
                if predicted - drop < floor:
                    overshoot = True  # this group would carry the cut past the target: land instead
                    continue
                predicted -= drop
                if compensating:
                    comp.compensate(model, group, ctx.x, ctx.seed, stats)
                follow_removal(kept, group, names)
                group.prune()
            macs, _ = count_torch(model, example)
            if ctx.progress:  # a pruning can take minutes: say how far it is (a bar, or a log line every 10 s)
                removed = sum(before.values()) - sum(widths(model).values())
                ctx.progress(min(1000, round(1000 * (macs0 - macs) / (macs0 - target))), 1000,
                             f"pruning (step {steps + phase_steps}): {removed} channels removed, "
                             f"{macs:,} MACs of {macs0:,}, target {int(target):,}")
        steps += phase_steps
        if overshoot:
            break
    if macs > target:
        steps += _land(model, example, importance, kept, names, classifier, target, floor, criterion.global_ranking,
                       (lambda g: comp.compensate(model, g, ctx.x, ctx.seed)) if compensating else None)
        macs, _ = count_torch(model, example)
    if macs > target * 1.02:
        raise ConfigError(
            f"could not remove {cfg.sparsity:.0%} of MACs with criterion {cfg.criterion} "
            f"(reached {1 - macs / macs0:.1%}); lower --sparsity"
        )
    macs1, params1 = count_torch(model, example)
    return PruneResult(model, macs0, macs1, params0, params1, _layers(before, widths(model)), steps, kept,
                       step.record, source)


def _layers(before: dict[str, int], after: dict[str, int]) -> list[dict]:
    return [{"name": k, "channels_before": v, "channels_after": after.get(k, 0)} for k, v in before.items()]


def _land(model, example, importance, kept, names, classifier, target, floor, global_ranking, before_prune=None) -> int:
    """Remove single channels until the MACs are at most ``target`` without going below ``floor``.

    Each round scores every group with the criterion's own importance and takes, among the
    channels whose removal does not pass ``floor``, the one the criterion ranks lowest (for a
    per-layer criterion, relative to its layer's mean score, since raw scores of different
    layers are not comparable). If every candidate would pass ``floor``, the lowest-ranked is taken.
    """
    import torch_pruning as tp

    rounds = 0
    macs = count_torch(model, example)[0]
    while macs > target:
        graph = tp.DependencyGraph().build_dependency(model, example)
        positions = output_positions(model, example)
        best, cheapest = None, None
        for group in graph.get_all_groups(ignored_layers=list(classifier), root_module_types=list(PRUNABLE)):
            n, g = len(group[0].idxs), channel_groups(group)
            if n <= g or n % g:
                continue
            scores = importance(group)
            if scores is None:
                continue
            scores = scores.double().view(g, n // g).sum(0) / g  # the same position in every channel group
            p = int(scores.argmin())
            c = [p + k * (n // g) for k in range(g)]
            rank = float(scores[p]) if global_ranking else float(scores[p] / scores.abs().mean().clamp_min(1e-12))
            drop = float(group_channel_macs(group, positions)[c].sum())
            if drop <= 0:
                continue
            candidate = (rank, group, c, drop)
            if macs - drop >= floor and (best is None or rank < best[0]):
                best = candidate
            if cheapest is None or rank < cheapest[0]:
                cheapest = candidate  # the criterion's choice when every candidate passes floor
        choice = best or cheapest
        if choice is None:
            break
        _, group, c, _ = choice
        root = group[0].dep
        single = graph.get_pruning_group(root.target.module, root.handler, c)
        if before_prune is not None:
            before_prune(single)
        follow_removal(kept, single, names)
        single.prune()
        rounds += 1
        macs = count_torch(model, example)[0]
        if best is None:
            break
    return rounds
