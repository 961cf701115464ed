"""Per-layer MAC counts on PyTorch, ONNX and TFLite graphs against independent counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from tinyprune.errors import UnsupportedModel
from tinyprune.measure.macs import count_tflite, count_torch, onnx_layers, tflite_layers, torch_layers
from tinyprune.testing import MODELS, SAMPLE_SHAPES


def flop_counter_macs(model: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x)
    return counter.get_total_flops() // 2  # 2 FLOPs per multiply-accumulate of conv/matmul


class Mixed(nn.Module):
    """Ops the module-hook counter never saw: grouped, transposed and 1-D convs, bmm, functional calls."""

    def __init__(self):
        super().__init__()
        self.grouped = nn.Conv2d(4, 8, 3, padding=1, groups=2)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.c1 = nn.Conv1d(4, 6, 5)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        y = torch.relu(self.dw(self.grouped(x)))
        y = self.up(y) + x  # residual
        seq = y.flatten(2)  # [1, 4, 64]
        att = torch.bmm(seq.transpose(1, 2), seq)  # [1, 64, 64]
        z = self.c1(torch.bmm(seq, att.softmax(-1)))
        return self.head(z.mean(-1))


@pytest.mark.parametrize("name", [*MODELS, "mixed"])
def test_torch_layers_match_flop_counter(name):
    model = Mixed() if name == "mixed" else MODELS[name]()
    x = torch.rand(1, 4, 8, 8) if name == "mixed" else torch.rand(1, *SAMPLE_SHAPES[name])
    layers = torch_layers(model.eval(), x)
    assert sum(l["macs"] for l in layers) == flop_counter_macs(model, x)
    assert all(l["flops"] == 2 * l["macs"] for l in layers)
    assert sum(l["params"] for l in layers) == sum(p.numel() for p in model.parameters())
    # one MAC rule: the per-op table sums to the count the pruning target is set against
    assert sum(l["macs"] for l in layers) == count_torch(model, x)[0]


def test_torch_layers_name_and_classify_ops():
    layers = torch_layers(Mixed(), torch.rand(1, 4, 8, 8))
    by_name = {}
    for l in layers:
        by_name.setdefault(l["name"], []).append(l)
    assert by_name["dw"][0]["kind"] == "depthwise_conv" and by_name["grouped"][0]["kind"] == "conv"
    assert by_name["up"][0]["kind"] == "conv" and by_name["head"][0]["kind"] == "fully_connected"
    functional = by_name["(model)"]
    assert {"relu", "add", "bmm", "_softmax", "mean"} <= {l["op"] for l in functional}
    relu = next(l for l in functional if l["op"] == "relu")
    assert relu["macs"] == 0 and relu["elements"] == 8 * 4 * 4
    assert relu["activation_bytes"] == 2 * 8 * 4 * 4 * 4  # float32 in + out
    conv = by_name["grouped"][0]
    assert conv["weight_bytes"] == 4 * conv["params"] == 4 * (8 * 2 * 9 + 8)


def _onnx_model():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in (
        ("w1", (8, 3, 3, 3)), ("b1", (8,)), ("w2", (8, 1, 3, 3)), ("w3", (10, 128)), ("b3", (10,)), ("w4", (10, 4)))]
    inits.append(numpy_helper.from_array(np.array([1, 128], np.int64), "shape"))
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], group=8),
        helper.make_node("MaxPool", ["c2"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p", "shape"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["g"], transB=1),
        helper.make_node("MatMul", ["g", "w4"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_layers_match_the_same_model_in_torch():
    layers = onnx_layers(_onnx_model())
    torch_twin = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False),
                               nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, 10), nn.Linear(10, 4, bias=False))
    assert sum(l["macs"] for l in layers) == flop_counter_macs(torch_twin, torch.rand(1, 3, 16, 16)) == 61224
    assert [l["kind"] for l in layers] == ["conv", "elementwise", "depthwise_conv", "pool", "data_movement",
                                           "fully_connected", "fully_connected"]
    pool = next(l for l in layers if l["op"] == "MaxPool")
    assert pool["elements"] == 8 * 4 * 4 * 4  # output x window
    assert sum(l["params"] for l in layers) == sum(p.numel() for p in torch_twin.parameters())
    reshape = next(l for l in layers if l["op"] == "Reshape")
    assert reshape["params"] == 0 and reshape["activation_bytes"] == 0  # the shape tensor is not a weight


# ---------------------------------------------------------------------------------- TFLite graphs

def _editor():
    from tflite_micro.tensorflow.lite.micro.compression import model_editor as me
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as s

    return me, s


def tflite_model(extra_ops=()) -> bytes:
    """A TFLite graph built in code (no converter): conv, depthwise, transpose conv, FC, batch matmul."""
    me, s = _editor()
    t, b = s.TensorType, s.BuiltinOperator

    def const(shape, dtype=np.int8):
        return me.Tensor(shape=shape, dtype=t.INT8 if dtype == np.int8 else t.INT32,
                         data=np.ones(shape, dtype))

    def act(shape):
        return me.Tensor(shape=shape, dtype=t.INT8)

    x, y1, y2, y3, y4, y5 = act((1, 10, 12, 3)), act((1, 10, 12, 8)), act((1, 5, 6, 8)), act((1, 10, 12, 4)), \
        act((1, 10, 12, 4)), act((1, 20))
    ops = [
        me.Operator(opcode=b.CONV_2D, inputs=[x, const((8, 3, 3, 3)), const((8,), np.int32)], outputs=[y1]),
        me.Operator(opcode=b.DEPTHWISE_CONV_2D, inputs=[y1, const((1, 3, 3, 8)), const((8,), np.int32)], outputs=[y2]),
        me.Operator(opcode=b.TRANSPOSE_CONV, inputs=[const((4,), np.int32), const((4, 2, 2, 8)), y2], outputs=[y3]),
        me.Operator(opcode=b.ADD, inputs=[y3, y3], outputs=[y4]),
        me.Operator(opcode=b.FULLY_CONNECTED, inputs=[y4, const((20, 480)), const((20,), np.int32)], outputs=[y5]),
    ]
    last = y5
    for name in extra_ops:
        out = act((1, 20))
        custom = None if hasattr(b, name) else name
        ops.append(me.Operator(opcode=getattr(b, name) if custom is None else b.CUSTOM, custom_code=custom,
                               inputs=[last], outputs=[out]))
        last = out
    m = me.Model()
    m.add_subgraph(operators=ops, inputs=[x], outputs=[last])
    return bytes(m.build())


def test_tflite_layers_match_torch_twin():
    data = tflite_model()
    layers = tflite_layers(data)
    twin = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, 2, 1, groups=8),
                         nn.ConvTranspose2d(8, 4, 2, 2, bias=False))
    x = torch.rand(1, 3, 10, 12)
    fc_macs = 480 * 20
    assert sum(l["macs"] for l in layers) == flop_counter_macs(twin, x) + fc_macs
    assert [l["kind"] for l in layers] == ["conv", "depthwise_conv", "conv", "elementwise", "fully_connected"]
    assert count_tflite(data)["macs"] == sum(l["macs"] for l in layers)
    conv = layers[0]
    assert conv["params"] == 8 * 27 + 8 and conv["weight_bytes"] == 8 * 27 + 8 * 4  # int8 weights, int32 bias
    assert conv["activation_bytes"] == 10 * 12 * 3 + 10 * 12 * 8
    assert layers[3]["elements"] == 10 * 12 * 4


def test_not_a_tflite_file_is_rejected():
    from tinyprune.measure.graph import read_graph

    with pytest.raises(UnsupportedModel, match="not a TFLite"):
        read_graph(b"\x00" * 64)
    data = tflite_model()
    with pytest.raises(UnsupportedModel, match="corrupt or truncated"):
        read_graph(data[: len(data) // 3])


def test_ops_the_target_lacks_are_listed():
    from tinyprune import targets
    from tinyprune.errors import UnsupportedOp
    from tinyprune.measure.core import check_supported, measure_tflite, unsupported_tflite_ops

    data = tflite_model(extra_ops=("GELU", "FlexErf", "RELU"))
    t = targets.load("cortex-m4")
    assert unsupported_tflite_ops(data, t) == ["FlexErf", "GELU"]
    assert unsupported_tflite_ops(tflite_model(), t) == []
    r = measure_tflite(data, t, timing=False)  # no arena bisection is attempted: TFLM cannot run it
    assert r["unsupported_ops"] == ["FlexErf", "GELU"] and r["totals"]["arena_bytes"] is None
    assert "TFLM cannot run FlexErf, GELU" in r["totals"]["ram_source"]
    with pytest.raises(UnsupportedOp, match="cortex-m4.*FlexErf, GELU"):
        check_supported(r)
