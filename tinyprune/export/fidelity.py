"""Does the int8 model compute what its float model computes? Per-layer SQNR, mapped to PyTorch names.

Every activation tensor of the int8 graph (LiteRT's reference kernels, which TFLM also uses, with
all intermediate tensors kept) is dequantized and compared with the float model's tensor of the
same shape that it matches best. The float side runs the model's ``torch.export`` graph node by
node, so each tensor carries the PyTorch module it was computed in (``nn_module_stack``). SQNR is
10 log10(|f|^2 / |f - q|^2) over the calibration samples; the layer to blame is the one whose
output loses the most SQNR relative to its inputs, because error accumulates down the graph and
the lowest SQNR is usually just the last layer.
"""

from __future__ import annotations

import math

import numpy as np

from tinyprune.export.rewrite import module_path as _module_path_or_none
from tinyprune.export.rewrite import op_name as _op_name
from tinyprune.export.tflite import quantize, to_device_layout

# ops that carry a tensor through unchanged up to an affine map: a fused conv+BN+ReLU output in the
# int8 graph is named after the conv or linear layer it started from
_PASS_THROUGH = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "batch_norm", "_native_batch_norm_legit_no_training",
                 "getitem", "clamp", "add", "mul", "sub", "div"}
_LAYERS = {"conv1d", "conv2d", "convolution", "linear", "addmm", "mm", "matmul", "cat", "avg_pool2d", "max_pool2d",
           "mean", "adaptive_avg_pool2d"}
COMPARE_SAMPLES = 64
# below this SQNR the best same-shaped float tensor is not the int8 tensor's counterpart
MATCH_SQNR_DB = 5.0
# what 8 bits can hold of a signal (6.02 dB per bit): an exactly representable input (images in
# k/255 steps) would otherwise make the first layer look like it loses 100 dB
INT8_CEILING_DB = 48.0


def _module_path(node) -> str:
    return _module_path_or_none(node) or "(top level)"


def _layer_of(node) -> str:
    """The conv/linear/cat that produced this tensor, followed back through BN, ReLU and the like."""
    seen = node
    for _ in range(8):
        name = _op_name(seen)
        if name in _LAYERS:
            return f"{_module_path(seen)} ({name})"
        if name not in _PASS_THROUGH:
            break
        producers = [a for a in seen.args if hasattr(a, "op") and a.op == "call_function"]
        if not producers:
            break
        seen = producers[0]
    return f"{_module_path(node)} ({_op_name(node)})"


