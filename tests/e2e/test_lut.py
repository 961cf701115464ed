"""A weight-shared model through the real export: onnx2tf int8, TFLM LUT compression, TFLM runs."""

import json

import numpy as np
import pytest

from tinyprune.config import DataConfig
from tinyprune.data import prepare
from tinyprune.deepcompress.stage import DeepCompressConfig, run_deepcompress
from tinyprune.export.lut import lut_compress, verify_bit_exact
from tinyprune.export.onnx import export_onnx
from tinyprune.export.tflite import io_details, litert_interpreter, quantize, to_device_layout, to_int8_tflite

BITS = 4
HELD_OUT = 50


@pytest.mark.slow
def test_clustered_cnn_lut_compresses_and_runs_bit_exact_in_tflm(tmp_path, trained, digits):
    model = trained("cnn_bn").eval()
    splits = prepare(digits, model, DataConfig(), seed=0)
    # lut_ready keeps the pruned zero inside the 2**BITS codes, so every int8 output channel
    # (batch norm folded, per-channel scales) has at most 2**BITS distinct values.
    cfg = DeepCompressConfig(bits=f"conv={BITS},fc={BITS}", lut_ready=True, prune_epochs=1, centroid_epochs=1)
    clustered = run_deepcompress(model, splits.x_train, splits.y_train, splits.x_eval, splits.y_eval, cfg).model

    export_onnx(clustered, splits.x_train[:1], tmp_path / "model.onnx")
    int8 = to_int8_tflite(tmp_path / "model.onnx", splits.x_calib, tmp_path / "work")
    result = lut_compress(int8, BITS)

    assert result.flash_after < result.flash_before == len(int8)
    assert result.flash_after == len(result.model)
    ops = {op for t in result.compressed for op in t.ops}
    assert {"CONV_2D", "FULLY_CONNECTED"} <= ops
    assert all(t.reason for t in result.skipped)
    # Read the weights back from the int8 model itself: the bound holds per output channel.
    it = litert_interpreter(int8)
    for t in result.compressed:
        values = it.get_tensor(t.tensor)
        per_channel = [np.unique(c).size for c in np.moveaxis(values, t.channel_axis, 0)]
        assert max(per_channel) == t.distinct_max <= 1 << BITS
        assert t.bits <= BITS and t.bytes_after < t.bytes_before and t.flash_saved > 0
        # onnx2tf quantizes weights per channel; TFLM decodes tables along that axis only
        assert t.mode == "per_channel"
    json.dumps(result.to_dict())  # goes into report.json as is

    io = io_details(int8)
    x = quantize(to_device_layout(splits.x_eval[:HELD_OUT]), io["input"]["scale"], io["input"]["zero_point"])
    check, _ = verify_bit_exact(int8, result.model, x)
    assert check["bit_exact"], check
    assert check["samples"] == HELD_OUT
    # The DECODE outputs live in the arena: never smaller than the plain int8 model's.
    assert check["arena_after"] >= check["arena_before"] > 0


@pytest.mark.slow
def test_check_gates_accuracy_of_a_lut_model_in_tflm(tmp_path, trained, digits, monkeypatch, capsys):
    """LiteRT cannot load DECODE models; `check`'s accuracy budget runs them in TFLM instead."""
    from tinyprune.cli import main

    model = trained("cnn_bn").eval()
    splits = prepare(digits, model, DataConfig(), seed=0)
    cfg = DeepCompressConfig(bits=f"conv={BITS},fc={BITS}", lut_ready=True, prune_epochs=1, centroid_epochs=1)
    clustered = run_deepcompress(model, splits.x_train, splits.y_train, splits.x_eval, splits.y_eval, cfg).model
    export_onnx(clustered, splits.x_train[:1], tmp_path / "model.onnx")
    lut = lut_compress(to_int8_tflite(tmp_path / "model.onnx", splits.x_calib, tmp_path / "work"), BITS).model
    (tmp_path / "lut.tflite").write_bytes(lut)
    np.savez(tmp_path / "d.npz", x=splits.x_eval[:HELD_OUT], y=splits.y_eval[:HELD_OUT])
    (tmp_path / "tinyprune.toml").write_text(
        '[[model]]\npath = "lut.tflite"\nmin_accuracy = 0.5\ndata = "d.npz"\n'
        '[[model]]\nname = "strict"\npath = "lut.tflite"\nmin_accuracy = 1.0\ndata = "d.npz"\n')
    monkeypatch.chdir(tmp_path)
    code = main(["check", "--json"])
    out = json.loads(capsys.readouterr().out)
    accuracy = [o for o in out["results"] if o["metric"] == "min_accuracy"]
    assert len(accuracy) == 2 and all("TFLM on 50 samples" in o["detail"] for o in accuracy)
    assert "no LiteRT cross-check" in accuracy[0]["detail"]
    value = accuracy[0]["value"]
    assert 0.5 < value <= 1.0
    assert accuracy[0]["ok"] and accuracy[1]["ok"] == (value >= 1.0)
    assert code == (0 if value >= 1.0 else 1)
