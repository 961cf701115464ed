"""MIPP: Mutual-Information-Preserving Pruning with the Transfer Entropy Redundancy Criterion (Westphal, Hailes & Musolesi).

Westphal, Hailes & Musolesi prune the nodes (conv channels, linear neurons) of each layer so
that the pruned layer still carries the information the next layer's activations hold about
it: then a map from the pruned upstream activations to the downstream ones exists, and the
network stays retrainable, whether it is pruned after training or at initialization.

Algorithm (per call of :func:`mipp_masks`):

1. One forward pass over ``N`` samples (default 300) records every prunable layer's nodes as
   the *next* layer sees them: the consumer layer's input, spatially averaged per channel for
   convs and per input block (a flattened conv channel) for linears, so batch norm, ReLU and
   pooling are included (a dead ReLU unit is a constant, zero-information node). The
   classifier's outputs (logits) are the last layer's activations; they are never pruned.
2. Layers are visited from the output back to the input. For layer ``l`` with nodes
   ``A_l = (A_l,1 .. A_l,C)`` and the *already pruned* next layer ``A_{l+1}`` (the kept nodes
   of every consumer layer, concatenated; the logits for the last hidden layer):

   a. every node is scored by ``I(A_l,i ; A_{l+1})``;
   b. the nodes are visited in ascending order of that score, and node ``i`` is dropped when
      ``I(A_S \\ {i} ; A_{l+1}) >= I(A_S ; A_{l+1}) - margin`` where ``S`` is the current set
      (the transfer entropy redundancy criterion, TERC: what ``i`` adds about the next layer
      given the others is zero within the estimator's noise). With ``reference="full"`` the
      right side is ``I(A_l ; A_{l+1}) - margin`` with the full layer, so the loss cannot
      accumulate over many removals (the default, see below);
   c. the last node is never dropped: when TERC would empty the layer (the whole layer
      carries no measurable information about the next one) the layer is flagged
      ``collapse`` and its highest-scoring node stays.

3. With ``target_sparsity`` (fraction of conv/linear *weights* removed, or of MACs with
   ``budget="macs"``) and TERC alone short of it: starting from the TERC pass's counts, nodes
   are taken one at a time from the layer that saves the most weights per unit of relative
   width lost (``cost saved / ln(k / (k-1))``, so narrow bottleneck layers shrink last) until
   the counted weights meet the target; a second backward pass then runs TERC again and drops
   further nodes in ascending MI order down to those counts ("forced"). Scaling every layer's
   TERC count by one factor instead cut LeNet-5's first conv to 1 channel at 90 % (see
   benchmarks/RESULTS_mipp.md). If TERC alone removes more than
   the target, nothing is put back unless ``fill=True`` (then every layer gets back the same
   fraction of its TERC-removed nodes, highest score first, as much as the target allows).

Estimator: the matrix-based Renyi functional of :mod:`tinyprune.information.renyi`
(``alpha = 1.01``), multivariate in both arguments: z-scored columns, one Gaussian Gram of the
joint vector with the median-heuristic width, ``I = S(A) + S(B) - S(A o B)``; B's Gram is built
once per layer. One change (:class:`RenyiMI`): column i of the set S is scaled by
``1 / sqrt(sum_{j in S} rho_ij^2)``, so c exact copies of a column weigh as much as one and
removing a copy leaves the estimate (nearly: < 0.003 nats in the synthetic tests; exactly when
the copies are uncorrelated with the rest) unchanged, as it leaves Shannon MI. Without it a
duplicated node counted twice in the distances and removing one copy moved the estimate by up
to 0.04 nats, several times the margin, so TERC kept both copies in one of six synthetic
cases. The result is exactly ``renyi_mi(weighted columns, z-scored B, standardize=False)`` and,
for independent columns (weights ~1), within 0.005 nats of plain ``renyi_mi(A[:, S], B)``
(both checked in the tests). A constant node is 0 after z-scoring: removing it changes
nothing. A TERC test costs an N x N x |S| product and two N x N eigendecompositions (about
7-18 ms each at N=300-400 on one busy core). KDE (Kolchinsky-Tracey) was not used: with tens of
dimensions its Silverman width saturates every entropy at ln N (see kde.py), and it has no
cheaper update for one removed column.

Margin: ``margin = k * std`` of ``I(A_l ; A_{l+1})`` over ``subsets`` (default 8) random
half-size subsets of the samples, computed once per layer and pass; default ``k = 1``. It is
the spread of the estimate itself at N/2 samples (larger than at N), so ``k = 1`` is about a
one-sigma tolerance. ``reference="current"`` is the criterion as written in TERC's
feature-selection form (each removal compared with the set before it); it lets a layer lose up
to one margin per removal, and on LeNet-5 it let whole layers drift away, so ``"full"`` is the
default (measured numbers in benchmarks/RESULTS_mipp.md).

Physical removal: :func:`apply_kept` prunes each layer's group through torch-pruning's
dependency graph (coupled batch norms, residual partners, concat offsets and flattened linear
inputs follow). :func:`mipp_prune` = masks + removal (+ re-initialization first with
``at_init=True``: the seed's pruning-before-training case; the caller then trains).

Cost: LeNet-5 (226 prunable nodes): about 4 x 226 + 24 x 4 eigendecompositions per pass,
measured 10 s per pass at N=300 (25-33 s at N=400) on one thread of a busy 2-core machine; a
target TERC alone does not reach costs a second pass. Time grows linearly with the number of
nodes and as N^3. Run it with one torch thread on a loaded machine: two threads made the small
eigendecompositions six times slower there (the caller's thread setting is left alone).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from tinyprune.errors import ConfigError
from tinyprune.information.capture import run_hooks
from tinyprune.prune.groups import PRUNABLE, channel_groups, follow_removal, forward_with_hooks, reinitialize, width
from tinyprune.prune.terc import MARGIN_K, MARGIN_SUBSETS, SUBSET_FRACTION, terc_layer

DEFAULT_SAMPLES = 300  # analysis samples (N x N Gram matrices)


# --------------------------------------------------------------------------- graph analysis


@dataclass
class Layer:
    """One prunable set of nodes: the output channels of a torch-pruning group."""

    root: str  # the group's root module (conv / linear)
    width: int
    producers: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # name -> (out idxs, root idxs)
    consumers: list[tuple[str, torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (module, in idxs, root idxs)
    inputs: list[tuple[str, int]] = field(default_factory=list)  # every conv/linear taking these nodes in: (name, units)
    order: int = 0  # forward-execution position of the root


def _fn_name(dep) -> str:
    return getattr(dep.pruning_fn, "__name__", "")


def _call_order(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    names = {m: n for n, m in model.named_modules()}
    order: dict[str, int] = {}

    def hook(mod, args, out):
        order.setdefault(names[mod], len(order))  # returns None: a hook's return value replaces the output

    forward_with_hooks(model, [example], hook)
    return order


def analyse(model: nn.Module, example: torch.Tensor):
    """(dependency graph, prunable layers in forward order, output module names).

    Output modules: conv/linear layers whose output channels no other conv/linear consumes
    (the classifier); they are never pruned and their outputs are the last targets.
    """
    import torch_pruning as tp

    model.eval()
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    names = {m: n for n, m in model.named_modules()}
    calls = _call_order(model, example)
    modules = dict(model.named_modules())
    layers: list[Layer] = []
    outputs: list[str] = []
    seen: set[str] = set()
    for name in sorted(calls, key=calls.get):
        module = modules[name]
        if name in seen:
            continue
        width = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        pruner = dg.get_pruner_of_module(module)
        group = dg.get_pruning_group(module, pruner.prune_out_channels, idxs=list(range(width)))
        layer = Layer(root=name, width=width, order=calls[name])
        consumers = []
        for i, (dep, idxs) in enumerate(group):
            mod = dep.layer
            if not isinstance(mod, PRUNABLE) or mod not in names:
                continue
            root_idxs = torch.as_tensor([int(r) for r in group[i].root_idxs], dtype=torch.long)
            idx = torch.as_tensor([int(v) for v in idxs], dtype=torch.long)
            if _fn_name(dep) == "prune_out_channels":
                layer.producers[names[mod]] = (idx, root_idxs)
            elif _fn_name(dep) == "prune_in_channels":
                consumers.append((names[mod], idx, root_idxs))
                layer.inputs.append((names[mod], len(idx)))
        layer.consumers = [c for c in consumers if c[0] not in layer.producers]
        layer.consumers.sort(key=lambda c: calls.get(c[0], 1 << 30))
        seen.update(layer.producers)
        if not layer.consumers:
            outputs.append(name)  # nothing downstream consumes these channels: the classifier
            continue
        layers.append(layer)
    return dg, layers, outputs


# --------------------------------------------------------------------------- activations


def _per_channel_input(inp: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """A consumer's input as [N, in_units]: conv channels spatially averaged, linear features."""
    if isinstance(module, nn.Linear):
        return inp.reshape(inp.shape[0], -1, inp.shape[-1]).mean(1)
    return inp.reshape(inp.shape[0], inp.shape[1], -1).mean(-1)


