"""Task kinds beyond classification, through the CLI with the real converter and TFLM: an
anomaly-detection autoencoder, a regression head and a Conv1d signal classifier."""

import json

import numpy as np
import pytest
import torch

from tinyprune.cli import main
from tinyprune.config import FinetuneConfig
from tinyprune.testing import MODELS
from tinyprune.train import fit


@pytest.fixture(scope="module")
def digit_tasks(digits):
    """The digits as the three tasks: flattened with digit 9 as the anomaly, the ink centroid
    (row, column) as a regression target, and 8 rows of 8 as an 8-channel 1-D signal."""
    img = digits.x_train[:, 0]
    mass = img.sum((1, 2)) + 1e-6
    rows = (img.sum(2) * np.arange(8)).sum(1) / mass
    cols = (img.sum(1) * np.arange(8)).sum(1) / mass
    return {"flat": img.reshape(len(img), 64), "anomaly": (digits.y_train == 9).astype(np.int64),
            "centroid": np.stack([rows, cols], 1).astype(np.float32), "signal": img, "y": digits.y_train,
            "images": digits.x_train}


def _trained(name, x, y, epochs=15):
    torch.manual_seed(0)
    return fit(MODELS[name](), x, y, FinetuneConfig(epochs=epochs, lr=3e-3), seed=0).eval()


