"""Read a TFLite flatbuffer's graph: operators, tensors, constant buffers. No interpreter needed.

Reading the flatbuffer itself (with the schema that ships with tflite-micro) works on any
``.tflite``, including models with custom or Flex ops that LiteRT cannot even load, so that
``measure`` can still list them and say which ops the target lacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tinyprune.errors import UnsupportedModel

# bits per element by TensorType name; the names and their numbers come from the schema itself
_BITS = {"float32": 32, "float16": 16, "int32": 32, "uint8": 8, "int64": 64, "string": 8, "bool": 8, "int16": 16,
         "complex64": 64, "int8": 8, "float64": 64, "complex128": 128, "uint64": 64, "resource": 0, "variant": 0,
         "uint32": 32, "uint16": 16, "int4": 4, "bfloat16": 16, "int2": 2, "uint4": 4, "float8_e4m3fn": 8,
         "float8_e5m2": 8}


def _types(s) -> dict[int, tuple[str, int]]:
    """TensorType value -> (name, bits per element), read from the schema's enum class."""
    names = {v: k.lower() for k, v in vars(s.TensorType).items() if not k.startswith("_") and isinstance(v, int)}
    return {v: (name, _BITS.get(name, 8)) for v, name in names.items()}


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    bits: int
    constant: bool  # backed by a non-empty buffer in the flatbuffer (weights, biases, shapes)
    buffer: int
    scale: float | None = None
    zero_point: int | None = None

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return (self.numel * self.bits + 7) // 8


@dataclass(frozen=True)
class OpInfo:
    index: int
    op: str  # builtin name (CONV_2D) or the custom code (TFLM_DECODE, FlexConv2D)
    custom: bool
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Graph:
    tensors: dict  # index -> TensorInfo (main subgraph)
    ops: list  # OpInfo in execution order (main subgraph)
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    subgraphs: int
    other_subgraph_ops: list  # op names used in subgraphs other than the main one (IF/WHILE bodies)


def _schema():
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as s

    return s


def _op_names(s) -> dict[int, str]:
    return {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}


def is_tflite(data: bytes) -> bool:
    return len(data) >= 8 and data[4:8] == b"TFL3"


def _options(s, op, name: str) -> dict:
    """The few builtin options the counters need (pool windows, BATCH_MATMUL transposes)."""
    table = op.BuiltinOptions()
    if table is None:
        return {}
    if name in ("AVERAGE_POOL_2D", "MAX_POOL_2D", "L2_POOL_2D"):
        o = s.Pool2DOptions()
        o.Init(table.Bytes, table.Pos)
        return {"filter": (int(o.FilterHeight()), int(o.FilterWidth())), "stride": (int(o.StrideH()), int(o.StrideW()))}
    if name == "BATCH_MATMUL":
        o = s.BatchMatMulOptions()
        o.Init(table.Bytes, table.Pos)
        return {"adj_x": bool(o.AdjX()), "adj_y": bool(o.AdjY())}
    if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        o = s.Conv2DOptions() if name == "CONV_2D" else s.DepthwiseConv2DOptions()
        o.Init(table.Bytes, table.Pos)
        return {"stride": (int(o.StrideH()), int(o.StrideW()))}
    return {}


def read_graph(data: bytes) -> Graph:
    """Parse ``data``; raise UnsupportedModel when it is not a readable TFLite flatbuffer."""
    if not is_tflite(data):
        raise UnsupportedModel("not a TFLite flatbuffer (the file identifier TFL3 is missing)")
    s = _schema()
    names = _op_names(s)
    types = _types(s)
    try:
        model = s.Model.GetRootAs(data, 0)
        if model.SubgraphsLength() < 1:
            raise UnsupportedModel("the TFLite model has no subgraph")
        codes = []
        for i in range(model.OperatorCodesLength()):
            c = model.OperatorCodes(i)
            code = max(int(c.BuiltinCode()), int(c.DeprecatedBuiltinCode()))
            if code == s.BuiltinOperator.CUSTOM:
                custom = c.CustomCode()
                codes.append(((custom.decode() if custom else "CUSTOM"), True))
            else:
                codes.append((names.get(code, f"BUILTIN_{code}"), False))
        buffers_with_data = set()
        for b in range(model.BuffersLength()):
            buf = model.Buffers(b)
            if buf.DataLength() > 0 or int(buf.Size()) > 0:
                buffers_with_data.add(b)
        sg = model.Subgraphs(0)
        tensors = {}
        for t in range(sg.TensorsLength()):
            tt = sg.Tensors(t)
            dtype, bits = types.get(int(tt.Type()), (f"type{tt.Type()}", 8))
            shape = tuple(int(d) for d in tt.ShapeAsNumpy()) if tt.ShapeLength() else ()
            shape = tuple(1 if d < 0 else d for d in shape)  # dynamic batch: one sample
            scale = zero = None
            q = tt.Quantization()
            if q is not None and q.ScaleLength() > 0:
                scale = float(q.Scale(0))
                zero = int(q.ZeroPoint(0)) if q.ZeroPointLength() else 0
            name = tt.Name().decode("utf-8", "replace") if tt.Name() else f"t{t}"
            tensors[t] = TensorInfo(t, name, shape, dtype, bits, int(tt.Buffer()) in buffers_with_data,
                                    int(tt.Buffer()), scale, zero)
        ops = []
        for i in range(sg.OperatorsLength()):
            o = sg.Operators(i)
            name, custom = codes[o.OpcodeIndex()]
            ins = tuple(int(x) for x in o.InputsAsNumpy()) if o.InputsLength() else ()
            outs = tuple(int(x) for x in o.OutputsAsNumpy()) if o.OutputsLength() else ()
            ops.append(OpInfo(i, name, custom, ins, outs, {} if custom else _options(s, o, name)))
        other = []
        for g in range(1, model.SubgraphsLength()):
            sub = model.Subgraphs(g)
            for i in range(sub.OperatorsLength()):
                other.append(codes[sub.Operators(i).OpcodeIndex()][0])
        inputs = tuple(int(x) for x in sg.InputsAsNumpy()) if sg.InputsLength() else ()
        outputs = tuple(int(x) for x in sg.OutputsAsNumpy()) if sg.OutputsLength() else ()
    except UnsupportedModel:
        raise
    except Exception as exc:  # a truncated or corrupt flatbuffer fails somewhere in the accessors
        raise UnsupportedModel(f"the TFLite flatbuffer is corrupt or truncated ({type(exc).__name__})") from None
    _validate(tensors, ops, inputs, outputs, len(data))
    return Graph(tensors, ops, inputs, outputs, model.SubgraphsLength(), other)


