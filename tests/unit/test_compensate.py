"""Least-squares compensation of removed channels (tinyprune/prune/compensate.py)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from tinyprune.config import DataConfig, PruneConfig
from tinyprune.data import prepare
from tinyprune.prune import prune_to_macs
from tinyprune.prune.compensate import compensate
from tinyprune.testing import MODELS


def _group(model, layer, idxs, example):
    import torch_pruning as tp

    fn = tp.prune_linear_out_channels if isinstance(layer, nn.Linear) else tp.prune_conv_out_channels
    return tp.DependencyGraph().build_dependency(model, example, verbose=False).get_pruning_group(layer, fn, idxs)


def _redundant(first: nn.Module, removed: list[int]) -> None:
    """Make channels ``removed`` of ``first``'s output an affine function of channel 0 plus a
    constant, so the kept channels predict them exactly (no ReLU in between)."""
    with torch.no_grad():
        for i, r in enumerate(removed):
            first.weight[r] = (0.5 + i) * first.weight[0]
            first.bias[r] = (0.5 + i) * first.bias[0] + 0.3 * (i + 1)


@pytest.mark.parametrize("kind", ["linear", "conv1x1"])
def test_removing_a_predictable_channel_leaves_the_output_unchanged(kind):
    torch.manual_seed(0)
    if kind == "linear":
        model = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
        x = np.random.default_rng(0).normal(size=(300, 6)).astype(np.float32)
    else:  # no padding: the mean term is exact at every position
        model = nn.Sequential(nn.Conv2d(2, 8, 1), nn.Conv2d(8, 4, 1, bias=False), nn.ReLU(), nn.Flatten(),
                              nn.Linear(4 * 5 * 5, 3)).eval()
        x = np.random.default_rng(0).normal(size=(300, 2, 5, 5)).astype(np.float32)
    removed = [3, 5]
    _redundant(model[0], removed)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        before = model(xt)
    plain = copy.deepcopy(model)
    group = _group(model, model[0], removed, xt[:1])
    assert compensate(model, group, x) == 1
    group.prune()
    _group(plain, plain[0], removed, xt[:1]).prune()
    with torch.no_grad():
        after, without = model(xt), plain(xt)
    assert model[0].weight.shape[0] == 6
    # exact but for the Ledoit-Wolf shrinkage of the covariance (256 samples): a few percent of the
    # move the output makes without compensation
    assert float((after - before).abs().max()) < 0.05 * float((without - before).abs().max())


def test_depthwise_consumers_are_left_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1, groups=4)).eval()
    x = np.random.default_rng(0).normal(size=(50, 1, 6, 6)).astype(np.float32)
    weights = model[1].weight.detach().clone()
    group = _group(model, model[0], [1], torch.from_numpy(x[:1]))
    assert compensate(model, group, x) == 0
    assert torch.equal(model[1].weight, weights)


def test_compensated_pruning_stays_closer_to_the_original(trained, digits):
    """On the trained built-in example, the pruned model's logits move less with compensation."""
    model = trained("digits_cnn")
    splits = prepare(digits, MODELS["digits_cnn"]().eval(), DataConfig(), seed=0)
    x, y = splits.x_train[:400], splits.y_train[:400]
    results = {}
    for comp in (False, True):
        cfg = PruneConfig(criterion="l1", sparsity=0.6, compensate=comp)
        results[comp] = prune_to_macs(model, cfg, x, y, classes=10, seed=0)
    xe = torch.from_numpy(splits.x_eval)
    with torch.no_grad():
        ref = model.eval()(xe)
        err = {c: float(((r.model.eval()(xe) - ref) ** 2).mean()) for c, r in results.items()}
    assert err[True] < 0.5 * err[False], err


# every graph shape of the test models; mobilenet and ds_cnn repeat dw_residual's depthwise case
# at several times the pruning steps
@pytest.mark.parametrize("name", sorted(set(MODELS) - {"mobilenet", "ds_cnn", "digits_cnn"}))
def test_every_test_architecture_prunes_with_compensation_and_moves_less(name):
    """Residual adds, concats, depthwise and squeeze-excite blocks, conv1d, float outputs: the
    compensated cut runs and its outputs stay closer to the original's than the plain cut's."""
    from tinyprune.testing.models import SAMPLE_SHAPES

    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x = np.random.default_rng(0).normal(size=(128, *SAMPLE_SHAPES[name])).astype(np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    y = out.numpy() if name in ("autoencoder", "regressor") else out.argmax(-1).numpy()
    err = {}
    for comp in (False, True):
        pruned = prune_to_macs(model, PruneConfig(criterion="l1", sparsity=0.5, compensate=comp), x, y,
                               classes=out.shape[-1], seed=0)
        with torch.no_grad():
            err[comp] = float(((pruned.model(torch.from_numpy(x)) - out) ** 2).mean())
    assert err[True] < err[False], err


def test_compensated_pruning_is_deterministic_and_skipped_at_init(trained, digits):
    """Same seed, same weights (the project's refactor check relies on it); --at-init prunes a
    fresh initialization, which compensation must leave as initialized."""
    model = trained("mlp")
    splits = prepare(digits, MODELS["mlp"]().eval(), DataConfig(), seed=0)
    x, y = splits.x_train[:300], splits.y_train[:300]
    cfg = PruneConfig(criterion="flow", sparsity=0.5)
    assert cfg.compensate  # the default
    a, b = (prune_to_macs(model, cfg, x, y, classes=10, seed=1).model.state_dict() for _ in range(2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    init = PruneConfig(criterion="l1", sparsity=0.5, at_init=True)
    with_comp = prune_to_macs(model, init, x, y, classes=10, seed=1).model.state_dict()
    without = prune_to_macs(model, PruneConfig(criterion="l1", sparsity=0.5, at_init=True, compensate=False), x, y,
                            classes=10, seed=1).model.state_dict()
    assert all(torch.equal(with_comp[k], without[k]) for k in without) and with_comp.keys() == without.keys()
