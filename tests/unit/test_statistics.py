"""Statistics of a pruning step (tinyprune/prune/statistics.py): streamed moments, one forward pass
for every request, and compensation measured once per step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from tinyprune.config import PruneConfig
from tinyprune.prune import prune_to_macs
from tinyprune.prune.statistics import Moments, Request, collect
from tinyprune.testing import MODELS


@pytest.mark.parametrize("features", [1, 3, 40])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_streamed_ledoit_wolf_is_scikit_learns(features, dtype, tolerance):
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(features)
    # an offset far from zero: the shift by the first batch's mean keeps float32 exact enough
    x = (rng.normal(size=(3000, features)) @ rng.normal(size=(features, features)) + 5.0).astype(np.float32)
    ref = LedoitWolf().fit(x.astype(np.float64))
    m = Moments(dtype, fourth=True)
    for s in range(0, len(x), 700):  # uneven batches
        m.add(torch.from_numpy(x[s:s + 700]))
    mean, cov = m.ledoit_wolf()
    scale = np.abs(ref.covariance_).max()
    assert np.abs(mean.numpy() - ref.location_).max() < tolerance * 10
    assert np.abs(cov.numpy() - ref.covariance_).max() < tolerance * scale


def test_one_forward_pass_feeds_every_request_and_the_cap_holds():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.Flatten(),
                          nn.Linear(6 * 64, 3)).eval()
    x = np.random.default_rng(0).normal(size=(100, 1, 8, 8)).astype(np.float32)
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    requests = [Request(model[2]), Request(model[2], samples=30, cap=500, seed=1), Request(model[2], point="output"),
                Request(model[4], samples=10)]
    stats = collect(model, x, requests, batch_size=40)
    assert len(calls) == 3  # one pass over the 100 samples in batches of 40
    full, capped, out, linear = (stats[r] for r in requests)
    assert full.n == 100 * 64 and capped.n == 500 and out.n == 100 * 64 and linear.n == 10
    assert stats["positions"][model[2]] == 64 and stats["positions"][model[4]] == 1
    with torch.no_grad():
        h = torch.relu(model[0](torch.from_numpy(x)))
        rows = h.movedim(1, -1).reshape(-1, 4).double()
    assert torch.allclose(full.covariance(), torch.cov(rows.T, correction=0), atol=1e-9)
    assert torch.allclose(full.mean(), rows.mean(0), atol=1e-9)


def test_compensation_measures_once_per_step_not_once_per_group(monkeypatch):
    import tinyprune.prune.compensate as comp

    passes, groups = [], []
    real_collect, real_compensate = comp.collect, comp.compensate
    monkeypatch.setattr(comp, "collect", lambda *a, **k: passes.append(1) or real_collect(*a, **k))
    monkeypatch.setattr(comp, "compensate", lambda *a, **k: groups.append(1) or real_compensate(*a, **k))
    torch.manual_seed(0)
    model = MODELS["concat_net"]().eval()
    x = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
    res = prune_to_macs(model, PruneConfig(criterion="flow", sparsity=0.5), x, np.arange(64) % 10, classes=10)
    assert res.macs_after <= 0.51 * res.macs_before
    # a global ranking takes several groups per step: one pass per step (steps count the landing's single removals too)
    assert 0 < len(passes) <= res.steps < len(groups)
    assert res.record["compensation"]["positions_per_layer"] == comp.POSITIONS
