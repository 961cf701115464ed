"""Instructions per inference of TFLM + CMSIS-NN on a Cortex-M core, predicted per operator.

The model is fitted on exact instruction counts of real TFLM + CMSIS-NN firmware (one count per
operator and shape, on emulated Cortex-M4, M7, M33 and M55 cores; ``benchmarks/data/
tflm_cmsis_nn_ops.csv``) by ``python -m benchmarks.fit_device --write``, which stores the
coefficients in ``targets/device_model.toml`` and reports the error on shapes left out of the fit
(``benchmarks/RESULTS_latency.md``).

One operator's instructions are a linear function of its shape, with one set of coefficients per
kernel path: CMSIS-NN takes different code for a 1x1 convolution at stride 1, a strided 1x1 and
the general im2col convolution, so each gets its own line. Features are what the kernels loop over:
output pixels (im2col and requantisation per pixel), MACs, output elements, the leftovers of loops
unrolled by 2 and 4 (odd output channels, channel counts not a multiple of 4), and a constant (the
interpreter's call and the kernel's setup).

Layer records come from ``tinyprune.measure.macs``: TFLite graphs are NHWC, PyTorch and ONNX
graphs NCHW. A float graph is costed as the int8 graph the converter makes of it: batch norm and
ReLU fold into the convolution before them, views are free.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

PATH = resources.files("tinyprune.target_files") / "device_model.toml"
CORES = ("cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55")

# PyTorch / ONNX ops the int8 converter folds into the op before them, or that only relabel a buffer
_FOLDED = {"native_batch_norm", "batch_norm", "_native_batch_norm_legit_no_training", "relu", "relu_", "relu6",
           "hardtanh", "hardtanh_", "clamp", "clamp_min", "dropout", "BatchNormalization", "Relu", "Clip",
           "Dropout", "Identity", "RESHAPE_FREE"}
_ADD_LIKE = {"ADD", "SUB", "MUL", "add", "add_", "sub", "mul", "Add", "Sub", "Mul"}
_CONCAT = {"CONCATENATION", "cat", "Concat"}
_MEAN = {"MEAN", "SUM", "mean", "sum", "ReduceMean", "GlobalAveragePool", "adaptive_avg_pool2d"}


@dataclass(frozen=True)
class OpShape:
    """What the kernels' loops depend on, read from one layer record."""

    op: str  # TFLite builtin name the device runs (CONV_2D...)
    path: str  # kernel path with its own coefficients
    cin: int = 0
    cout: int = 0
    kk: int = 0  # kernel area (kh x kw)
    pixels: int = 0  # output pixels (batch 1)
    macs: int = 0
    out_elements: int = 0
    in_elements: int = 0
    inputs: int = 1
    last_dim: int = 1


def _numel(shape) -> int:
    return int(math.prod(shape)) if shape else 0


def _channels(shape, channels_last: bool) -> int:
    if not shape:
        return 1
    return int(shape[-1] if channels_last or len(shape) <= 2 else shape[1])


def _spatial(shape, channels_last: bool) -> tuple[int, ...]:
    if len(shape) <= 2:
        return ()
    return tuple(shape[1:-1] if channels_last else shape[2:])


def _tflite_op(layer: dict) -> str:
    """The TFLite op a layer of any format becomes on the device ("" where it costs nothing)."""
    op, kind = layer["op"], layer.get("kind", "")
    if op.isupper() and "_" in op or op in ("ADD", "MUL", "SUB", "MEAN", "PACK", "SHAPE", "SOFTMAX", "TRANSPOSE",
                                             "RESHAPE", "CONCATENATION", "QUANTIZE", "DEQUANTIZE", "PAD"):
        return op  # already a TFLite op
    if op in _FOLDED:
        return ""
    if kind == "conv":
        return "CONV_2D"
    if kind == "depthwise_conv":
        return "DEPTHWISE_CONV_2D"
    if kind == "fully_connected":
        return "FULLY_CONNECTED"
    if op in _MEAN:
        return "MEAN"
    if kind == "pool":
        return "MAX_POOL_2D" if "max" in op.lower() else "AVERAGE_POOL_2D"
    if kind == "softmax":
        return "SOFTMAX"
    if op in _ADD_LIKE:
        return "ADD"
    if op in _CONCAT:
        return "CONCATENATION"
    if kind == "data_movement":
        return "" if not layer.get("elements") else "TRANSPOSE"
    return "ELEMENTWISE"


