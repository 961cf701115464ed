"""Information plane: bounds of the recorded values, plane.json shape, the PNG, both estimators."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from tinyprune.config import DataConfig
from tinyprune.data import prepare
from tinyprune.errors import ConfigError
from tinyprune.information.plane import (
    PlaneRecorder,
    default_layers,
    plot_plane,
    record_during_finetune,
    write_plane,
)
from tinyprune.testing import MODELS

TOL = 1e-9  # float rounding of entropies of the same counts


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def splits(digits):
    return prepare(digits, MODELS["mlp"]().eval(), DataConfig(), seed=0)


def _check_bounds(data: dict) -> None:
    n = data["samples"]
    assert data["ln_samples"] == pytest.approx(math.log(n))
    assert data["input_entropy_binned"] <= data["ln_samples"] + TOL
    for m, vals in data["methods"].items():
        for layer in data["layers"]:
            ixt, ity = vals["ixt"][layer["name"]], vals["ity"][layer["name"]]
            assert len(ixt) == len(ity) == len(data["epochs"])
            for a, b in zip(ixt, ity):
                assert -TOL <= b <= data["label_entropy"] + TOL, (m, layer, b)
                assert a <= data["ln_samples"] + TOL, (m, layer, a)
                if m == "binning":
                    assert -TOL <= a <= data["input_entropy_binned"] + TOL


def test_default_layers_follow_the_activation_modules():
    assert default_layers(MODELS["mlp"]()) == ["2", "4", "5"]  # ReLU, ReLU, logits
    assert default_layers(MODELS["cnn_bn"]()) == ["2", "5", "8"]  # conv -> BN -> ReLU, logits
    # shared activation module / functional activation: the conv/linear output itself
    assert default_layers(MODELS["dw_residual"]())[-1] == "head"


def test_record_during_finetune_both_methods_bounded_and_json_shape(splits, tmp_path):
    torch.manual_seed(0)
    model = MODELS["mlp"]()
    x, y = splits.x_train, splits.y_train
    model, data = record_during_finetune(model, x, y, x[:300], y[:300], epochs=2, methods=("binning", "kde"),
                                         lr=3e-3, seed=0)
    assert data["kind"] == "information_plane" and data["units"] == "nats"
    assert data["epochs"] == [0, 1, 2] and len(data["accuracy"]) == 3
    assert data["accuracy"][-1] > data["accuracy"][0]  # it did train
    assert [l["name"] for l in data["layers"]] == ["2", "4", "5"]
    assert [l["dim"] for l in data["layers"]] == [64, 32, 10]
    assert set(data["methods"]) == {"binning", "kde"}
    assert data["methods"]["binning"]["bins"] == 30 and data["methods"]["kde"]["noise_var"] == 0.1
    assert data["label_entropy"] == pytest.approx(
        -sum(p * math.log(p) for p in np.bincount(y[:300]) / 300 if p > 0))
    _check_bounds(data)
    # json round trip and the figure
    paths = write_plane(data, tmp_path)
    back = json.loads((tmp_path / "plane.json").read_text())
    assert back == json.loads(json.dumps(data))
    png = (tmp_path / "plane.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert paths["png"].endswith("plane.png")


def test_binning_ixt_is_h_of_binned_t_when_inputs_are_distinct(splits):
    """T is a function of X: with all binned inputs distinct, I(X;T) = H(T_b) (Shwartz-Ziv &
    Tishby); a 1-unit bottleneck with few bins must then be far below ln N."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 1), nn.Tanh(), nn.Linear(1, 10))
    rec = PlaneRecorder(model, splits.x_train[:400], splits.y_train[:400], method="binning", bins=4)
    assert rec.layers == ["2", "3"]
    rec.record(0)
    d = rec.to_dict()
    assert d["input_entropy_binned"] == pytest.approx(math.log(400))  # all distinct
    ixt = d["methods"]["binning"]["ixt"]["2"][0]
    assert ixt <= math.log(4) + TOL  # one coordinate, four bins: H(T_b) <= ln 4
    from tinyprune.information import binning_entropy

    acts = torch.tanh(model[1](torch.from_numpy(splits.x_train[:400]).flatten(1))).detach()
    assert ixt == pytest.approx(binning_entropy(acts, bins=4, value_range=(float(acts.min()), float(acts.max()))))
    _check_bounds(d)


