"""Per-op records of a PyTorch forward pass, seen at the aten dispatcher.

A ``TorchDispatchMode`` sees every aten op the model runs (module calls and functional calls
alike) with its real tensors; forward pre-hooks keep a stack of module names so that each op
is attributed to the innermost module that ran it. The MAC rule is that of
``tinyprune.measure.macs`` (see its module doc).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

aten = torch.ops.aten

_SKIP = {"detach", "alias", "lift_fresh", "lift_fresh_copy", "_assert_tensor_metadata", "sym_size", "sym_numel",
         "sym_stride", "sym_storage_offset", "_unsafe_view", "view", "reshape", "flatten", "t", "expand",
         "permute", "transpose", "unsqueeze", "squeeze", "select", "slice", "dropout", "native_dropout",
         "_assert_async", "empty", "empty_like", "set_", "resize_", "zeros", "ones", "full", "arange",
         "scalar_tensor", "_local_scalar_dense", "item", "is_same_size"}
_POOL_WINDOW = {"max_pool2d_with_indices", "max_pool2d", "avg_pool2d", "max_pool1d", "avg_pool1d",
                "max_pool1d_with_indices", "max_pool3d_with_indices", "avg_pool3d"}
_POOL_REDUCE = {"_adaptive_avg_pool2d", "adaptive_avg_pool2d", "adaptive_avg_pool1d", "_adaptive_avg_pool3d",
                "adaptive_max_pool2d", "mean", "sum", "amax", "amin", "max", "min", "var_mean", "var"}
_SOFTMAX = {"_softmax", "softmax", "_log_softmax", "log_softmax"}
_MOVE = {"cat", "constant_pad_nd", "clone", "_to_copy", "copy_", "copy", "index_select", "stack", "pad",
         "reflection_pad2d", "replication_pad2d", "upsample_nearest2d", "gather", "index", "repeat",
         "contiguous", "roll", "flip"}
_FC = {"addmm", "mm", "bmm", "baddbmm", "addbmm"}


def _macs(func, args: tuple, kwargs: dict, out) -> int:
    """PyTorch's own count for the op (torch.utils.flop_counter's formula, FLOPs / 2), the same rule
    count_torch applies to the whole model, so the per-layer table sums to the pruning target's count."""
    formula = flop_registry.get(func.overloadpacket)
    return 0 if formula is None else int(formula(*args, **kwargs, out_val=out)) // 2


def _kind(name: str, args: tuple) -> str:
    if name == "convolution":
        x, w = args[0], args[1]
        groups = int(args[8]) if len(args) > 8 else 1
        transposed = bool(args[6]) if len(args) > 6 else False
        if not transposed and groups > 1 and groups == x.shape[1] and w.shape[1] == 1:
            return "depthwise_conv"
        return "conv"
    if name in _FC:
        return "fully_connected"
    if name in _POOL_WINDOW or name in _POOL_REDUCE:
        return "pool"
    if name in _SOFTMAX:
        return "softmax"
    if name in _MOVE:
        return "data_movement"
    return "elementwise"


def _elements(name: str, args: tuple, outs: list[torch.Tensor]) -> int:
    if name in _POOL_WINDOW:
        kernel = args[1] if len(args) > 1 else [1]
        kernel = [kernel] if isinstance(kernel, int) else list(kernel)
        return outs[0].numel() * int(np.prod(kernel))
    if name in _POOL_REDUCE:
        return args[0].numel() if isinstance(args[0], torch.Tensor) else 0
    return sum(o.numel() for o in outs)


class _Recorder(TorchDispatchMode):
    def __init__(self, params: dict, buffers: dict, names: list[str]):
        super().__init__()
        self.params, self.buffers, self.names = params, buffers, names
        self.records: list[dict] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name in _SKIP or getattr(func, "is_view", False):
            return out
        outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor) and o.numel()]
        if not outs:
            return out
        flat = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        weights, acts = [], []
        for tensor in flat:
            ptr = tensor.data_ptr() if tensor.numel() else None
            if ptr in self.params or ptr in self.buffers:
                weights.append((ptr in self.params, tensor))
            else:
                acts.append(tensor)
        params = sum(t.numel() for is_param, t in weights if is_param)
        wbytes = sum(t.numel() * t.element_size() for _, t in weights)
        macs = _macs(func, args, kwargs, out)
        abytes = sum(t.numel() * t.element_size() for t in acts) + sum(o.numel() * o.element_size() for o in outs)
        dtype = str(acts[0].dtype if acts else outs[0].dtype).replace("torch.", "")
        self.records.append({
            "name": self.names[-1] if self.names else "(model)", "op": name, "kind": _kind(name, args),
            "input_shapes": [list(t.shape) for t in acts], "output_shapes": [list(o.shape) for o in outs],
            "dtype": dtype, "params": int(params), "macs": int(macs), "flops": int(2 * macs),
            "elements": 0 if macs else int(_elements(name, args, outs)), "weight_bytes": int(wbytes),
            "activation_bytes": int(abytes),
        })
        return out


def trace_ops(model: nn.Module, example: torch.Tensor) -> list[dict]:
    names: list[str] = []
    handles = []

    def enter(name):
        def hook(module, args):
            names.append(name)
        return hook

    def leave(module, args, output):  # returns None: the output is left alone
        if names:
            names.pop()

    for mname, module in model.named_modules():
        if mname:
            handles.append(module.register_forward_pre_hook(enter(mname)))
            handles.append(module.register_forward_hook(leave))
    params = {p.data_ptr(): n for n, p in model.named_parameters() if p.numel()}
    buffers = {b.data_ptr(): n for n, b in model.named_buffers() if b.numel()}
    recorder = _Recorder(params, buffers, names)
    was_training = model.training
    try:
        with torch.no_grad(), recorder:
            model.eval()(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for i, r in enumerate(recorder.records):
        r["index"] = i
    return [{"index": r["index"], **{k: v for k, v in r.items() if k != "index"}} for r in recorder.records]
