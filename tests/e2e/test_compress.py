"""The whole pipeline through the CLI: real onnx2tf, LiteRT and TFLM, one run per model format."""

import json

import numpy as np
import pytest
import torch

from tinyprune.api import ARTIFACTS
from tinyprune.cli import main
from tinyprune.export.micro import tflm_outputs
from tinyprune.export.tflite import io_details, quantize, to_device_layout

X = torch.rand(1, 1, 8, 8)


def _save(model, fmt, path):
    if fmt == "pickled-module":
        torch.save(model, path)
    elif fmt == "state-dict":
        torch.save(model.state_dict(), path)
    elif fmt == "torchscript":
        torch.jit.save(torch.jit.trace(model, X), path)
    else:
        torch.export.save(torch.export.export(model, (X,)), path)


@pytest.mark.slow
@pytest.mark.parametrize("name, fmt, extra", [
    ("cnn_bn", "pickled-module", []),
    ("dw_residual", "exported-program", ["--criterion", "mi"]),
    ("concat_net", "torchscript", ["--criterion", "mi"]),
    ("mlp", "state-dict", ["--arch", "tinyprune.testing.models:mlp"]),
])
def test_compress_end_to_end(tmp_path, trained, digits_npz, capsys, name, fmt, extra):
    model = trained(name).eval()
    src = tmp_path / ("model.pt2" if fmt == "exported-program" else "model.pt")
    _save(model, fmt, src)
    out = tmp_path / "out"
    code = main(["compress", str(src), "--data", str(digits_npz), "--out", str(out), "--sparsity", "0.5",
                 "--finetune-epochs", "2", "--json", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert sorted(p.name for p in out.iterdir()) == sorted(ARTIFACTS)
    assert report == json.loads((out / "report.json").read_text())
    assert report["model"]["format"] == fmt and report["data"]["layout"] == "nhwc"
    assert report["target"]["name"] == "cortex-m4" and report["target"]["flash_bytes"] > 0
    stages = {s["name"]: s for s in report["stages"]}
    assert list(stages) == ["original", "pruned", "finetuned", "int8"]
    orig, tuned, int8 = stages["original"], stages["finetuned"], stages["int8"]
    # MACs removed as asked, counted on the PyTorch model and again on the TFLite graph
    assert tuned["macs"] <= 0.5 * orig["macs"] * 1.02
    assert abs(int8["macs"] - tuned["macs"]) <= 0.01 * tuned["macs"]
    assert int8["flash_bytes"] == (out / "model_int8.tflite").stat().st_size
    assert 0 < int8["arena_bytes"] < 256 * 1024
    assert int8["accuracy"] >= tuned["accuracy"] - 0.03
    assert int8["details"]["tflm"]["agreement_with_litert"] >= 0.97
    assert int8["details"]["onnx_max_abs_diff"] < 1e-3
    cc = (out / "model_data.cc").read_text()
    assert "alignas(16)" in cc and f"g_model_data_len = {int8['flash_bytes']};" in cc
    for layer in report["layers"]:  # what was removed, and how much information went with it
        assert len(layer["removed_channels"]) == layer["channels_before"] - layer["channels_after"]
        assert layer["mi_kept"] >= 0 and layer["mi_removed"] >= 0
    # the pruned model reloads without custom code
    reloaded = torch.export.load(out / "model_pruned.pt2").module()
    assert reloaded(torch.rand(1, 1, 8, 8)).shape == (1, 10)


@pytest.mark.slow
def test_measured_arena_is_the_smallest_that_runs(tmp_path, trained, digits_npz):
    model = trained("cnn_bn").eval()
    torch.save(model, tmp_path / "m.pt")
    out = tmp_path / "out"
    assert main(["compress", str(tmp_path / "m.pt"), "--data", str(digits_npz), "--out", str(out),
                 "--finetune-epochs", "0", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    arena = report["stages"][-1]["arena_bytes"]
    blob = (out / "model_int8.tflite").read_bytes()
    io = io_details(blob)
    x = quantize(to_device_layout(np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)),
                 io["input"]["scale"], io["input"]["zero_point"])
    assert tflm_outputs(blob, x, arena).shape == (2, 10)
    with pytest.raises(Exception, match="TFLM failed"):
        tflm_outputs(blob, x, arena - 16)
