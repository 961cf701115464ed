"""Skip-unit pruning: MSPIC, Multi-Stage Pruning with Information Clustering (Soltani et al., Algorithm 1).

A skip-unit is a block whose output combines a computed branch T_l with its input: a residual
add ``U_l = a_l T_l + A(U_{l-1})`` (ResNet) or a concatenation ``Concat(a_l T_l, U_{l-1})``
(DenseNet). Setting a_l = 0 removes the branch: for an add the unit becomes its shortcut; for a
concatenation the branch's channels disappear and the consumer layer loses the matching input
channels. Each stage:

1. compute I(U_l; Y) for every unit (KDE bound on the per-channel spatial means, nats);
2. cluster the units by that MI at every resolution r of the resolution vector (1-D single
   linkage: units whose MI values are within r of each other share a cluster);
3. per resolution, keep each cluster's head (its shallowest unit) and remove the others;
4. evaluate each policy on the analysis samples and keep the one removing the most units
   whose error stays under the threshold (base error + ``max_error_increase``). No weight is
   retrained for this, but batch-norm statistics are re-estimated on the analysis samples
   first: a removed branch shifts the statistics every later BN sees, and judged with the stale
   ones a 2-unit policy on ResNet-20 / Fashion-MNIST scored 62.6 % error against 10.7 %;
5. fine-tune the smaller network, and go again for the next stage.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from tinyprune.errors import UnsupportedModel

_ADDS = {operator.add, torch.add, torch.ops.aten.add.Tensor}
_CATS = {torch.cat, torch.ops.aten.cat.default, torch.concat}
_PASS = (nn.ReLU, nn.ReLU6, nn.MaxPool2d, nn.AvgPool2d, nn.Identity, nn.Dropout)
_PASS_FN = {torch.relu, torch.ops.aten.relu.default, torch.ops.aten.max_pool2d.default,
            torch.ops.aten.avg_pool2d.default, torch.nn.functional.relu}
# nats; the finest ones give policies of one or two units, which a stage of a deep net can afford
RESOLUTIONS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4)


@dataclass(frozen=True)
class Unit:
    node: str  # the add / cat node in the graph
    kind: str  # "residual" | "concat"
    branch: str  # the graph node that carries T_l
    order: int  # depth order of the unit in the graph


def as_graph(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """The model as an FX graph of real modules (torch.export, then lifted like loaded graphs)."""
    if isinstance(model, fx.GraphModule):
        return copy.deepcopy(model)
    from tinyprune.lift import lift_graph

    try:
        program = torch.export.export(copy.deepcopy(model).eval(), (example,))
    except Exception as exc:
        raise UnsupportedModel(f"cannot trace the model to find its skip-units: {str(exc).splitlines()[0][:160]}") from None
    return lift_graph(program.module())


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen, stack = set(), [node]
    while stack:
        for a in stack.pop().all_input_nodes:
            if a not in seen:
                seen.add(a)
                stack.append(a)
    return seen


def _convs(gm: fx.GraphModule, nodes) -> int:
    mods = dict(gm.named_modules())
    return sum(1 for n in nodes if n.op == "call_module" and isinstance(mods.get(n.target), (nn.Conv2d, nn.Conv1d)))


def find_units(gm: fx.GraphModule) -> list[Unit]:
    """Residual adds and channel concatenations whose branch holds at least one conv."""
    units = []
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in _ADDS and len(node.args) >= 2 and all(isinstance(a, fx.Node) for a in node.args[:2]):
            a, b = node.args[:2]
            anc_a, anc_b = _ancestors(a), _ancestors(b)
            if a in anc_b:
                skip, branch = a, b
            elif b in anc_a:
                skip, branch = b, a
            else:  # projection shortcut: the branch is the side with more convs of its own
                common = anc_a & anc_b
                own_a, own_b = _convs(gm, (anc_a | {a}) - common), _convs(gm, (anc_b | {b}) - common)
                skip, branch = (b, a) if own_a > own_b else (a, b)
            if _convs(gm, (_ancestors(branch) | {branch}) - _ancestors(skip) - {skip}) > 0:
                units.append(Unit(node.name, "residual", branch.name, order[node]))
        elif node.target in _CATS:
            tensors = node.args[0]
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if dim != 1 or len(tensors) != 2:
                continue
            x, t = tensors
            if x in _ancestors(t) and _convs(gm, (_ancestors(t) | {t}) - _ancestors(x) - {x}) > 0 \
                    and _concat_consumers(gm, node) is not None:
                units.append(Unit(node.name, "concat", t.name, order[node]))
    return units


def _concat_consumers(gm: fx.GraphModule, cat: fx.Node) -> list[nn.Module] | None:
    """Modules whose input channels must be sliced when the concat's branch goes.

    Walks forward through batch norms (sliced too), activations and pooling, and through later
    concatenations that take this one as their first part (DenseNet: the channel positions stay
    the same), up to the convs that consume the channels. None if they flow anywhere else.
    """
    mods = dict(gm.named_modules())
    found, stack, seen = [], list(cat.users), set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        m = mods.get(n.target) if n.op == "call_module" else None
        if isinstance(m, (nn.Conv2d, nn.Conv1d)) and m.groups == 1:
            found.append(m)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            found.append(m)
            stack.extend(n.users)
        elif isinstance(m, _PASS) or (n.op == "call_function" and n.target in _PASS_FN):
            stack.extend(n.users)
        elif n.op == "call_function" and n.target in _CATS and n.args[0][0] in seen | {cat}:
            stack.extend(n.users)
        else:
            return None  # the channels flow somewhere we cannot slice (flatten, add, output ...)
    return found


def remove_units(gm: fx.GraphModule, names: set[str]) -> fx.GraphModule:
    """A copy of ``gm`` with the given units' branches removed (a_l = 0)."""
    gm = copy.deepcopy(gm)
    nodes = {n.name: n for n in gm.graph.nodes}
    # deepest first: the channel counts recorded for shallower units stay valid
    for unit in sorted(find_units(gm), key=lambda u: u.order, reverse=True):
        if unit.node not in names:
            continue
        node = nodes[unit.node]
        if unit.kind == "residual":
            a, b = node.args[:2]
            skip = b if a.name == unit.branch else a
            node.replace_all_uses_with(skip)
        else:
            x, t = node.args[0]
            start, stop = _channels(gm, x), _channels(gm, node)
            for m in _concat_consumers(gm, node):
                _drop_inputs(m, start, stop)
            node.replace_all_uses_with(x)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _channels(gm: fx.GraphModule, node: fx.Node) -> int:
    val = node.meta.get("val")
    if val is not None:
        return int(val.shape[1])
    raise UnsupportedModel(f"cannot tell the channel count of {node.name}")


