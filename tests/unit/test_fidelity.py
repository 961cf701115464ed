"""int8 fidelity: the float rewrites before export, the per-layer comparison and its verdicts."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from tinyprune.errors import DataError
from tinyprune.export import verify
from tinyprune.export.rewrite import for_int8, unfolded_batchnorms
from tinyprune.testing.models import MODELS, SAMPLE_SHAPES


def _randomize_bn(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return model.eval()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_batchnorm_rewrite_is_exact_and_only_touches_unfolded_batchnorms(name):
    torch.manual_seed(0)
    model = _randomize_bn(MODELS[name]())
    x = torch.randn(8, *SAMPLE_SHAPES[name])
    rewritten, names = for_int8(model, x[:1])
    # a BN right after a conv (used by nothing else) is folded by the exporter; only the
    # concat net's BN on the concatenation (fuse.0) follows no conv
    assert names == (["fuse.0"] if name == "concat_net" else [])
    # the autoencoder's BatchNorm1d follow Linears: unfolded, but a 1x1 conv needs a length axis
    unfolded = ["1", "4", "7", "10", "13"] if name == "autoencoder" else names
    assert unfolded_batchnorms(model, x[:1]) == unfolded
    with torch.no_grad():
        assert torch.allclose(rewritten(x), model(x), atol=1e-5)
    if names:
        assert isinstance(rewritten.get_submodule("fuse.0"), nn.Conv2d)
        assert rewritten.get_submodule("fuse.0").groups == 16 + 2 * 12  # one filter per channel
        assert isinstance(model.get_submodule("fuse.0"), nn.BatchNorm2d)  # the input model is left alone


def test_batchnorm_after_a_shared_conv_output_is_rewritten():
    class Fork(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            y = self.conv(x)
            return self.head((self.bn(y) + y).mean((2, 3)))

    model = _randomize_bn(Fork())
    x = torch.randn(3, 1, 8, 8)
    rewritten, names = for_int8(model, x[:1])
    assert names == ["bn"]  # the conv's output is also used unnormalized: the BN cannot fold into it
    with torch.no_grad():
        assert torch.allclose(rewritten(x), model(x), atol=1e-5)


def test_collapsed_means_every_sample_gets_the_same_output():
    assert verify.collapsed(np.zeros((5, 10), np.int8))
    varied = np.zeros((5, 10), np.int8)
    varied[3, 2] = 1
    assert not verify.collapsed(varied)
    assert not verify.collapsed(np.zeros((1, 10), np.int8))  # one sample proves nothing


def test_reference_disagreement_is_an_export_error():
    from tinyprune.errors import ExportError

    verify.check_agreement({"samples": 100, "agreement_with_litert": 0.99})
    verify.check_agreement({"samples": 100, "litert": "not cross-checked"})  # DECODE models
    with pytest.raises(ExportError, match="disagree on 2.0% of the predictions for 100"):
        verify.check_agreement({"samples": 100, "agreement_with_litert": 0.98})


@pytest.fixture
def onnx_model(tmp_path):
    from tinyprune.export.onnx import export_onnx

    x = np.zeros((1, 1, 8, 8), np.float32)
    export_onnx(MODELS["cnn_bn"]().eval(), x, tmp_path / "m.onnx")
    return tmp_path / "m.onnx"


@pytest.mark.parametrize("calib, message", [
    (np.full((4, 1, 8, 8), np.nan, np.float32), "NaN or inf"),
    (np.concatenate([np.zeros((3, 1, 8, 8)), np.full((1, 1, 8, 8), np.inf)]).astype(np.float32), "NaN or inf"),
    (np.zeros((4, 1, 7, 7), np.float32), r"shape \(1, 7, 7\), the model takes \(1, 8, 8\)"),
    (np.zeros((4, 64), np.float32), r"shape \(64,\)"),
    (np.zeros((0, 1, 8, 8), np.float32), "samples along its first axis"),
])
def test_bad_calibration_data_is_refused_before_conversion(onnx_model, tmp_path, calib, message):
    from tinyprune.export.tflite import to_int8_tflite

    with pytest.raises(DataError, match=message):
        to_int8_tflite(onnx_model, calib, tmp_path / "work")
    assert not (tmp_path / "work").exists()


class _Dense(nn.Module):
    """A DenseNet-style block: a stem conv whose small outputs share a concatenation (and so one
    int8 scale) with a unit's much larger ones; every use of the concatenation is a BatchNorm or
    a convolution."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(4)
        self.unit = nn.Conv2d(4, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.mix = nn.Conv2d(8, 3, 1)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.unit(torch.relu(self.bn(x))) * 1.0], dim=1)
        return self.head(self.mix(x).mean((2, 3)) + torch.relu(self.norm(x)).mean((2, 3))[:, :3])