def _compress(src, data, out, capsys, *extra):
    code = main(["compress", str(src), "--data", str(data), "--out", str(out), "--sparsity", "0.3",
                 "--finetune-epochs", "2", "--json", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    from tinyprune.report.schema import validate

    validate(report)
    return report, {s["name"]: s for s in report["stages"]}


@pytest.mark.slow
def test_an_autoencoder_exported_as_pt2_is_scored_by_roc_auc_in_tflm(tmp_path, digit_tasks, capsys):
    normal = digit_tasks["anomaly"] == 0
    model = _trained("autoencoder", digit_tasks["flat"][normal], digit_tasks["flat"][normal])
    batch = torch.export.Dim("batch", min=1)
    src = tmp_path / "ae.pt2"
    torch.export.save(torch.export.export(model, (torch.rand(2, 64),), dynamic_shapes=({0: batch},)), src)
    data = tmp_path / "ad.npz"
    np.savez(data, x=digit_tasks["flat"], anomaly=digit_tasks["anomaly"])
    report, stages = _compress(src, data, tmp_path / "out", capsys, "--criterion", "flow")
    assert report["data"]["task"] == {"kind": "reconstruct", "metric": "auc", "anomaly_labels": True}
    original, tuned, int8 = stages["original"], stages["finetuned"], stages["int8"]
    assert original["accuracy"] == original["quality"]["auc"] > 0.8  # a trained autoencoder finds the 9s
    assert int8["quality"]["mse"] < int8["quality"]["mse_anomalous"]  # anomalies reconstruct worse on the device
    assert abs(int8["accuracy"] - tuned["accuracy"]) < 0.02  # int8 AUC follows the float model
    assert int8["details"]["tflm"]["agreement_with_litert"] >= 0.99
    md = (tmp_path / "out" / "report.md").read_text()
    assert "ROC AUC" in md and "Task reconstruct: mse" in md


@pytest.mark.slow
def test_a_state_dict_autoencoder_without_labels_and_its_mse_budget(tmp_path, digit_tasks, capsys):
    model = _trained("autoencoder", digit_tasks["flat"], digit_tasks["flat"])
    src = tmp_path / "ae.pt"
    torch.save(model.state_dict(), src)
    data = tmp_path / "x.npz"
    np.savez(data, x=digit_tasks["flat"])
    report, stages = _compress(src, data, tmp_path / "out", capsys, "--arch", "tinyprune.testing.models:autoencoder",
                               "--no-deepcompress")
    assert report["data"]["task"]["metric"] == "explained_variance"
    mse = stages["int8"]["quality"]["mse"]
    assert stages["int8"]["accuracy"] > 0.5 and mse < digit_tasks["flat"].var()
    # `check` gates the deployed autoencoder on its reconstruction error in TFLM
    for limit, expected in ((mse * 1.05, 0), (mse * 0.5, 1)):
        (tmp_path / "tinyprune.toml").write_text(
            f'[[model]]\npath = "out/model_int8.tflite"\nmax_mse = {limit}\ndata = "x.npz"\n')
        assert main(["check", "--budget", str(tmp_path / "tinyprune.toml")]) == expected
        capsys.readouterr()
    (tmp_path / "tinyprune.toml").write_text('[[model]]\npath = "out/model_int8.tflite"\nmin_auc = 0.9\ndata = "x.npz"\n')
    assert main(["check", "--budget", str(tmp_path / "tinyprune.toml")]) == 2  # no anomaly labels: no AUC
    assert "min_auc does not apply" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["reconstruct", "regress"])
def test_mi_measures_information_about_the_task_target_without_classes(tmp_path, digit_tasks, capsys, kind):
    # reconstruct: which k-means cluster of inputs a sample is in; regress: the target's quantile bin
    if kind == "reconstruct":
        model, x, y = _trained("autoencoder", digit_tasks["flat"], digit_tasks["flat"]), digit_tasks["flat"], None
    else:
        model, x, y = _trained("regressor", digit_tasks["images"], digit_tasks["centroid"]), digit_tasks["images"], \
            digit_tasks["centroid"]
    torch.save(model, tmp_path / "m.pt")
    np.savez(tmp_path / "d.npz", x=x, **({} if y is None else {"y": y}))
    report, stages = _compress(tmp_path / "m.pt", tmp_path / "d.npz", tmp_path / "out", capsys, "--criterion", "mi",
                               "--no-deepcompress", "--finetune-epochs", "1", "--max-accuracy-drop", "100")
    assert report["data"]["task"]["kind"] == kind and stages["pruned"]["details"]["criterion"] == "mi"
    measured = [l for l in report["layers"] if "mi_per_channel" in l]
    assert measured and any(l["removed_channels"] for l in measured)
    assert sum(l["mi_kept"] for l in measured) > 0
    assert stages["pruned"]["macs"] < stages["original"]["macs"]


@pytest.mark.slow
def test_a_regression_head_keeps_its_r2_in_int8(tmp_path, digit_tasks, capsys):
    model = _trained("regressor", digit_tasks["images"], digit_tasks["centroid"])
    src = tmp_path / "reg.pt"
    torch.save(model, src)
    data = tmp_path / "reg.npz"
    np.savez(data, x=digit_tasks["images"], y=digit_tasks["centroid"])
    report, stages = _compress(src, data, tmp_path / "out", capsys, "--criterion", "taylor")
    assert report["data"]["task"]["kind"] == "regress"
    assert stages["original"]["accuracy"] > 0.8  # R²
    assert stages["int8"]["accuracy"] > stages["finetuned"]["accuracy"] - 0.02
    assert set(stages["int8"]["quality"]) == {"r2", "mse", "mae"}
    # the budget counts points of R²: 30 % fewer MACs cost about one
    assert report["deployed"]["accuracy_drop_points"] < 3


@pytest.mark.slow
def test_a_conv1d_signal_classifier_runs_in_tflm_as_in_pytorch(tmp_path, digit_tasks, capsys):
    # onnx2tf takes [N, C, L] in as [N, L, C]: fed the other way, int8 fell to chance (14 %)
    model = _trained("conv1d_net", digit_tasks["signal"], digit_tasks["y"], epochs=6)
    src = tmp_path / "c1.pt"
    torch.save(model, src)
    data = tmp_path / "sig.npz"
    np.savez(data, x=digit_tasks["signal"], y=digit_tasks["y"])
    report, stages = _compress(src, data, tmp_path / "out", capsys, "--no-deepcompress", "--runtime", "x-cube-ai 9.0",
                               "--clock-mhz", "120")
    assert report["data"]["layout"] == "ncl"
    # the latency is predicted for the engine asked for, at the clock asked for, and says so
    costs = stages["int8"]["details"]["measure"]["deployed"]
    assert (costs["runtime"], costs["clock_hz"]) == ("x-cube-ai 9.0", 120_000_000)
    assert "(x-cube-ai 9.0, cortex-m4)" in (tmp_path / "out" / "report.md").read_text()
    assert stages["finetuned"]["accuracy"] > 0.85
    assert stages["int8"]["accuracy"] >= stages["finetuned"]["accuracy"] - 0.02


def _bad(tmp_path, capsys, model, arrays, *extra):
    src = tmp_path / "m.pt"
    torch.save(MODELS[model]().eval(), src)
    np.savez(tmp_path / "d.npz", **arrays)
    code = main(["compress", str(src), "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    return code, err


@pytest.mark.parametrize("model, arrays, extra, message", [
    ("autoencoder", {"x": np.random.rand(40, 64), "anomaly": np.r_[np.zeros(38, np.int64), 2, 1]}, [],
     "anomaly labels must be 0 (normal) or 1 (anomaly), found [2]"),
    ("autoencoder", {"x": np.random.rand(40, 64)}, ["--task", "classify"],
     "--task classify needs integer class labels y; the data has no y"),
    ("digits_cnn", {"x": np.random.rand(40, 1, 8, 8)}, [],
     "--task reconstruct needs a model whose output is as large as its input"),
    ("regressor", {"x": np.random.rand(40, 1, 8, 8), "y": np.random.rand(40, 3)}, [],
     "regression targets and must be [N] or [N, 2]"),
    ("regressor", {"x": np.random.rand(40, 1, 8, 8), "y": np.array(["a"] * 40)}, [],
     "expected integer class labels or float regression targets"),
    ("digits_cnn", {"x": np.random.rand(40, 1, 8, 8), "y": np.arange(40) % 10, "anomaly": np.arange(40) % 2}, [],
     "anomaly labels belong to --task reconstruct"),
])
def test_task_data_that_does_not_fit_is_one_line_exit_2(tmp_path, capsys, model, arrays, extra, message):
    code, err = _bad(tmp_path, capsys, model, {k: np.asarray(v).astype(np.float32) if v.dtype == np.float64 else v
                                               for k, v in arrays.items()}, *extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