def _drop_inputs(m: nn.Module, start: int, stop: int) -> None:
    """Remove input channels [start, stop) of a conv, or those channels of a batch norm."""
    with torch.no_grad():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            keep = torch.cat([torch.arange(start), torch.arange(stop, m.num_features)])
            for name in ("weight", "bias"):
                p = getattr(m, name)
                if p is not None:
                    setattr(m, name, nn.Parameter(p[keep].clone()))
            m.running_mean = m.running_mean[keep].clone()
            m.running_var = m.running_var[keep].clone()
            m.num_features = len(keep)
        else:
            keep = torch.cat([torch.arange(start), torch.arange(stop, m.in_channels)])
            m.weight = nn.Parameter(m.weight[:, keep].clone())
            m.in_channels = len(keep)


def unit_outputs(gm: fx.GraphModule, units: list[Unit], x: np.ndarray, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Per unit: the spatial mean of U_l per channel, [N, C], over ``x``."""
    wanted = {u.node for u in units}
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in wanted}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name in wanted:
                parts[n.name].append(out.mean(dim=tuple(range(2, out.dim()))) if out.dim() > 2 else out)
            return out

    gm.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            Recorder(gm).run(torch.from_numpy(x[i:i + batch_size]))
    return {k: torch.cat(v) for k, v in parts.items()}


@torch.no_grad()
def recalibrate_bn(gm: fx.GraphModule, x: np.ndarray, batch_size: int = 256) -> fx.GraphModule:
    """Re-estimate every batch norm's running mean and variance on ``x`` (in place; no weight changes).

    The cumulative average over all batches (momentum None), so the result does not depend on
    the order of a few batches; returns ``gm`` in eval mode.
    """
    bns = [m for m in gm.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return gm.eval()
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    gm.train()
    for i in range(0, len(x), batch_size):
        if len(x[i:i + batch_size]) > 1:
            gm(torch.from_numpy(x[i:i + batch_size]))
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    return gm.eval()


def cluster_policies(mi: list[float], resolutions=RESOLUTIONS) -> list[tuple[float, set[int]]]:
    """Per resolution, the unit positions to remove: all but the shallowest of each MI cluster."""
    order = np.argsort(mi)
    policies = []
    for r in resolutions:
        clusters, current = [], [order[0]]
        for prev, nxt in zip(order[:-1], order[1:]):
            if mi[nxt] - mi[prev] <= r:
                current.append(nxt)
            else:
                clusters.append(current)
                current = [nxt]
        clusters.append(current)
        removed = {int(i) for c in clusters for i in sorted(c)[1:]}
        policies.append((r, removed))
    return policies


def mspic(model: nn.Module, x: np.ndarray, y: np.ndarray, *, stages: int = 2, max_error_increase: float = 0.05,
          retrain=None, method: str = "kde", labels: np.ndarray | None = None) -> tuple[fx.GraphModule, list[dict]]:
    """Run MSPIC; returns the pruned graph and one record per stage (MI per unit, policy chosen).

    ``y``: the targets the error is measured on (class labels: 1 - accuracy; float targets, or the
    input for an autoencoder: 1 - R^2, the fraction of the target's variance not explained).
    ``labels``: the discrete variable the units' MI is measured about (default ``y``; for
    regression and reconstruction tinyprune.task.information_labels).
    """
    from tinyprune.information import estimate_mi
    from tinyprune.task import for_targets
    from tinyprune.train import score

    task = for_targets(y)
    labels = y if labels is None else labels

    def error(m) -> float:
        return 1.0 - score(m, x, y, task)

    gm = as_graph(model, torch.from_numpy(x[:1]))
    records = []
    for stage in range(stages):
        units = find_units(gm)
        if len(units) < 2:
            break
        outs = unit_outputs(gm, units, x)
        # Unit outputs have tens of channels: Silverman's width saturates the KDE estimate at
        # H(Y) there, the median heuristic keeps units apart (see tinyprune.information.kde).
        mi = [estimate_mi(outs[u.node], labels, method=method, sigma="median") for u in units]
        base_err = error(gm)
        best, policies, tried = None, [], {}
        for r, removed in cluster_policies(mi):
            names = {units[i].node for i in removed}
            if not names:
                continue
            key = frozenset(names)
            if key not in tried:  # resolutions often give the same policy: evaluate it once
                tried[key] = error(recalibrate_bn(remove_units(gm, names), x))
            err = tried[key]
            policies.append({"resolution": r, "removed": sorted(names), "error": err})
            if err <= base_err + max_error_increase and (best is None or len(names) > len(best[1])):
                best = (r, names, err)
        record = {"stage": stage, "units": [u.node for u in units], "kinds": [u.kind for u in units],
                  "mi": [round(float(v), 5) for v in mi], "base_error": base_err, "policies": policies,
                  "resolution": None, "removed": [], "error": base_err}
        if best is not None:
            gm = recalibrate_bn(remove_units(gm, best[1]), x)
            record.update(resolution=best[0], removed=sorted(best[1]), error=best[2])
            if retrain is not None:
                gm = retrain(gm)
        records.append(record)
        if best is None:
            break
    return gm, records
