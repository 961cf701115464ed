"""Rewrites of the float model before int8 export that compute the same function in float.

A BatchNorm that directly follows a convolution is folded into it by the exporters. Any other
BatchNorm (DenseNet's pre-activation BN on a concatenation, a BN after a pooling or a skip
addition) reaches the int8 graph as a MUL then an ADD: two requantizations through an
intermediate tensor whose range holds the un-shifted products, with the bias in int8 too.
The same per-channel affine map as a depthwise 1x1 convolution is one op with per-channel int8
weights and an int32 bias, and a following ReLU fuses into it. On a DenseNet-style net this
raised the int8 output SQNR by 5 dB and brought int8 within 0.2 points of float
(benchmarks/RESULTS.md, fidelity).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

_CONVS = {"conv1d", "conv2d", "convolution"}
_BATCH_NORMS = {"batch_norm", "_native_batch_norm_legit_no_training"}


def op_name(node) -> str:
    """The aten op of an exported graph node, without overload: conv2d, cat, batch_norm."""
    return str(getattr(node.target, "__name__", node.target)).split(".")[0]


def module_path(node) -> str | None:
    """The PyTorch module (dotted path) an exported graph node was computed in; None at top level."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    # torch.export spells nested paths as L['self'].block1[0].conv or block1.0.conv
    return path.replace("L['self'].", "").replace("[", ".").replace("]", "") or None