def op_shape(layer: dict, channels_last: bool) -> OpShape | None:
    """The shape facts of one layer record; None for a layer the device does not run."""
    op = _tflite_op(layer)
    if not op:
        return None
    ins = [s for s in layer.get("input_shapes") or [] if s]
    outs = [s for s in layer.get("output_shapes") or [] if s]
    x = ins[0] if ins else []
    y = outs[0] if outs else []
    oe, ie, macs = _numel(y), _numel(x), int(layer.get("macs") or 0)
    cout = _channels(y, channels_last)
    common = dict(op=op, macs=macs, out_elements=oe, in_elements=ie, inputs=max(1, len(ins)),
                  last_dim=int(y[-1]) if y else 1)
    if op in ("CONV_2D", "DEPTHWISE_CONV_2D") and macs and oe:
        cin = _channels(x, channels_last)
        pixels = max(1, oe // max(cout, 1))
        if op == "DEPTHWISE_CONV_2D":
            return OpShape(path="dw", cin=cin, cout=cout, kk=max(1, round(macs / oe)), pixels=pixels, **common)
        kk = max(1, round(macs / (oe * max(cin, 1))))
        if kk > 1:
            path = "conv"
        else:  # stride 1 keeps the spatial size: CMSIS-NN's fast 1x1 path
            path = "c1x1" if _spatial(x, channels_last) == _spatial(y, channels_last) else "c1x1s"
        return OpShape(path=path, cin=cin, cout=cout, kk=kk, pixels=pixels, **common)
    if op == "FULLY_CONNECTED" and macs:
        units = int(y[-1]) if y else 1
        return OpShape(path="fc", cin=macs // max(oe, 1), cout=units, pixels=max(1, oe // max(units, 1)), **common)
    if op in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        return OpShape(path=op, macs=int(layer.get("elements") or 0),
                       **{k: v for k, v in common.items() if k != "macs"})
    if op in _MEAN:
        return OpShape(path="MEAN", **common)
    if op in ("TRANSPOSE", "CONCATENATION", "SOFTMAX", "ADD", "RESHAPE", "SHAPE", "PACK", "STRIDED_SLICE",
              "TFLM_DECODE", "CUSTOM:TFLM_DECODE"):
        return OpShape(path="TFLM_DECODE" if "DECODE" in op else op, **common)
    # not in the calibration: arithmetic costs like ADD per element, data movement like TRANSPOSE
    path = "TRANSPOSE" if layer.get("kind") == "data_movement" else "ADD"
    return OpShape(path=path, **{**common, "op": op})


def features(s: OpShape) -> list[float]:
    """The feature vector of ``s.path`` (its order is the order of the stored coefficients)."""
    if s.path == "conv":
        k = s.kk * s.cin
        return [1, s.pixels, s.pixels * k, s.macs, s.out_elements, (s.cout % 2) * s.pixels * k,
                (s.pixels % 2) * s.cout * k, s.macs * ((k % 4) / k), s.cout, s.pixels * s.kk]
    if s.path == "c1x1":  # one matrix product over all pixels; leftover when the channels are odd
        return [1, s.pixels, s.macs, s.out_elements, s.pixels * s.cin, (s.cout % 2) * s.pixels * s.cin]
    if s.path == "c1x1s":  # one product per output pixel; few shapes measured, so few terms
        return [1, s.pixels, s.macs, s.out_elements, s.pixels * s.cin]
    if s.path == "dw":
        return [1, s.pixels, s.macs, s.out_elements, s.pixels * (s.cout % 4) * s.kk, s.cout]
    if s.path == "fc":
        return [1, s.macs, s.out_elements, s.cout * (s.cin % 4), s.cin, (s.cout % 2) * s.cin]
    if s.path in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        return [1, s.macs, s.out_elements]
    if s.path == "TRANSPOSE":
        return [1, s.out_elements, s.out_elements / max(s.last_dim, 1)]
    if s.path == "CONCATENATION":
        return [1, s.out_elements, s.out_elements / max(s.last_dim, 1) * s.inputs]
    if s.path == "MEAN":
        return [1, s.in_elements]
    return [1, s.out_elements]


@lru_cache(maxsize=1)
def table() -> dict:
    with PATH.open("rb") as f:
        return tomllib.load(f)


def coefficients(core: str) -> dict[str, list[float]]:
    return table()["instructions"][core]


def predict_layers(layers: list[dict], core: str, channels_last: bool,
                   coef: dict | None = None) -> tuple[list[float], list[str]]:
    """Instructions of each layer on ``core``, and the ops priced by a stand-in model (not measured).
    ``coef``: coefficients other than the stored ones (the fit's own checks)."""
    coef = coef if coef is not None else coefficients(core)
    out, stand_ins = [], []
    for layer in layers:
        s = op_shape(layer, channels_last)
        if s is None:
            out.append(0.0)
            continue
        if s.path not in coef:
            stand_ins.append(s.op)
            out.append(0.0)
            continue
        if s.op != s.path and s.path in ("ADD", "TRANSPOSE") and s.op not in ("ADD", "TRANSPOSE"):
            stand_ins.append(s.op)
        out.append(max(0.0, float(sum(c * f for c, f in zip(coef[s.path], features(s))))))
    return out, sorted(set(stand_ins))


def group(layer: dict) -> str:
    """The feature group a vendor engine's factor applies to: conv, dw, fc or other."""
    kind = layer.get("kind")
    return {"conv": "conv", "depthwise_conv": "dw", "fully_connected": "fc"}.get(kind, "other")