def capture(model: nn.Module, x: torch.Tensor, layers: list[Layer], outputs: list[str], batch_size: int = 256):
    """One forward pass: per layer the nodes as their first consumer sees them [N, C] (float64),
    per output / unpruned module its output [N, k], and per conv/linear its output positions."""
    modules = dict(model.named_modules())
    reps: dict[str, list[torch.Tensor]] = {layer.root: [] for layer in layers}
    outs: dict[str, list[torch.Tensor]] = {}
    positions: dict[str, int] = {}
    pre_hooks, hooks = [], []
    consumer_names = {c[0] for layer in layers for c in layer.consumers}
    out_names = set(outputs) | consumer_names

    for layer in layers:
        cname, idxs, root_idxs = layer.consumers[0]
        counts = torch.bincount(root_idxs, minlength=layer.width).clamp_min(1).double()

        def pre_hook(mod, args, layer=layer, idxs=idxs, root_idxs=root_idxs, counts=counts):
            units = _per_channel_input(args[0].detach(), mod).to("cpu", torch.float64)
            rep = torch.zeros(units.shape[0], layer.width, dtype=torch.float64)
            rep.index_add_(1, root_idxs, units[:, idxs])
            reps[layer.root].append(rep / counts)

        pre_hooks.append((modules[cname], pre_hook))

    for name, m in modules.items():
        if not isinstance(m, PRUNABLE):
            continue

        def hook(mod, args, out, name=name):
            if isinstance(out, (tuple, list)):
                out = out[0]
            ch = out.shape[-1] if isinstance(mod, nn.Linear) else out.shape[1]
            positions.setdefault(name, out.numel() // (out.shape[0] * ch))
            if name in out_names:
                flat = out.detach()
                flat = flat.reshape(flat.shape[0], -1, ch).mean(1) if isinstance(mod, nn.Linear) else \
                    flat.reshape(flat.shape[0], ch, -1).mean(-1)
                outs.setdefault(name, []).append(flat.to("cpu", torch.float64))

        hooks.append((m, hook))
    run_hooks(model, (x[s:s + batch_size] for s in range(0, x.shape[0], batch_size)), hooks, pre_hooks)
    return ({k: torch.cat(v) for k, v in reps.items()}, {k: torch.cat(v) for k, v in outs.items()}, positions)


# --------------------------------------------------------------------------- cost model


def weight_count(model: nn.Module) -> int:
    """Elements of every conv/linear weight tensor (biases and batch norm not counted)."""
    return int(sum(m.weight.numel() for m in model.modules() if isinstance(m, PRUNABLE)))


class CostModel:
    """Weights (or MACs) of the conv/linear layers as a function of each layer's kept count."""

    def __init__(self, model: nn.Module, layers: list[Layer], positions: dict[str, int], budget: str):
        if budget not in ("weights", "macs"):
            raise ConfigError(f"budget must be 'weights' or 'macs', got {budget!r}")
        modules = dict(model.named_modules())
        self.entries = []  # (out layer index | None, fixed out, [(layer index, in units per node)], fixed in, per pair)
        producer_of = {p: li for li, layer in enumerate(layers) for p in layer.producers}
        feeds: dict[str, list[tuple[int, float]]] = {}
        for li, layer in enumerate(layers):
            for cname, units in layer.inputs:
                feeds.setdefault(cname, []).append((li, units / layer.width))
        for name, m in modules.items():
            if not isinstance(m, PRUNABLE):
                continue
            w = m.weight
            out_total, in_total = w.shape[0], w.shape[1]
            per = int(np.prod(w.shape[2:])) if w.ndim > 2 else 1
            if budget == "macs":
                per *= positions.get(name, 1)
            grouped = isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups > 1
            ins = [] if grouped else feeds.get(name, [])
            self.entries.append((producer_of.get(name), out_total, ins, in_total, per))

    def cost(self, widths: list[int], counts: list[int]) -> int:
        total = 0.0
        for li, out_total, ins, in_total, per in self.entries:
            out = out_total if li is None else counts[li] * out_total / widths[li]
            inp = in_total - sum((widths[lj] - counts[lj]) * units for lj, units in ins)
            total += out * inp * per
        return int(round(total))


def _budgets(cost: CostModel, widths: list[int], terc_counts: list[int], target: float, min_keep: int):
    """Per-layer counts at or under the target cost, starting from TERC's counts.

    Greedy: while over the target, take one node from the layer that saves the most cost per
    unit of relative width lost, ``(cost saved) / ln(k / (k - 1))``. A narrow layer (a
    bottleneck: LeNet-5's 2-3 first convolutions) loses a large fraction per node for few
    weights, so it shrinks last; wide, weight-heavy layers give way first. Returns
    (counts, whether the target was reached before every layer hit ``min_keep``).
    """
    counts = list(terc_counts)
    floors = [min(min_keep, w) for w in widths]
    current = cost.cost(widths, counts)
    while current > target:
        best, best_score, best_cost = None, -1.0, None
        for li, c in enumerate(counts):
            if c <= floors[li]:
                continue
            counts[li] -= 1
            trial = cost.cost(widths, counts)
            counts[li] += 1
            score = (current - trial) / math.log(c / (c - 1))
            if score > best_score:
                best, best_score, best_cost = li, score, trial
        if best is None:
            return counts, False
        counts[best] -= 1
        current = best_cost
    return counts, True


# --------------------------------------------------------------------------- MIPP


def _samples(x, samples: int, seed: int, dtype) -> torch.Tensor:
    data = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    n = data.shape[0]
    if n < 8:
        raise ConfigError(f"MIPP needs at least 8 samples, got {n}")
    if samples < n:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:samples].sort().values
        data = data[idx]
    return data.to(dtype)


