"""MAC counts and per-layer records, on the TFLite graph the device runs, on ONNX and on PyTorch.

What counts (the same rule on every format, so that the counts can be compared):

* A MAC is one multiply-accumulate of a *dense* op: convolution (also grouped, transposed and
  3-D), depthwise convolution, fully connected / matrix multiplication (``FULLY_CONNECTED``,
  ``BATCH_MATMUL``; ONNX ``Conv``, ``ConvTranspose``, ``Gemm``, ``MatMul``; aten ``convolution``,
  ``addmm``, ``mm``, ``bmm``). MACs = output elements x the reduction length (kernel area x
  input channels per group). A bias add is not a MAC.
* FLOPs = 2 x MACs for dense ops (one multiply and one add each), which is what
  ``torch.utils.flop_counter.FlopCounterMode`` reports.
* Everything else (pooling, activations, element-wise add/mul, softmax, requantization,
  reshapes, padding) has 0 MACs; its work is counted as ``elements`` instead: the output
  elements it produces (pooling: output elements x window; global means: input elements),
  which the latency model charges per element. Metadata-only ops (views) are not listed.
* Recurrent ops (LSTM, SVDF) are listed with 0 MACs: their work is not counted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch only where a PyTorch model is counted: `check` of a .tflite runs without it
    import torch
    import torch.nn as nn


def count_torch(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) of ``model`` for one input sample.

    MACs are PyTorch's own count (``torch.utils.flop_counter``, FLOPs / 2) of the ops executed:
    convolutions of any dimension (transposed too), linear layers and functional matmuls. For
    conv/linear models this is the rule ``count_tflite`` applies to the exported graph, so the
    two agree once batch norm is folded. Parameters are every parameter of the model (batch-norm
    scales included).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.eval()(example[:1])
    finally:
        model.train(was_training)
    return int(counter.get_total_flops() // 2), int(sum(p.numel() for p in model.parameters()))


def _layer(index, name, op, kind, in_shapes, out_shapes, dtype, params, macs, elements, weight_bytes,
           activation_bytes) -> dict:
    return {
        "index": index, "name": name, "op": op, "kind": kind,
        "input_shapes": [list(x) for x in in_shapes], "output_shapes": [list(x) for x in out_shapes],
        "dtype": dtype, "params": int(params), "macs": int(macs), "flops": int(2 * macs),
        "elements": int(elements), "weight_bytes": int(weight_bytes), "activation_bytes": int(activation_bytes),
    }


# ------------------------------------------------------------------------------------------ TFLite

_TFL_CONV = {"CONV_2D", "TRANSPOSE_CONV", "CONV_3D", "CONV_3D_TRANSPOSE"}
_TFL_FC = {"FULLY_CONNECTED", "BATCH_MATMUL"}
_TFL_POOL = {"AVERAGE_POOL_2D", "MAX_POOL_2D", "L2_POOL_2D", "MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN",
             "REDUCE_PROD", "REDUCE_ANY", "REDUCE_ALL"}
_TFL_SOFTMAX = {"SOFTMAX", "LOG_SOFTMAX"}
_TFL_MOVE = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE", "PAD", "PADV2", "MIRROR_PAD", "CONCATENATION",
             "STRIDED_SLICE", "SLICE", "GATHER", "GATHER_ND", "PACK", "UNPACK", "SPLIT", "SPLIT_V", "TILE",
             "BROADCAST_TO", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH", "BATCH_TO_SPACE_ND", "SPACE_TO_BATCH_ND",
             "REVERSE_V2", "SHAPE", "FILL", "ZEROS_LIKE", "TFLM_DECODE", "CAST", "RESIZE_NEAREST_NEIGHBOR"}
_TFL_IN_PLACE = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "SHAPE"}  # TFLM shares the buffer: no work


def tflite_kind(op: str) -> str:
    if op in _TFL_CONV:
        return "conv"
    if op == "DEPTHWISE_CONV_2D":
        return "depthwise_conv"
    if op in _TFL_FC:
        return "fully_connected"
    if op in _TFL_POOL:
        return "pool"
    if op in _TFL_SOFTMAX:
        return "softmax"
    if op in _TFL_MOVE:
        return "data_movement"
    return "elementwise"


def _tflite_macs(op, t: dict) -> int:
    name = op.op
    ins = [i for i in op.inputs if i >= 0]
    if not op.outputs or not ins:
        return 0
    out = t[op.outputs[0]]
    if name == "CONV_2D" and len(ins) > 1:
        _, kh, kw, cin = t[ins[1]].shape  # [cout, kh, kw, cin / groups]
        return out.numel * kh * kw * cin
    if name == "DEPTHWISE_CONV_2D" and len(ins) > 1:
        _, kh, kw, _ = t[ins[1]].shape  # [1, kh, kw, cout]
        return out.numel * kh * kw
    if name == "FULLY_CONNECTED" and len(ins) > 1:
        return out.numel * t[ins[1]].shape[-1]  # weights [units, depth]
    if name == "TRANSPOSE_CONV" and len(ins) > 2:
        cout, kh, kw, _ = t[ins[1]].shape  # inputs: output_shape, weights [cout, kh, kw, cin], input
        return t[ins[2]].numel * kh * kw * cout
    if name == "CONV_3D" and len(ins) > 1:
        kd, kh, kw, cin, _ = t[ins[1]].shape  # [kd, kh, kw, cin, cout]
        return out.numel * kd * kh * kw * cin
    if name == "CONV_3D_TRANSPOSE" and len(ins) > 2:
        kd, kh, kw, cout, _ = t[ins[1]].shape  # [kd, kh, kw, cout, cin]
        return t[ins[2]].numel * kd * kh * kw * cout
    if name == "BATCH_MATMUL" and len(ins) > 1:
        a = t[ins[0]].shape
        k = a[-2] if op.options.get("adj_x") else a[-1]
        return out.numel * k
    return 0


def _tflite_elements(op, t: dict) -> int:
    if op.op in _TFL_IN_PLACE or not op.outputs:
        return 0
    out = t[op.outputs[0]]
    if "filter" in op.options:
        kh, kw = op.options["filter"]
        return out.numel * kh * kw
    if op.op in _TFL_POOL:
        return t[op.inputs[0]].numel  # reductions read every input element
    return sum(t[o].numel for o in op.outputs if o >= 0)


def tflite_layers(model_bytes: bytes, graph=None) -> list[dict]:
    """One record per operator of the main subgraph, in execution order (see the module doc)."""
    from tinyprune.measure.graph import read_graph

    g = graph if graph is not None else read_graph(model_bytes)
    t = g.tensors
    layers = []
    for op in g.ops:
        ins = [i for i in op.inputs if i >= 0]
        outs = [o for o in op.outputs if o >= 0]
        consts = [t[i] for i in ins if t[i].constant]
        acts = [t[i] for i in ins if not t[i].constant]
        macs = _tflite_macs(op, t)
        kind = tflite_kind(op.op)
        # shapes, permutations, paddings and axes of data-movement ops take flash but are not weights
        weights = [c for c in consts if kind != "data_movement" or op.op == "TFLM_DECODE"]
        # the dtype the op computes in: that of its first activation input (weights may be int8
        # in a "dynamic range" float model)
        dtype = (acts[0].dtype if acts else t[outs[0]].dtype if outs else "unknown")
        act_bytes = 0 if op.op in _TFL_IN_PLACE else sum(x.nbytes for x in acts) + sum(t[o].nbytes for o in outs)
        name = t[outs[0]].name if outs else f"op{op.index}"
        layers.append(_layer(op.index, name, op.op, kind, [t[i].shape for i in ins if not t[i].constant],
                             [t[o].shape for o in outs], dtype, sum(c.numel for c in weights), macs,
                             0 if macs else _tflite_elements(op, t), sum(c.nbytes for c in consts), act_bytes))
    return layers


def count_tflite(model_bytes: bytes) -> dict:
    """Per-op MACs and total parameters of a TFLite flatbuffer, read from its own graph.

    ``params`` counts the weights and biases of the dense ops (conv, depthwise, fully
    connected), each constant tensor once (also when the converter lets equal tensors share one buffer);
    ``nonzero_params`` how many of them are not zero (None when weights are stored as LUT indices).
    """
    from tinyprune.measure.graph import nonzero_constants, read_graph

    g = read_graph(model_bytes)
    layers, params, seen = [], 0, set()
    for op in g.ops:
        macs = _tflite_macs(op, g.tensors)
        if tflite_kind(op.op) in ("conv", "depthwise_conv", "fully_connected"):
            for i in op.inputs[1:]:
                if i >= 0 and g.tensors[i].constant and i not in seen:
                    seen.add(i)
                    params += g.tensors[i].numel
        out = list(g.tensors[op.outputs[0]].shape) if op.outputs else []
        layers.append({"op": op.op, "output_shape": out, "macs": macs})
    return {"macs": sum(l["macs"] for l in layers), "params": params, "layers": layers,
            "nonzero_params": nonzero_constants(model_bytes, sorted(seen))}


# -------------------------------------------------------------------------------------------- ONNX

_ONNX_POOL = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum",
              "ReduceMax", "ReduceMin", "LpPool"}
_ONNX_MOVE = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Pad", "Concat", "Slice", "Gather",
              "Split", "Tile", "Expand", "Identity", "DepthToSpace", "SpaceToDepth", "Cast", "Shape",
              "Resize", "ConstantOfShape"}
_ONNX_FREE = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Constant", "Dropout"}
_ONNX_TYPES = {1: ("float32", 32), 2: ("uint8", 8), 3: ("int8", 8), 5: ("int16", 16), 6: ("int32", 32),
               7: ("int64", 64), 9: ("bool", 8), 10: ("float16", 16), 11: ("float64", 64), 16: ("bfloat16", 16)}


def _onnx_attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            import onnx

            return onnx.helper.get_attribute_value(a)
    return default


def onnx_layers(model) -> list[dict]:
    """Per-node records of an ``onnx.ModelProto`` (shapes inferred; unknown dims taken as 1)."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:
        pass  # counts of nodes whose shapes stay unknown fall back to 0
    g = model.graph
    info: dict[str, tuple[tuple[int, ...], str, int]] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        dims = tuple((d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1) for d in tt.shape.dim)
        dtype, bits = _ONNX_TYPES.get(tt.elem_type, ("unknown", 32))
        info[vi.name] = (dims, dtype, bits)
    consts = {}
    for init in g.initializer:
        arr = numpy_helper.to_array(init)
        dtype, bits = _ONNX_TYPES.get(init.data_type, ("unknown", 32))
        consts[init.name] = (tuple(arr.shape), dtype, bits)
    for node in g.node:
        if node.op_type == "Constant" and node.output:
            value = _onnx_attr(node, "value", None)
            if value is not None:
                dtype, bits = _ONNX_TYPES.get(value.data_type, ("unknown", 32))
                consts[node.output[0]] = (tuple(value.dims), dtype, bits)

    def shape(name):
        return (consts.get(name) or info.get(name) or ((), "unknown", 32))[0]

    def nbytes(name):
        s, _, bits = consts.get(name) or info.get(name) or ((), "unknown", 0)
        return (int(np.prod(s)) * bits + 7) // 8 if s or name in info or name in consts else 0

    layers = []
    for i, node in enumerate(g.node):
        op = node.op_type
        if op in ("Constant",):
            continue
        ins = [x for x in node.input if x]
        outs = [x for x in node.output if x]
        c_ins = [x for x in ins if x in consts]
        a_ins = [x for x in ins if x not in consts]
        out_shape = shape(outs[0]) if outs else ()
        out_n = int(np.prod(out_shape)) if out_shape else 0
        macs, kind = 0, "elementwise"
        if op in ("Conv", "ConvInteger", "QLinearConv") and len(ins) > 1:
            w = shape(ins[3] if op == "QLinearConv" else ins[1])
            group = _onnx_attr(node, "group", 1)
            if len(w) >= 3:
                macs = out_n * int(np.prod(w[1:]))
                cin = w[1] * group
                kind = "depthwise_conv" if group > 1 and group == cin and w[1] == 1 else "conv"
        elif op == "ConvTranspose" and len(ins) > 1:
            w = shape(ins[1])  # [cin, cout / group, k...]
            if len(w) >= 3:
                macs = int(np.prod(shape(ins[0]))) * int(np.prod(w[1:]))
            kind = "conv"
        elif op == "Gemm" and len(ins) > 1:
            b = shape(ins[1])
            k = (b[1] if _onnx_attr(node, "transB", 0) else b[0]) if len(b) == 2 else 0
            macs, kind = out_n * k, "fully_connected"
        elif op in ("MatMul", "MatMulInteger", "QLinearMatMul") and len(ins) > 1:
            a = shape(ins[3] if op == "QLinearMatMul" else ins[0])
            macs, kind = (out_n * a[-1] if a else 0), "fully_connected"
        elif op in _ONNX_POOL:
            kind = "pool"
        elif op in ("Softmax", "LogSoftmax"):
            kind = "softmax"
        elif op in _ONNX_MOVE:
            kind = "data_movement"
        if op in _ONNX_FREE:
            elements = 0
        elif macs:
            elements = 0
        elif op in ("MaxPool", "AveragePool", "LpPool"):
            elements = out_n * int(np.prod(_onnx_attr(node, "kernel_shape", [1])))
        elif kind == "pool":
            elements = int(np.prod(shape(ins[0]))) if ins else 0
        else:
            elements = sum(int(np.prod(shape(o))) for o in outs if shape(o))
        # weights: the float tensors the op reads (shape/axes inputs of reshapes are not weights)
        w_names = [c for c in c_ins if consts[c][1] not in ("int64",)]
        params = sum(int(np.prod(consts[c][0])) for c in w_names)
        wbytes = sum(nbytes(c) for c in w_names)
        act = 0 if op in _ONNX_FREE else sum(nbytes(x) for x in a_ins) + sum(nbytes(o) for o in outs)
        dtype = (info.get(a_ins[0], ((), "unknown", 0))[1] if a_ins else "unknown")
        if dtype == "unknown" and outs:
            dtype = info.get(outs[0], ((), "unknown", 0))[1]
        layers.append(_layer(i, node.name or f"{op}_{i}", op, kind, [shape(x) for x in a_ins],
                             [shape(o) for o in outs], dtype, params, macs, elements, wbytes, act))
    return layers


# ----------------------------------------------------------------------------------------- PyTorch

def torch_layers(model: nn.Module, example: torch.Tensor) -> list[dict]:
    """One record per aten op PyTorch executes for one sample, named after the owning module.

    Ops are seen at the dispatcher (so functional calls such as ``torch.relu(x)`` or ``x + y``
    are listed too); views and other metadata-only ops are left out.
    """
    from tinyprune.measure.torch_trace import trace_ops

    return trace_ops(model, example[:1])