def unfolded_batchnorms(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the BatchNorm modules whose input is not a convolution used by that BN alone."""
    program = torch.export.export(model.eval(), (example,))
    modules = dict(model.named_modules())
    names = []
    for node in program.graph_module.graph.nodes:
        if node.op != "call_function" or op_name(node) not in _BATCH_NORMS:
            continue
        path = module_path(node)
        bn = modules.get(path) if path is not None else None
        if not isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)) or bn.running_var is None or bn.running_mean is None:
            continue  # without running statistics a BatchNorm normalises by the batch: no fixed affine map
        source = node.args[0]
        foldable = hasattr(source, "op") and op_name(source) in _CONVS and len(source.users) == 1
        if not foldable and path not in names:
            names.append(path)
    return names


def _as_depthwise(bn: nn.Module) -> nn.Module:
    c = bn.num_features
    conv_cls = nn.Conv2d if isinstance(bn, nn.BatchNorm2d) else nn.Conv1d
    conv = conv_cls(c, c, 1, groups=c, bias=True)
    with torch.no_grad():
        var = bn.running_var if bn.running_var is not None else torch.ones(c)
        mean = bn.running_mean if bn.running_mean is not None else torch.zeros(c)
        weight = bn.weight if bn.weight is not None else torch.ones(c)
        bias = bn.bias if bn.bias is not None else torch.zeros(c)
        scale = weight / torch.sqrt(var + bn.eps)
        conv.weight.copy_(scale.view(c, *([1] * (conv.weight.dim() - 1))))
        conv.bias.copy_(bias - mean * scale)
    return conv


def for_int8(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, list[str]]:
    """(a copy of ``model`` with every unfolded BatchNorm as a depthwise 1x1 conv, their names).

    BatchNorm1d on (N, C) inputs (after a Linear) is left alone: a 1x1 conv needs a length axis."""
    names = unfolded_batchnorms(model, example)
    if not names:
        return model, []
    out = copy.deepcopy(model).eval()
    done = []
    for path in names:
        parent_path, _, attr = path.rpartition(".")
        parent = out.get_submodule(parent_path) if parent_path else out
        bn = getattr(parent, attr)
        if isinstance(bn, nn.BatchNorm1d) and not _has_length_axis(model, path, example):
            continue
        setattr(parent, attr, _as_depthwise(bn))
        done.append(path)
    return out, done


def _has_length_axis(model: nn.Module, path: str, example: torch.Tensor) -> bool:
    seen = {}

    def hook(module, inputs, out):  # returns None: a forward hook's return value replaces the output
        seen.setdefault("dim", out.dim())

    handle = model.get_submodule(path).register_forward_hook(hook)
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        handle.remove()
    return seen.get("dim") == 3


# ------------------------------------------------------------------ concatenation range equalization
#
# int8 TFLite gives a CONCATENATION's inputs and output one scale. An input whose values span a
# small part of the concatenation's range (a DenseNet stem next to its units' outputs) is then
# held in a few dozen levels. Scaling such a producer's output channels up, and every consumer
# of those channels down by the same factor, computes the same function in float and spends
# the shared int8 range on every channel.

MAX_CHANNEL_SCALE = 16.0
_HOMOGENEOUS = {"relu", "relu_", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "dropout"}  # f(s x) = s f(x), s > 0


def _channels(node) -> int | None:
    val = node.meta.get("val")
    return int(val.shape[1]) if val is not None and val.dim() >= 2 else None


def _consumers(node, offset: int, plan: list, modules: dict) -> bool:
    """Add to ``plan`` how every use of ``node``'s channels [offset, offset + n) absorbs a scale.

    False when some use cannot (the producer is then left alone)."""
    for user in node.users:
        op = op_name(user)
        path = module_path(user)
        module = modules.get(path) if path is not None else None
        if op in _BATCH_NORMS:
            if not (isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and module.affine
                    and module.running_var is not None):
                return False
            plan.append(("bn", path, offset))
        elif op == "cat" and (user.args[1] if len(user.args) > 1 else user.kwargs.get("dim", 0)) in (1, -3):
            start = 0
            for part in user.args[0]:
                if part is node:
                    break
                start += _channels(part) or 0
            if not _consumers(user, offset + start, plan, modules):
                return False
        elif op in _HOMOGENEOUS:
            if not _consumers(user, offset, plan, modules):
                return False
        elif op in _CONVS and user.args[0] is node and (len(user.args) < 7 or user.args[6] == 1) \
                and isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups == 1:
            plan.append(("conv_in", path, offset))
        elif op == "linear" and user.args[0] is node and isinstance(module, nn.Linear) \
                and node.meta.get("val") is not None and node.meta["val"].dim() == 2:
            plan.append(("conv_in", path, offset))
        else:
            return False
    return True


def _conv_behind(node):
    """The convolution whose output reaches ``node`` through positively homogeneous ops alone
    (ReLU, pooling), each used only by the next; None if there is none."""
    while hasattr(node, "op") and op_name(node) in _HOMOGENEOUS:
        source = node.args[0]
        if not hasattr(source, "op") or len(source.users) != 1:
            return None
        node = source
    return node if hasattr(node, "op") and op_name(node) in _CONVS else None


def _concat_inputs(graph) -> list:
    """(producing conv, node entering the concat, first concatenation) for channel concat inputs
    computed by a convolution, possibly through ReLU or pooling."""
    found, seen = [], set()
    for node in graph.nodes:
        if node.op != "call_function" or op_name(node) != "cat":
            continue
        if (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) not in (1, -3):
            continue
        for part in node.args[0]:
            conv = _conv_behind(part)
            if conv is not None and part not in seen:
                seen.add(part)
                found.append((conv, part, node))
    return found


def equalize_concats(model: nn.Module, x_calib: torch.Tensor,
                     absorb_in_convs: bool = True) -> tuple[nn.Module, list[dict]]:
    """(a copy of ``model`` whose concatenation inputs use the shared int8 range, what was scaled).

    A convolution's output channels that enter a channel concatenation (directly or through
    ReLU and pooling, which commute with a positive scale) are scaled up to the
    concatenation's calibration range (at most ``MAX_CHANNEL_SCALE`` times); each use of those
    channels takes the scale back: a BatchNorm's statistics and weight, a convolution's input
    weights. Producers with any other use are left alone. Checked exact on the calibration data.
    ``absorb_in_convs=False`` also leaves producers whose channels reach a convolution's input
    weights: scaling those would give a weight-shared layer more distinct values per channel."""
    program = torch.export.export(model.eval(), (x_calib[:1],))
    graph = program.graph_module.graph
    candidates = []
    modules = dict(model.named_modules())
    for producer, part, concat in _concat_inputs(graph):
        plan: list = []
        if isinstance(modules.get(module_path(producer) or ""), (nn.Conv1d, nn.Conv2d)) \
                and _consumers(part, 0, plan, modules) and (
                absorb_in_convs or all(kind == "bn" for kind, _, _ in plan)):
            candidates.append((producer, part, concat, plan))
    if not candidates:
        return model, []
    ranges = _node_ranges(program, x_calib, {n.name for c in candidates for n in c[1:3]})
    out = copy.deepcopy(model).eval()
    done = []
    for producer, part, concat, plan in candidates:
        own = ranges[part.name]
        scale = (float(ranges[concat.name].max()) / own.clamp_min(1e-12)).clamp(1.0, MAX_CHANNEL_SCALE)
        if float(scale.max()) <= 1.05:
            continue
        _apply(out, module_path(producer), scale, plan)
        done.append({"layer": module_path(producer), "concat": module_path(concat) or "(top level)",
                     "channels": int(len(scale)), "scale_max": round(float(scale.max()), 2),
                     "scale_median": round(float(scale.median()), 2)})
    with torch.no_grad():
        ref, got = model(x_calib), out(x_calib)
    if not torch.allclose(ref, got, rtol=1e-3, atol=1e-4 * float(ref.abs().max())):
        return model, []  # some use absorbed the scale differently than planned: keep the model as is
    return out, done


def _node_ranges(program, x: torch.Tensor, names: set[str]) -> dict[str, torch.Tensor]:
    """Per-channel max |value| of the named nodes over the samples of ``x``."""
    from torch.fx import Interpreter

    ranges: dict[str, torch.Tensor] = {}

    class Recorder(Interpreter):
        def run_node(self, n):
            value = super().run_node(n)
            if n.name in names:
                r = value.detach().abs().transpose(0, 1).reshape(value.shape[1], -1).amax(1)
                ranges[n.name] = torch.maximum(ranges[n.name], r) if n.name in ranges else r
            return value

    module = program.module()  # exported for one sample: run them one by one
    with torch.no_grad():
        for i in range(len(x)):
            Recorder(module).run(x[i:i + 1])
    return ranges


def _apply(model: nn.Module, producer: str, scale: torch.Tensor, plan: list) -> None:
    n = len(scale)
    with torch.no_grad():
        conv = model.get_submodule(producer)
        conv.weight.mul_(scale.view(n, *([1] * (conv.weight.dim() - 1))))
        if conv.bias is not None:
            conv.bias.mul_(scale)
        for kind, path, offset in plan:
            module = model.get_submodule(path)
            sl = slice(offset, offset + n)
            if kind == "bn":  # BN(s x) with mean s m, var s^2 v and weight g sqrt(s^2 v + eps) / (s sqrt(v + eps))
                var = module.running_var[sl].clone()
                new_var = var * scale ** 2
                if module.weight is not None:
                    module.weight[sl] *= torch.sqrt(new_var + module.eps) / (scale * torch.sqrt(var + module.eps))
                else:
                    raise ValueError("affine-free BatchNorm")
                module.running_mean[sl] *= scale
                module.running_var[sl] = new_var
            else:
                module.weight[:, sl] /= scale.view(1, n, *([1] * (module.weight.dim() - 2)))