def _backward_pass(layers, reps, outs, budgets, opts) -> dict[str, dict]:
    by_root = {layer.root: li for li, layer in enumerate(layers)}
    producer_of = {p: layer.root for layer in layers for p in layer.producers}
    result: dict[str, dict] = {}
    for li in sorted(range(len(layers)), key=lambda j: -layers[j].order):
        layer = layers[li]
        parts, used = [], set()
        for cname, _, _ in layer.consumers:
            root = producer_of.get(cname)
            if root is not None and root != layer.root:
                if root in used:
                    continue
                used.add(root)
                rep = reps[root]
                kept = result[root]["kept"] if root in result else list(range(rep.shape[1]))
                parts.append(rep[:, kept])
            elif cname in outs:
                parts.append(outs[cname])
        if not parts:
            result[layer.root] = {"kept": list(range(layer.width)), "terc_removed": [], "forced": [],
                                  "collapse": False, "skipped": "no measurable next layer"}
            continue
        target = torch.cat(parts, 1)
        res = terc_layer(reps[layer.root], target, budget=None if budgets is None else budgets[by_root[layer.root]],
                         seed=opts["seed"] + li, **{k: opts[k] for k in ("k", "subsets", "fraction", "reference",
                                                                         "min_keep")})
        result[layer.root] = res
    return result