def test_concat_equalization_is_exact_and_scales_only_what_every_use_can_absorb():
    from tinyprune.export.rewrite import MAX_CHANNEL_SCALE, equalize_concats

    torch.manual_seed(0)
    model = _randomize_bn(_Dense())
    with torch.no_grad():
        model.stem.weight.mul_(0.01)  # the stem's outputs span a hundredth of the unit's
    x = torch.rand(32, 1, 8, 8)
    out, done = equalize_concats(model, x)
    # the unit's output is multiplied by 1.0 before the concat (not a conv output): left alone;
    # the stem's channels are used by a BN, the concat -> BN and the concat -> conv (mix)
    assert [d["layer"] for d in done] == ["stem"]
    assert 1.0 < done[0]["scale_max"] <= MAX_CHANNEL_SCALE
    with torch.no_grad():
        assert torch.allclose(out(x), model(x), rtol=1e-4, atol=1e-5)
        assert out.stem.weight.abs().max() > model.stem.weight.abs().max() * 2  # scaled up
        assert torch.equal(out.unit.weight, model.unit.weight)


def test_concat_equalization_leaves_a_producer_with_a_use_that_cannot_absorb_a_scale():
    from tinyprune.export.rewrite import equalize_concats

    class Leaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            a = self.a(x)
            return torch.cat([a, self.b(x)], 1).mean((2, 3)) + torch.sigmoid(a).mean((1, 2, 3))[:, None]

    torch.manual_seed(0)
    model = Leaky().eval()
    with torch.no_grad():
        model.a.weight.mul_(0.01)
    out, done = equalize_concats(model, torch.rand(8, 1, 8, 8))
    # a's output also goes through a sigmoid, which a scale does not commute with; the mean after
    # the concat cannot take a scale back either
    assert done == [] and out is model


def test_concat_equalization_reaches_a_conv_through_relu_and_pooling():
    from tinyprune.export.rewrite import equalize_concats

    class Transition(nn.Module):
        def __init__(self):
            super().__init__()
            self.trans = nn.Conv2d(1, 3, 1)
            self.unit = nn.Conv2d(3, 3, 3, padding=1)
            self.bn = nn.BatchNorm2d(6)
            self.head = nn.Linear(6, 2)

        def forward(self, x):
            t = nn.functional.avg_pool2d(torch.relu(self.trans(x)), 2)
            return self.head(self.bn(torch.cat([t, self.unit(t) * 50.0], 1)).mean((2, 3)))

    torch.manual_seed(0)
    model = _randomize_bn(Transition())
    x = torch.rand(16, 1, 8, 8)
    out, done = equalize_concats(model, x)
    # the unit's output is scaled by a mul before the concat (not a conv output): left alone;
    # t is the transition conv's output through ReLU and pooling, used by the unit conv (which
    # takes the scale back in its input weights) and the concat -> BN
    assert [d["layer"] for d in done] == ["trans"] and done[0]["scale_max"] > 2
    with torch.no_grad():
        assert torch.allclose(out(x), model(x), rtol=1e-4, atol=1e-5)
    assert equalize_concats(model, x, absorb_in_convs=False)[1] == []  # the unit conv would need new weights


