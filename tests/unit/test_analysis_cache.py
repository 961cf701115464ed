"""The on-disk analysis cache: a second run on the same model and data reuses the measurement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinyprune.config import PruneConfig
from tinyprune.information.cache import analysis_key, cached
from tinyprune.testing import MODELS


def _arrays(counter):
    def compute():
        counter.append(1)
        return {"a": np.arange(6, dtype=np.float64).reshape(2, 3), "names": np.array(["x", "y"])}

    return compute


def test_second_call_loads_and_any_change_measures_again(tmp_path):
    torch.manual_seed(0)
    model = MODELS["digits_cnn"]()
    x = np.zeros((4, 1, 8, 8), np.float32)
    calls = []
    first = cached("t", model, {"x": x}, {"k": 1}, _arrays(calls), tmp_path)
    second = cached("t", model, {"x": x}, {"k": 1}, _arrays(calls), tmp_path)
    assert len(calls) == 1
    assert second.keys() == first.keys() and all(np.array_equal(first[k], second[k]) for k in first)
    cached("t", model, {"x": x}, {"k": 2}, _arrays(calls), tmp_path)  # another setting
    cached("t", model, {"x": x + 1}, {"k": 1}, _arrays(calls), tmp_path)  # other data
    with torch.no_grad():
        next(model.parameters())[0].add_(1)  # another weight
    cached("t", model, {"x": x}, {"k": 1}, _arrays(calls), tmp_path)
    assert len(calls) == 4


def test_a_damaged_file_is_measured_again_and_no_cache_stores_nothing(tmp_path):
    model = MODELS["digits_cnn"]()
    x = np.zeros((2, 1, 8, 8), np.float32)
    calls = []
    cached("t", model, {"x": x}, {}, _arrays(calls), tmp_path)
    (file,) = tmp_path.glob("t-*.npz")
    file.write_bytes(file.read_bytes()[:40])  # cut short, as by a full disk
    again = cached("t", model, {"x": x}, {}, _arrays(calls), tmp_path)
    assert len(calls) == 2 and again["a"].shape == (2, 3)
    cached("t", model, {"x": x}, {}, _arrays(calls), None)
    assert len(calls) == 3 and len(list(tmp_path.glob("*.npz"))) == 1


def test_an_unwritable_cache_costs_the_reuse_not_the_run(tmp_path):
    (tmp_path / "file").write_text("a file where the cache folder would go")
    calls = []
    out = cached("t", MODELS["digits_cnn"](), {"x": np.zeros((2, 1, 8, 8), np.float32)}, {}, _arrays(calls),
                 tmp_path / "file" / "cache")
    assert len(calls) == 1 and out["a"].shape == (2, 3)


def test_the_key_hashes_every_input():
    model = MODELS["digits_cnn"]()
    x = np.zeros((2, 1, 8, 8), np.float32)
    key = analysis_key("t", model, {"x": x}, {"k": 1})
    assert analysis_key("t", model, {"x": x}, {"k": 1}) == key
    assert analysis_key("u", model, {"x": x}, {"k": 1}) != key
    assert analysis_key("t", model, {"x": x, "y": np.zeros(2)}, {"k": 1}) != key


@pytest.mark.parametrize("criterion,measure", [("flow", "tinyprune.prune.flow._measure_input_stats"),
                                               ("mi", "tinyprune.information.capture_activations")])
def test_a_run_at_another_sparsity_reuses_the_analysis_and_prunes_the_same(tmp_path, monkeypatch, trained, digits,
                                                                           criterion, measure):
    from tinyprune.prune import prune_to_macs

    model = trained("digits_cnn")
    x, y = digits.x_train[:200], digits.y_train[:200]
    plain = prune_to_macs(model, PruneConfig(criterion=criterion, sparsity=0.5, compensate=False), x, y, 10)
    prune_to_macs(model, PruneConfig(criterion=criterion, sparsity=0.3, compensate=False), x, y, 10, cache_dir=tmp_path)
    module, name = measure.rsplit(".", 1)
    import importlib

    real = getattr(importlib.import_module(module), name)
    calls = []
    monkeypatch.setattr(importlib.import_module(module), name, lambda *a, **k: calls.append(1) or real(*a, **k))
    again = prune_to_macs(model, PruneConfig(criterion=criterion, sparsity=0.5, compensate=False), x, y, 10, cache_dir=tmp_path)
    # The 0.3 run measured the unpruned model and every state on its way; the 0.5 run takes the
    # same steps at first, so it measures only past the point where the 0.3 run stopped.
    assert again.kept == plain.kept and again.macs_after == plain.macs_after
    unpruned = prune_to_macs(model, PruneConfig(criterion=criterion, sparsity=0.3, compensate=False), x, y, 10, cache_dir=tmp_path)
    assert unpruned.macs_after < unpruned.macs_before
    measured_at_05 = len(calls)
    assert measured_at_05 >= 1  # the steps beyond 30 % were new
    calls.clear()
    prune_to_macs(model, PruneConfig(criterion=criterion, sparsity=0.5, compensate=False), x, y, 10, cache_dir=tmp_path)
    assert calls == []  # everything the same run needs is stored