def mipp_masks(model: nn.Module, x, target_sparsity: float | None = None, *, budget: str = "weights",
               samples: int = DEFAULT_SAMPLES, k: float = MARGIN_K, subsets: int = MARGIN_SUBSETS,
               fraction: float = SUBSET_FRACTION, reference: str = "full", min_keep: int = 1,
               fill: bool = False, seed: int = 0) -> dict:
    """Decide which nodes of every prunable layer MIPP keeps (nothing is modified).

    ``target_sparsity``: fraction of the conv/linear weights (``budget="weights"``) or MACs
    (``"macs"``) to remove at least; ``None``: TERC alone decides. Returns a report:
    ``layers`` (per root layer: total, kept original indices, terc_removed, forced, collapse,
    mi_full / mi_after / margin in nats), ``kept`` (per conv/linear producer name),
    ``cost_before`` / ``cost_after`` (counted by the cost model), ``sparsity``, ``target_met``,
    ``terc_removed`` / ``forced`` totals, ``collapsed`` (layer names), ``seconds``.
    """
    if target_sparsity is not None and not 0.0 <= target_sparsity < 1.0:
        raise ConfigError(f"target_sparsity must be in [0, 1), got {target_sparsity}")
    if reference not in ("full", "current"):
        raise ConfigError(f"reference must be 'full' or 'current', got {reference!r}")
    if budget not in ("weights", "macs"):
        raise ConfigError(f"budget must be 'weights' or 'macs', got {budget!r}")
    if k < 0 or min_keep < 1 or samples < 8:
        raise ConfigError(f"need k >= 0, min_keep >= 1 and samples >= 8 (got {k}, {min_keep}, {samples})")
    t0 = time.perf_counter()
    param = next(model.parameters())
    data = _samples(x, samples, seed, param.dtype).to(param.device)
    was_training = model.training
    try:
        return _masks(model.eval(), data, target_sparsity, budget, min_keep, fill, t0,
                      dict(k=k, subsets=subsets, fraction=fraction, reference=reference, min_keep=min_keep, seed=seed))
    finally:
        model.train(was_training)


