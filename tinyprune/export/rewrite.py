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
_BATCH_NORMS = {"batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit"}


def _op(node) -> str:
    return str(getattr(node.target, "__name__", node.target)).split(".")[0]


def _module_path(node) -> str | None:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return path.replace("L['self'].", "").replace("[", ".").replace("]", "")


def unfolded_batchnorms(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the BatchNorm modules whose input is not a convolution used by that BN alone."""
    program = torch.export.export(model.eval(), (example,))
    modules = dict(model.named_modules())
    names = []
    for node in program.graph_module.graph.nodes:
        if node.op != "call_function" or _op(node) not in _BATCH_NORMS:
            continue
        path = _module_path(node)
        if path is None or not isinstance(modules.get(path), (nn.BatchNorm1d, nn.BatchNorm2d)):
            continue
        source = node.args[0]
        foldable = hasattr(source, "op") and _op(source) in _CONVS and len(source.users) == 1
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
    handle = model.get_submodule(path).register_forward_hook(lambda m, i, o: seen.setdefault("dim", o.dim()))
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        handle.remove()
    return seen.get("dim") == 3