def test_an_interrupt_during_conversion_is_not_swallowed(onnx_model, tmp_path, monkeypatch):
    """onnx2tf catches KeyboardInterrupt itself; the export must still end with it."""
    import os
    import signal

    import onnx2tf

    from tinyprune.export.tflite import to_int8_tflite

    def swallowing_convert(**kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except BaseException:  # what onnx2tf does with it
            pass
        return None

    monkeypatch.setattr(onnx2tf, "convert", swallowing_convert)
    # what SIGINT did before (a job started in the background by a non-interactive shell ignores it)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        to_int8_tflite(onnx_model, np.zeros((4, 1, 8, 8), np.float32), tmp_path / "work")
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


def test_rewrites_leave_batchnorms_they_cannot_map_exactly():
    """A BN without running statistics normalises by the batch; one without affine parameters
    cannot take a scale back. Neither is rewritten, and nothing crashes."""
    from tinyprune.export.rewrite import equalize_concats, for_int8

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(1, 2, 3, padding=1)
            self.plain = nn.BatchNorm2d(4, affine=False)
            self.batchwise = nn.BatchNorm2d(4, track_running_stats=False)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            c = torch.cat([self.a(x) * 0.01, self.b(x)], 1)
            c2 = torch.cat([self.a(x), self.b(x)], 1)
            return self.head(torch.cat([self.plain(c2), self.batchwise(c)], 1).mean((2, 3)))

    torch.manual_seed(0)
    model = Odd().eval()
    x = torch.rand(8, 1, 8, 8)
    out, done = equalize_concats(model, x)
    assert done == [] and out is model  # a's output reaches the affine-free BN: no scale can go back
    rewritten, names = for_int8(model, x[:1])
    assert "batchwise" not in names
    with torch.no_grad():
        assert torch.allclose(rewritten(x), model(x), atol=1e-5)


def test_a_fit_budget_that_cannot_be_measured_is_missed():
    from tinyprune.fit import _misses

    misses = _misses({"flash_bytes": 100, "latency_ms": None}, {"flash_bytes": 200, "latency_ms": 5.0})
    assert list(misses) == ["latency_ms"] and misses["latency_ms"]["value"] is None


def _graph_with_a_decode() -> bytes:
    """DECODE -> CONV_2D -> RESHAPE -> FULLY_CONNECTED, built in code: the conv reads a decoded weight."""
    from tflite_micro.tensorflow.lite.micro.compression import model_editor as me
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as s

    t, b = s.TensorType, s.BuiltinOperator

    def const(name, shape, dtype=np.int8):
        return me.Tensor(shape=shape, dtype=t.INT8 if dtype == np.int8 else t.INT32, data=np.ones(shape, dtype),
                         name=name)

    def act(name, shape):
        return me.Tensor(shape=shape, dtype=t.INT8, name=name)

    x, decoded, conv_out = act("x", (1, 4, 4, 1)), act("w_decoded", (2, 3, 3, 1)), act("conv_out", (1, 4, 4, 2))
    flat, fc_out = act("flat", (1, 32)), act("fc_out", (1, 3))
    ops = [
        me.Operator(opcode=b.CUSTOM, custom_code="TFLM_DECODE", inputs=[const("w_indices", (9,)), const("w_lut", (16,))],
                    outputs=[decoded]),
        me.Operator(opcode=b.CONV_2D, inputs=[x, decoded, const("conv_bias", (2,), np.int32)], outputs=[conv_out]),
        me.Operator(opcode=b.RESHAPE, inputs=[conv_out, const("shape", (2,), np.int32)], outputs=[flat]),
        me.Operator(opcode=b.FULLY_CONNECTED, inputs=[flat, const("fc_w", (3, 32)), const("fc_b", (3,), np.int32)],
                    outputs=[fc_out]),
    ]
    m = me.Model()
    m.add_subgraph(operators=ops, inputs=[x], outputs=[fc_out])
    return bytes(m.build())


def test_ops_and_weights_take_the_pytorch_layer_the_fidelity_table_paired_with_their_output():
    from tinyprune.export.fidelity import name_layers, torch_modules
    from tinyprune.measure.graph import read_graph
    from tinyprune.measure.macs import tflite_layers

    model = _graph_with_a_decode()
    graph = read_graph(model)
    fidelity = [{"op": "CONV_2D", "tensor": "conv_out", "layer": "features.0 (conv2d)"},
                {"op": "FULLY_CONNECTED", "tensor": "fc_out", "layer": "head (linear)"}]
    ops, weights = torch_modules(model, fidelity)
    # the DECODE op restores the conv's weight: it belongs to the conv's layer; the reshape has no
    # float tensor of its own in this table, so it gets no name rather than a guessed one
    assert ops == {0: "features.0 (conv2d)", 1: "features.0 (conv2d)", 3: "head (linear)"}
    assert {graph.tensors[i].name: layer for i, layer in weights.items()} == {
        "w_indices": "features.0 (conv2d)", "w_lut": "features.0 (conv2d)", "conv_bias": "features.0 (conv2d)",
        "fc_w": "head (linear)", "fc_b": "head (linear)"}
    rows = name_layers({"layers": tflite_layers(model)}, model, fidelity)["layers"]
    assert [(r["op"], r["name"], r["module"]) for r in rows] == [
        ("TFLM_DECODE", "w_decoded", "features.0 (conv2d)"), ("CONV_2D", "conv_out", "features.0 (conv2d)"),
        ("RESHAPE", "flat", None), ("FULLY_CONNECTED", "fc_out", "head (linear)")]
