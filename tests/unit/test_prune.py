import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from tinyprune.config import PruneConfig
from tinyprune.errors import ConfigError
from tinyprune.measure.macs import count_torch
from tinyprune.prune import CRITERIA, prune_to_macs
from tinyprune.testing import MODELS

X = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
Y = np.arange(64) % 10


@pytest.mark.parametrize("name", ["mlp", "cnn_bn", "dw_residual", "concat_net"])
@pytest.mark.parametrize("criterion", ["l1", "random"])
def test_prune_meets_mac_target_and_keeps_model_working(name, criterion):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    original = copy.deepcopy(model)
    res = prune_to_macs(model, PruneConfig(criterion=criterion, sparsity=0.5, compensate=False), X, Y, classes=10)
    assert res.macs_after <= 0.5 * res.macs_before * 1.02
    assert res.macs_after >= 0.2 * res.macs_before  # small steps: no overshoot to nothing
    assert res.params_after < res.params_before
    out = res.model(torch.from_numpy(X[:3]))
    assert out.shape == (3, 10)
    assert count_torch(res.model, torch.from_numpy(X[:1]))[0] == res.macs_after
    # the input model is untouched (stages work on copies)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), original.state_dict().values()))
    shrunk = [l for l in res.layers if l["channels_after"] < l["channels_before"]]
    assert shrunk and all(l["channels_after"] >= 1 for l in res.layers)
    # the classifier keeps its 10 outputs
    assert res.layers[-1]["channels_after"] == 10
    for layer in res.layers:  # channel identities followed through every step
        ids = res.kept[layer["name"]]
        assert len(ids) == layer["channels_after"] and ids == sorted(set(ids))


def test_l1_removes_the_smallest_filters():
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10))
    with torch.no_grad():
        for i in range(8):
            model[0].weight[i].fill_(0.01 * (i + 1) * (1 if i % 2 else -1))
    res = prune_to_macs(model, PruneConfig(criterion="l1", sparsity=0.5, compensate=False), X, Y, classes=10)
    kept = sorted(res.model[0].weight.detach().abs().flatten(1).sum(1).tolist())
    norms = [0.09 * (i + 1) for i in range(8)]
    assert 0 < len(kept) < 8
    assert kept == pytest.approx(norms[-len(kept):])  # exactly the largest-norm filters survive
    assert res.kept["0"] == list(range(8 - len(kept), 8))


def test_zero_sparsity_is_identity():
    model = MODELS["cnn_bn"]().eval()
    res = prune_to_macs(model, PruneConfig(sparsity=0.0), X, Y, classes=10)
    assert res.macs_after == res.macs_before and res.steps == 0


def test_unknown_criterion():
    with pytest.raises(ConfigError, match="unknown criterion 'nope'; known criteria: .*l1"):
        prune_to_macs(MODELS["cnn_bn"](), PruneConfig(criterion="nope"), X, Y, classes=10)


def test_registry_has_baselines():
    assert {"l1", "random"} <= set(CRITERIA)
