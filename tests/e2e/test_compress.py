"""The whole pipeline through the CLI: real onnx2tf, LiteRT and TFLM, one run per model format."""

import json

import numpy as np
import pytest
import torch

from tinyprune.deepcompress.archive import read_archive
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
    ("cnn_bn", "pickled-module", ["--bits", "4"]),
    ("dw_residual", "exported-program", ["--criterion", "mi", "--no-deepcompress"]),
    ("concat_net", "torchscript", ["--criterion", "mspic", "--no-deepcompress"]),
    ("mlp", "state-dict", ["--arch", "tinyprune.testing.models:mlp", "--bits", "conv=8,fc=5"]),
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
    deep = "--no-deepcompress" not in extra
    plain = ["model_pruned.pt2", "model.onnx", "model_int8.tflite", "model_data.cc", "model_data.h",
             "report.json", "report.md", "report.html"]
    lut = ["model.tpz", "model_int8_lut.tflite", "model_lut_data.cc", "model_lut_data.h"]
    expected = sorted(plain + (lut if deep else []))
    # the stages declare what they write: the report lists exactly the files on disk
    assert sorted(p.name for p in out.iterdir()) == expected
    assert sorted(a.rsplit("/", 1)[-1] for a in report["artifacts"]) == expected
    assert report == json.loads((out / "report.json").read_text())
    from tinyprune.report.schema import validate

    validate(report)  # the documented JSON Schema (tinyprune/report/schema.json)
    assert "<img" in (out / "report.html").read_text()
    assert report["model"]["format"] == fmt and report["data"]["layout"] == "nhwc"
    assert report["target"]["name"] == "cortex-m4" and report["target"]["flash_bytes"] > 0
    stages = {s["name"]: s for s in report["stages"]}
    if deep:
        assert list(stages) == ["original", "pruned", "finetuned", "weight_pruned", "clustered", "huffman", "int8",
                                "int8_lut"]
        _check_deep_compression(report, stages, out, tmp_path)
    else:
        assert list(stages) == ["original", "pruned", "finetuned", "int8"]
    if "mspic" in extra:
        units = stages["pruned"]["details"]["skip_unit_stages"]
        assert units and units[0]["kinds"] == ["concat", "concat"]
    orig, tuned, int8 = stages["original"], stages["finetuned"], stages["int8"]
    # MACs removed as asked, counted on the PyTorch model and again on the TFLite graph
    assert tuned["macs"] <= 0.5 * orig["macs"] * 1.02
    assert abs(int8["macs"] - tuned["macs"]) <= 0.01 * tuned["macs"]
    assert int8["flash_bytes"] == (out / "model_int8.tflite").stat().st_size
    assert 0 < int8["arena_bytes"] < 256 * 1024
    exported = stages["huffman"] if deep else tuned  # the float model the int8 one was made from
    assert int8["accuracy"] >= exported["accuracy"] - 0.03
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


def _check_deep_compression(report, stages, out, tmp_path):
    lut, int8 = stages["int8_lut"], stages["int8"]
    check = lut["details"]["tflm_check"]
    assert check["bit_exact"] and check["samples"] == report["data"]["eval"]
    assert lut["flash_bytes"] == (out / "model_int8_lut.tflite").stat().st_size
    compressed = [t for t in lut["details"]["lut"]["tensors"] if t["compressed"]]
    if report["config"]["deepcompress"]["bits"] == "4":
        assert compressed and lut["flash_bytes"] < int8["flash_bytes"]
    for t in lut["details"]["lut"]["tensors"]:
        assert t["compressed"] or t["reason"]  # every tensor left as is says why
    ratios = report["compression"]["sizes"]["ratios"]
    assert 1 < ratios["P"] < ratios["P+Q"] < ratios["P+Q+H"]
    assert report["compression"]["archive_bytes"] == (out / "model.tpz").stat().st_size
    # `tinyprune unpack` rebuilds exactly the weights the int8 model was made from
    assert main(["unpack", str(out / "model.tpz"), "--out", str(tmp_path / "unpacked")]) == 0
    weights = np.load(tmp_path / "unpacked" / "weights.npz")
    assert set(weights.files) == set(read_archive(out / "model.tpz"))
    for name in weights.files:
        assert np.array_equal(weights[name], read_archive(out / "model.tpz")[name])
    bits = 4 if report["config"]["deepcompress"]["bits"] == "4" else 8
    for name in weights.files:
        if name.endswith("weight") and weights[name].ndim >= 2:
            assert len(np.unique(weights[name])) <= 2 ** bits


@pytest.mark.slow
def test_measured_arena_is_the_smallest_that_runs(tmp_path, trained, digits_npz):
    model = trained("cnn_bn").eval()
    torch.save(model, tmp_path / "m.pt")
    out = tmp_path / "out"
    assert main(["compress", str(tmp_path / "m.pt"), "--data", str(digits_npz), "--out", str(out),
                 "--finetune-epochs", "0", "--no-deepcompress", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    arena = report["stages"][-1]["arena_bytes"]
    blob = (out / "model_int8.tflite").read_bytes()
    io = io_details(blob)
    x = quantize(to_device_layout(np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)),
                 io["input"]["scale"], io["input"]["zero_point"])
    assert tflm_outputs(blob, x, arena).shape == (2, 10)
    with pytest.raises(Exception, match="TFLM failed"):
        tflm_outputs(blob, x, arena - 16)


@pytest.mark.slow
@pytest.mark.parametrize("criterion, options", [
    ("vib", ["--vib-epochs", "2", "--vib-gamma", "0.01"]),
    ("mipp", []),
    ("flow", []),
    ("l1", []),
])
def test_every_criterion_through_compress(tmp_path, trained, digits_npz, capsys, criterion, options):
    """Each criterion end to end (TFLM included), at equal MACs: within 1 % above the target."""
    torch.save(trained("cnn_bn").eval(), tmp_path / "m.pt")
    code = main(["compress", str(tmp_path / "m.pt"), "--data", str(digits_npz), "--out", str(tmp_path / "out"),
                 "--criterion", criterion, *options, "--sparsity", "0.4", "--finetune-epochs", "1",
                 "--no-deepcompress", "--seed", "3", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    pruned = next(s for s in report["stages"] if s["name"] == "pruned")
    assert report["config"]["prune"]["criterion"] == criterion and report["config"]["seed"] == 3
    assert pruned["details"]["criterion"] == criterion
    removed = pruned["details"]["macs_removed"]
    if criterion == "vib":
        assert removed >= 0.4  # VIB may remove more than asked: the target is a floor
        assert pruned["details"]["prepared"]["config"]["seed"] == 3  # --seed reached VIB
        assert report["config"]["prune"]["options"] == {"gamma": 0.01, "epochs": 2, "threshold": 0.0, "lr": 1e-3}
    elif criterion == "mipp":  # MIPP meets the target in its own step (its cost model, its fill)
        assert 0.4 <= removed <= 0.45, removed
        assert pruned["details"]["mipp"]["layers"]
    else:  # the MAC loop lands at the target, overshooting by at most one channel's MACs
        original = next(s for s in report["stages"] if s["name"] == "original")
        # cnn_bn's costliest channel: one of the first conv's 16 (8x8 output, 3x3 kernels), which
        # also feeds every one of the second conv's 32 filters
        one_channel = (9 * 64 + 32 * 9 * 64) / original["macs"]
        assert 0.4 <= removed <= 0.4 + one_channel + 1e-9, (removed, one_channel)
    int8 = report["stages"][-1]
    assert int8["name"] == "int8" and int8["details"]["tflm"]["samples"] > 0