def float_tensors(model, x: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(layer name, output over all samples) for every tensor the float model computes."""
    import torch
    from torch.fx import Interpreter

    model = model.eval()
    example = torch.from_numpy(x[:1])
    program = torch.export.export(model, (example,))
    gm = program.module()
    graph_nodes = {n.name: n for n in program.graph_module.graph.nodes}
    outs: dict[str, list[np.ndarray]] = {}

    class Recorder(Interpreter):
        def run_node(self, n):
            value = super().run_node(n)
            if n.op == "call_function" and isinstance(value, torch.Tensor) and value.is_floating_point():
                outs.setdefault(n.name, []).append(value.detach().numpy().copy())
            return value

    with torch.no_grad():
        for i in range(len(x)):
            Recorder(gm).run(torch.from_numpy(x[i:i + 1]))
    named = []
    for name, values in outs.items():
        node = graph_nodes.get(name)
        label = _layer_of(node) if node is not None else name
        named.append((label, np.concatenate(values)))
    return named


def int8_tensors(model_bytes: bytes, x_nchw: np.ndarray):
    """(graph, {tensor index: dequantized values over all samples}) of the int8 model."""
    from tinyprune.export.tflite import litert_interpreter
    from tinyprune.measure.graph import read_graph

    graph = read_graph(model_bytes)
    it = litert_interpreter(model_bytes, reference=True, keep_tensors=True)
    inp = it.get_input_details()[0]
    scale, zero = inp["quantization"]
    xq = quantize(to_device_layout(x_nchw), scale, zero)
    wanted = [t for op in graph.ops for t in op.outputs] + list(graph.inputs)
    wanted = [t for t in wanted if graph.tensors[t].scale is not None and graph.tensors[t].dtype in ("int8", "int16")]
    values: dict[int, list[np.ndarray]] = {t: [] for t in wanted}
    for i in range(len(xq)):
        it.set_tensor(inp["index"], xq[i:i + 1])
        it.invoke()
        for t in wanted:
            info = graph.tensors[t]
            raw = it.get_tensor(t).astype(np.float32)
            values[t].append((raw - info.zero_point) * info.scale)
    return graph, {t: np.concatenate(v) for t, v in values.items()}


def _layouts(q: np.ndarray) -> list[np.ndarray]:
    """The int8 tensor as the float model would hold it: NHWC -> NCHW (or NWC -> NCW), and as is."""
    if q.ndim == 4:
        return [q.transpose(0, 3, 1, 2), q]
    if q.ndim == 3:
        return [q.transpose(0, 2, 1), q]
    return [q]


def _sqnr(f: np.ndarray, q: np.ndarray) -> float:
    noise = float(((f - q) ** 2).sum())
    signal = float((f ** 2).sum())
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)


def _cosine(f: np.ndarray, q: np.ndarray) -> float:
    a, b = f.reshape(-1), q.reshape(-1)
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


def compare_layers(model, model_bytes: bytes, x_nchw: np.ndarray, samples: int = COMPARE_SAMPLES) -> dict:
    """Per-layer SQNR/cosine of the int8 graph against the float model on ``samples`` inputs.

    Returns {"samples", "layers": [...in execution order], "blame": the layer losing most SQNR}."""
    x = np.ascontiguousarray(x_nchw[:samples].astype(np.float32))
    floats = float_tensors(model, x)
    graph, ints = int8_tensors(model_bytes, x)
    sqnr_of: dict[int, float] = {}
    layers = []
    input_index = graph.inputs[0] if graph.inputs else None
    if input_index in ints:
        sqnr_of[input_index] = _sqnr(x, _layouts(ints[input_index])[0])
    for op in graph.ops:
        for t in op.outputs:
            if t not in ints:
                continue
            best = None
            for q in _layouts(ints[t]):
                for label, f in floats:
                    if f.shape != q.shape:
                        continue
                    v = _sqnr(f, q)
                    if best is None or v > best[0]:
                        best = (v, label, f, q)
            inputs = [sqnr_of[i] for i in op.inputs if i in sqnr_of]
            before = min([*inputs, INT8_CEILING_DB]) if inputs else math.inf
            q_flat = ints[t].reshape(len(ints[t]), -1)
            constant = len(q_flat) > 1 and bool(np.ptp(q_flat, axis=0).max() == 0)
            if best is None or (best[0] < MATCH_SQNR_DB and not constant):
                # an intermediate the float model never holds (a decomposed op's partial result):
                # its error is carried on as its input's, and the next matched tensor accounts for it
                if math.isfinite(before):
                    sqnr_of[t] = before
                continue
            sqnr, label, f, q = best
            cos = _cosine(f, q)
            sqnr_of[t] = sqnr
            layers.append({
                "op": op.op, "tensor": graph.tensors[t].name, "layer": label,
                "sqnr_db": _finite(sqnr), "cosine": round(cos, 5),
                "sqnr_lost_db": _finite(before - sqnr) if math.isfinite(before) and math.isfinite(sqnr) else None,
                "scale": graph.tensors[t].scale,
                "float_range": [float(f.min()), float(f.max())],
                "constant_over_samples": constant and bool(np.ptp(f.reshape(len(f), -1), axis=0).max() > 0),
            })
    blame = None
    lost = [entry for entry in layers if entry["sqnr_lost_db"] is not None]
    if lost:
        blame = max(lost, key=lambda e: e["sqnr_lost_db"])
    worst = min(layers, key=lambda e: e["sqnr_db"] if e["sqnr_db"] is not None else math.inf) if layers else None
    return {"samples": int(len(x)), "layers": layers,
            "blame": _summary(blame), "worst": _summary(worst),
            "output_sqnr_db": layers[-1]["sqnr_db"] if layers else None}


def _finite(v: float) -> float | None:
    # JSON holds no infinity: an exactly reproduced tensor (SQNR +inf) is written as 999 dB
    return round(v, 2) if math.isfinite(v) else (None if math.isnan(v) else (999.0 if v > 0 else -999.0))


def _summary(entry: dict | None) -> dict | None:
    if entry is None:
        return None
    return {k: entry[k] for k in ("layer", "op", "sqnr_db", "sqnr_lost_db")}


def torch_modules(model_bytes: bytes, fidelity_layers: list[dict]) -> tuple[dict[int, str], dict[int, str]]:
    """The PyTorch layer of each op and each weight tensor of a TFLite graph, from the fidelity table.

    ``fidelity_layers`` (``compare_layers(...)["layers"]``) already pairs int8 activation tensors
    with the PyTorch layer computing them, matched on values; this carries those names over by
    tensor name, so a graph exported from the same architecture (the LUT model, a re-export of the
    weight-shared model) gets them too. A DECODE op and the constant tensors an op reads belong to
    that op's layer. Returns ({op index: layer}, {tensor index: layer}); an op the comparison could
    not pair (an intermediate the float model never holds) is absent.
    """
    from tinyprune.measure.graph import read_graph

    graph = read_graph(model_bytes)
    layer_of = {e["tensor"]: e["layer"] for e in fidelity_layers}
    producer = {o: op for op in graph.ops for o in op.outputs if o >= 0}
    ops: dict[int, str] = {}
    for op in graph.ops:
        found = next((layer_of[graph.tensors[o].name] for o in op.outputs
                      if o >= 0 and graph.tensors[o].name in layer_of), None)
        if found is not None:
            ops[op.index] = found
    weights: dict[int, str] = {}
    for op in graph.ops:
        if op.index not in ops or op.op == "TFLM_DECODE":
            continue
        for i in op.inputs:
            if i < 0:
                continue
            source = producer.get(i)
            if graph.tensors[i].constant:
                weights[i] = ops[op.index]
            elif source is not None and source.op == "TFLM_DECODE":
                ops[source.index] = ops[op.index]
                weights.update({c: ops[op.index] for c in source.inputs if c >= 0 and graph.tensors[c].constant})
    return ops, weights


def name_layers(measurement: dict, model_bytes: bytes, fidelity_layers: list[dict]) -> dict:
    """Add ``module`` (the PyTorch layer, or None) to every per-op row of a TFLite ``measurement``."""
    ops, _ = torch_modules(model_bytes, fidelity_layers)
    for row in measurement["layers"]:
        row["module"] = ops.get(row["index"])
    return measurement