def _masks(model, data, target_sparsity, budget, min_keep, fill, t0, opts) -> dict:
    k, reference = opts["k"], opts["reference"]
    _, layers, outputs = analyse(model, data[:1])
    if not layers:
        raise ConfigError("MIPP found no prunable layer (every conv/linear feeds the output directly)")
    reps, outs, positions = capture(model, data, layers, outputs)
    widths = [layer.width for layer in layers]
    cost = CostModel(model, layers, positions, budget)
    cost0 = cost.cost(widths, widths)

    res = _backward_pass(layers, reps, outs, None, opts)
    passes, target_met = 1, True
    counts = [len(res[layer.root]["kept"]) for layer in layers]
    if target_sparsity is not None:
        goal = (1.0 - target_sparsity) * cost0
        if cost.cost(widths, counts) > goal:
            budgets, target_met = _budgets(cost, widths, counts, goal, min_keep)
            res = _backward_pass(layers, reps, outs, budgets, opts)
            passes = 2
            counts = [len(res[layer.root]["kept"]) for layer in layers]
        elif fill:
            counts = _fill(cost, layers, widths, res, goal)
    cost1 = cost.cost(widths, counts)
    if target_sparsity is not None:
        target_met = cost1 <= (1.0 - target_sparsity) * cost0 * 1.0005 + 1

    report_layers, kept_by_name = {}, {}
    for layer in layers:
        r = res[layer.root]
        entry = {"total": layer.width, "kept": r["kept"], "n_kept": len(r["kept"]),
                 "terc_removed": r["terc_removed"], "forced": r["forced"], "collapse": r["collapse"],
                 "producers": list(layer.producers)}
        for key in ("mi_full", "mi_after", "margin", "skipped", "restored"):
            if key in r:
                entry[key] = r[key]
        report_layers[layer.root] = entry
        keep = set(r["kept"])
        for pname, (idxs, root_idxs) in layer.producers.items():
            kept_by_name[pname] = sorted(int(c) for c, ri in zip(idxs.tolist(), root_idxs.tolist()) if ri in keep)
    return {
        "layers": report_layers,
        "kept": kept_by_name,
        "outputs": outputs,
        "budget": budget,
        "cost_before": cost0,
        "cost_after": cost1,
        "sparsity": 1.0 - cost1 / cost0,
        "target_sparsity": target_sparsity,
        "target_met": bool(target_met),
        "terc_removed": sum(len(e["terc_removed"]) for e in report_layers.values()),
        "forced": sum(len(e["forced"]) for e in report_layers.values()),
        "collapsed": [n for n, e in report_layers.items() if e["collapse"]],
        "passes": passes,
        "samples": int(data.shape[0]),
        "margin_k": k,
        "reference": reference,
        "seconds": time.perf_counter() - t0,
    }