MAX_TENSOR_ELEMENTS = 1 << 28  # 256 Mi elements: far beyond any microcontroller model
# (input position, rank) the MAC counters read: a weight of another rank is a corrupt file
_WEIGHT_RANK = {"CONV_2D": (1, 4), "DEPTHWISE_CONV_2D": (1, 4), "TRANSPOSE_CONV": (1, 4), "CONV_3D": (1, 5),
                "CONV_3D_TRANSPOSE": (1, 5)}


def _validate(tensors: dict, ops: list, inputs, outputs, file_bytes: int) -> None:
    """Indices that point at nothing and sizes no file of this length can describe are corruption:
    refuse them here (exit 2) instead of failing, or allocating gigabytes, in a counter later."""
    def bad(why: str) -> UnsupportedModel:
        return UnsupportedModel(f"the TFLite flatbuffer is corrupt: {why}")

    for op in ops:
        for i in (*op.inputs, *op.outputs):
            if i != -1 and i not in tensors:
                raise bad(f"op {op.index} ({op.op}) uses tensor {i}, and there are {len(tensors)}")
        # -1 marks an omitted optional input; an op's data input and its results always exist
        if -1 in op.outputs or (op.inputs and op.inputs[0] == -1):
            raise bad(f"op {op.index} ({op.op}) reads or writes tensor -1 (none)")
    for op in ops:
        ins = [i for i in op.inputs if i >= 0]
        pos, rank = _WEIGHT_RANK.get(op.op, (None, None))
        if pos is not None and len(ins) > pos and len(tensors[ins[pos]].shape) != rank:
            raise bad(f"op {op.index} ({op.op}) has a weight of rank {len(tensors[ins[pos]].shape)}, not {rank}")
        if op.op == "FULLY_CONNECTED" and len(ins) > 1 and not tensors[ins[1]].shape:
            raise bad(f"op {op.index} (FULLY_CONNECTED) has a scalar weight")
        if op.op == "BATCH_MATMUL" and ins and len(tensors[ins[0]].shape) < 2:
            raise bad(f"op {op.index} (BATCH_MATMUL) multiplies a tensor of rank < 2")
    for i in (*inputs, *outputs):
        if i not in tensors:
            raise bad(f"the graph's input/output tensor {i} does not exist")
    for t in tensors.values():
        if any(d < 0 for d in t.shape) or t.numel > MAX_TENSOR_ELEMENTS:
            raise bad(f"tensor {t.index} has shape {list(t.shape)}")
        if t.constant and t.nbytes > file_bytes:
            raise bad(f"constant tensor {t.index} needs {t.nbytes:,} bytes in a {file_bytes:,}-byte file")


def nonzero_constants(data: bytes, indices) -> int | None:
    """Nonzero entries of the given constant int8/int32 tensors of subgraph 0 (None if any is packed
    or of another type: a LUT-compressed weight holds indices, not values)."""
    s = _schema()
    model = s.Model.GetRootAs(data, 0)
    sg = model.Subgraphs(0)
    total = 0
    for i in indices:
        t = sg.Tensors(i)
        dtype = {9: np.int8, 2: np.int32}.get(int(t.Type()))
        raw = model.Buffers(int(t.Buffer())).DataAsNumpy()
        if dtype is None or not isinstance(raw, np.ndarray):
            return None
        values = raw.view(dtype)
        if values.size != (int(np.prod(t.ShapeAsNumpy())) if t.ShapeLength() else 1):
            return None
        total += int(np.count_nonzero(values))
    return total