def test_kde_of_a_constant_layer_is_zero_and_bounds_hold_for_an_informative_one(splits):
    torch.manual_seed(0)
    const = nn.Sequential(nn.Flatten(), nn.Linear(64, 3), nn.ReLU(), nn.Linear(3, 10))
    with torch.no_grad():
        const[1].weight.zero_()
        const[1].bias.fill_(0.5)
    rec = PlaneRecorder(const, splits.x_train[:200], splits.y_train[:200], method=("kde", "binning"))
    rec.record(0)
    d = rec.to_dict()
    for m in ("kde", "binning"):
        assert d["methods"][m]["ixt"]["2"][0] == pytest.approx(0.0, abs=1e-9)
        assert d["methods"][m]["ity"]["2"][0] == pytest.approx(0.0, abs=1e-9)
    # median-heuristic noise: scale-free, finite, still within the bounds
    rec2 = PlaneRecorder(MODELS["cnn_bn"]().eval(), splits.x_train[:200], splits.y_train[:200], method="kde",
                         noise_var="median")
    rec2.record(0)
    d2 = rec2.to_dict()
    _check_bounds(d2)
    assert all(v[0] > 0 for v in d2["methods"]["kde"]["noise_var_used"].values())


def test_plot_two_panels_and_named_layers(splits, tmp_path):
    torch.manual_seed(0)
    model = MODELS["cnn_bn"]().eval()
    rec = PlaneRecorder(model, splits.x_train[:100], splits.y_train[:100], layers=["0", "8"], method="binning",
                        summary="mean")
    rec.record(0)
    rec.record(1)
    d = rec.to_dict()
    assert [l["dim"] for l in d["layers"]] == [16, 10]  # per-channel spatial means
    plot_plane([("original", d), ("pruned", d)], tmp_path / "two.png", title="t")
    assert (tmp_path / "two.png").stat().st_size > 5000


def test_bad_options_are_config_errors(splits):
    model = MODELS["mlp"]()
    x, y = splits.x_train[:20], splits.y_train[:20]
    for kwargs in ({"method": "histogram"}, {"bins": 1}, {"noise_var": -1.0}, {"binning_range": "auto"},
                   {"summary": "max"}, {"layers": ["nope"]}):
        with pytest.raises(ConfigError):
            rec = PlaneRecorder(model, x, y, **kwargs)
            rec.record(0)
    with pytest.raises(ConfigError):
        record_during_finetune(model, x, y, x, y, epochs=-1)


def test_plane_command_writes_json_and_png(tmp_path, digits_npz, trained):
    from tinyprune import api

    from tinyprune.config import CompressConfig

    path = tmp_path / "mlp.pt"
    torch.save(trained("mlp"), path)
    result = api.plane(api.ModelSource(path), CompressConfig(), digits_npz, tmp_path / "out", 1,
                       methods=("binning",), bins=10)
    assert (tmp_path / "out" / "plane.json").exists() and (tmp_path / "out" / "plane.png").exists()
    assert result["epochs"] == [0, 1]
    _check_bounds(json.loads((tmp_path / "out" / "plane.json").read_text()))


def test_plane_and_analyze_print_their_tables(tmp_path, digits_npz, trained, capsys):
    # the console summaries (not --json) of the two analysis commands
    from tinyprune.cli import main

    path = tmp_path / "mlp.pt"
    torch.save(trained("mlp"), path)
    assert main(["plane", str(path), "--data", str(digits_npz), "--out", str(tmp_path / "p"), "--epochs", "1",
                 "--method", "binning", "--bins", "10"]) == 0
    assert "plane.json and plane.png in" in capsys.readouterr().out
    assert main(["analyze", str(path), "--data", str(digits_npz), "--out", str(tmp_path / "a")]) == 0
    assert "mi.json and mi.png in" in capsys.readouterr().out


def test_analyze_marks_the_channels_the_criterion_removes(tmp_path, digits_npz, trained, capsys):
    import json

    from tinyprune.cli import main

    path = tmp_path / "mlp.pt"
    torch.save(trained("mlp"), path)
    assert main(["analyze", str(path), "--data", str(digits_npz), "--out", str(tmp_path / "a"), "--criterion", "l1",
                 "--sparsity", "0.5"]) == 0
    assert "marked: the channels l1 removes at 50% of the MACs" in capsys.readouterr().out
    result = json.loads((tmp_path / "a" / "mi.json").read_text())
    assert result["marked"]["criterion"] == "l1" and result["marked"]["macs_after"] <= 0.5 * result["marked"]["macs_before"] + 1
    layers = {l["name"]: l for l in result["layers"]}
    # l1 takes the same fraction from each hidden layer (64 -> 37, 32 -> 18 meets half the MACs);
    # the classifier's outputs stay
    assert [len(layers[n]["removed"]) for n in ("1", "3", "5")] == [27, 14, 0]
    assert all(0 <= c < l["channels"] for l in layers.values() for c in l["removed"])
    assert (tmp_path / "a" / "mi.png").stat().st_size > 0
    assert main(["analyze", str(path), "--data", str(digits_npz), "--out", str(tmp_path / "b"), "--criterion", "none"]) == 0
    assert json.loads((tmp_path / "b" / "mi.json").read_text())["marked"] is None