def _fill(cost, layers, widths, res, goal) -> list[int]:
    """TERC overshot the target: every layer gets back the same fraction phi of its TERC-removed
    nodes (highest score first), phi by bisection so the cost stays <= goal."""
    kept0 = [len(res[layer.root]["kept"]) for layer in layers]
    gone = [len(res[layer.root]["terc_removed"]) for layer in layers]

    def counts(phi):
        return [k + int(math.floor(phi * g + 1e-9)) for k, g in zip(kept0, gone)]

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if cost.cost(widths, counts(mid)) <= goal:
            lo = mid
        else:
            hi = mid
    final = counts(lo)
    for li, layer in enumerate(layers):
        r = res[layer.root]
        extra = final[li] - kept0[li]
        if extra <= 0:
            continue
        removed = set(r["terc_removed"])
        back = [i for i in reversed(r["order"]) if i in removed][:extra]
        r["kept"] = sorted(set(r["kept"]) | set(back))
        r["terc_removed"] = sorted(removed - set(back))
        r["restored"] = sorted(back)
    return final


def apply_kept(model: nn.Module, masks: dict, example: torch.Tensor) -> nn.Module:
    """Physically remove, in place, every node not kept in ``masks["layers"]`` (torch-pruning).

    Each layer's removal is one dependency group (coupled layers follow); a group that would
    leave no channel is refused by torch-pruning's check and reported in ``masks["refused"]``.
    ``masks["kept"]`` becomes what the model now holds: per conv/linear whose outputs changed, the
    original ids of its remaining channels (coupled layers included, refused groups left out).
    """
    dg, layers, _ = analyse(model, example)
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    kept = {n: list(range(width(m))) for n, m in modules.items() if isinstance(m, PRUNABLE)}
    widths0 = {n: len(ids) for n, ids in kept.items()}
    refused = []
    for layer in layers:
        entry = masks["layers"].get(layer.root)
        if entry is None:
            continue
        keep = set(entry["kept"])
        drop = [c for c in range(layer.width) if c not in keep]
        if not drop:
            continue
        module = modules[layer.root]
        group = dg.get_pruning_group(module, dg.get_pruner_of_module(module).prune_out_channels, idxs=drop)
        # a grouped conv's channel groups cannot lose arbitrary channels: left to the MAC loop
        if len(drop) >= layer.width or not dg.check_pruning_group(group) or channel_groups(group) > 1:
            refused.append(layer.root)
            continue
        follow_removal(kept, group, names)
        group.prune()
    masks["refused"] = refused
    masks["kept"] = {n: ids for n, ids in kept.items() if len(ids) != widths0[n]}
    return model


def mipp_prune(model: nn.Module, x, y=None, target_sparsity: float | None = None, at_init: bool = False,
               seed: int = 0, **options) -> tuple[nn.Module, dict]:
    """MIPP on a copy of ``model``: returns (pruned model, report).

    ``y`` is not used (MIPP is activation-based; kept for the criterion signature).
    ``at_init=True`` prunes a freshly re-initialized copy (seed ``seed``): train it afterwards.
    ``options`` go to :func:`mipp_masks` (budget, samples, k, subsets, reference, min_keep, fill).
    Report: :func:`mipp_masks`'s, plus ``weights_before`` / ``weights_after`` / ``weight_sparsity``
    counted on the models, ``at_init`` and ``refused`` (groups torch-pruning would not empty).
    """
    work = reinitialize(model, seed) if at_init else copy.deepcopy(model)
    work.eval()
    w0 = weight_count(work)
    report = mipp_masks(work, x, target_sparsity, seed=seed, **options)
    param = next(work.parameters())
    example = _samples(x, 8, seed, param.dtype)[:1].to(param.device)
    apply_kept(work, report, example)
    w1 = weight_count(work)
    report.update(weights_before=w0, weights_after=w1, weight_sparsity=1.0 - w1 / w0, at_init=at_init)
    return work.eval(), report


def mipp_pre_step(model: nn.Module, x, y, retrain=None, macs_sparsity: float | None = None,
                  **options) -> tuple[nn.Module, dict]:
    """Hook for ``prune_to_macs``: MIPP toward a MAC target, before the channel loop.

    MACs are counted as ``count_torch`` counts them (conv/linear only), so the loop after it
    normally has nothing left to do. ``fill`` defaults to True here: where TERC alone removes
    more than ``--sparsity`` asks, the highest-scoring TERC-removed nodes come back, so the
    flag means the same for every criterion. Returns (pruned model, report) where
    ``report["kept"]`` maps each pruned conv/linear to the original indices of its remaining
    output channels. ``retrain`` is not used (one stage, no fine-tune in between).
    """
    options.setdefault("budget", "macs")
    options.setdefault("fill", True)
    return mipp_prune(model, x, y, target_sparsity=macs_sparsity, **options)
