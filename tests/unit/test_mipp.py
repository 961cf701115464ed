"""MIPP (mutual-information-preserving pruning, TERC): redundancy decisions, shapes, targets, at-init."""

import copy

import pytest
import torch
import torch.nn as nn

from tinyprune.config import DataConfig, FinetuneConfig
from tinyprune.data import prepare
from tinyprune.errors import ConfigError
from tinyprune.information import renyi_mi
from tinyprune.measure.macs import count_torch
from tinyprune.prune.mipp import mipp_masks, mipp_pre_step, mipp_prune, weight_count
from tinyprune.prune.terc import RenyiMI, _zscore, terc_layer
from tinyprune.testing.models import MODELS
from tinyprune.train import accuracy, fit

N = 200  # analysis samples: keeps every test at a few seconds


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Hundreds of small eigendecompositions: on a busy 2-core machine two threads were 6x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _sources(seed: int, n: int = N):
    """4 Gaussian sources, copies of sources 0 and 1, two constants; B a nonlinear mix of the sources."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    a = torch.cat([x, x[:, :2], torch.full((n, 2), 0.7, dtype=torch.float64)], 1)
    b = torch.tanh(x @ torch.randn(4, 6, generator=g, dtype=torch.float64))
    return a, b


@pytest.mark.parametrize("seed", [0, 1])
def test_terc_drops_copies_and_constants_and_keeps_every_source(seed):
    a, b = _sources(seed)
    res = terc_layer(a, b, seed=seed)
    kept = set(res["kept"])
    assert {6, 7} <= set(res["terc_removed"])  # constants: zero information
    assert len(kept & {0, 4}) == 1 and len(kept & {1, 5}) == 1  # one of each copied pair
    assert {2, 3} <= kept  # unique sources stay
    assert len(kept) == 4 and not res["collapse"] and res["forced"] == []
    assert res["mi_after"] >= res["mi_full"] - res["margin"]
    assert res["node_mi"][6] == pytest.approx(0.0, abs=1e-9)


def test_estimator_is_renyi_mi_and_ignores_exact_copies():
    a, b = _sources(0)
    est = RenyiMI(a, b)
    for cols in ([0, 1, 2, 3], [0, 2], [0, 1, 2, 3, 4, 5]):
        assert est.mi(est.sqdist(cols)) == pytest.approx(
            renyi_mi(est.weighted(cols), _zscore(b), standardize=False), abs=1e-9)
    # independent columns have weight ~1: the plain library estimate
    assert est.mi(est.sqdist([0, 1, 2, 3])) == pytest.approx(renyi_mi(a[:, :4], b), abs=0.005)
    # a copy changes the estimate far less than the margin; dropping a source far more
    four = est.mi(est.sqdist([0, 1, 2, 3]))
    assert abs(est.mi(est.sqdist([0, 1, 2, 3, 4, 5])) - four) < 0.005
    assert four - est.mi(est.sqdist([0, 1, 2])) > 0.05


@pytest.fixture(scope="module")
def cnn(trained, digits):
    model = trained("cnn_bn").eval()
    splits = prepare(digits, model, DataConfig(), 0)
    return model, splits


def test_copied_and_dead_channels_are_removed_from_a_trained_cnn(cnn):
    model, splits = cnn
    model = copy.deepcopy(model)
    conv, bn = model[0], model[1]
    with torch.no_grad():
        for src, dst in ((0, 15), (1, 14)):  # channels 14, 15 repeat 1, 0 exactly
            conv.weight[dst] = conv.weight[src]
            conv.bias[dst] = conv.bias[src]
            for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                t[dst] = t[src]
        for dead in (12, 13):  # BN output -1 everywhere: ReLU gives a constant 0
            bn.weight[dead] = 0.0
            bn.bias[dead] = -1.0
    report = mipp_masks(model, splits.x_train, samples=N)
    first = report["layers"]["0"]
    kept = set(first["kept"])
    assert not kept & {12, 13}
    assert {12, 13} <= set(first["terc_removed"])
    assert len(kept & {0, 15}) <= 1 and len(kept & {1, 14}) <= 1
    assert report["forced"] == 0 and report["collapsed"] == []
    assert report["outputs"] == ["8"]  # the classifier is never pruned


def test_target_weight_sparsity_met_and_shapes_consistent_without_collapse(cnn):
    model, splits = cnn
    before = {n: p.clone() for n, p in model.state_dict().items()}
    pruned, report = mipp_prune(model, splits.x_train, splits.y_train, target_sparsity=0.9, samples=N)
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())  # original untouched
    w0, w1 = weight_count(model), weight_count(pruned)
    assert report["weights_before"] == w0 and report["weights_after"] == w1
    assert report["cost_after"] == w1  # the cost model counts exactly what is left
    assert 0.9 <= 1 - w1 / w0 <= 0.95 and report["target_met"]
    # no layer collapses at 90 %, every layer keeps at least one channel and torch-pruning refused nothing
    assert report["collapsed"] == [] and report["refused"] == []
    c1, b1, c2, b2, lin = pruned[0], pruned[1], pruned[3], pruned[4], pruned[8]
    n1, n2 = report["layers"]["0"]["n_kept"], report["layers"]["3"]["n_kept"]
    assert 1 <= n1 < 16 and 1 <= n2 < 32
    assert (c1.out_channels, b1.num_features, c2.in_channels) == (n1, n1, n1)
    assert (c2.out_channels, b2.num_features, lin.in_features, lin.out_features) == (n2, n2, n2 * 16, 10)
    for entry in report["layers"].values():
        assert entry["n_kept"] + len(entry["terc_removed"]) + len(entry["forced"]) == entry["total"]
    assert report["terc_removed"] > 0 and report["forced"] > 0
    # kept indices are original channel ids: the kept filters are the original ones
    assert torch.equal(c1.weight, model[0].weight[report["kept"]["0"]])
    out = pruned(torch.from_numpy(splits.x_eval[:5]))
    assert out.shape == (5, 10) and torch.isfinite(out).all()
    fit(pruned, splits.x_train, splits.y_train, FinetuneConfig(epochs=2, lr=3e-3), seed=0)
    assert accuracy(pruned, splits.x_eval, splits.y_eval) > 0.8  # retrainable


def test_at_init_prunes_a_fresh_copy_that_then_trains(cnn):
    model, splits = cnn
    pruned, report = mipp_prune(model, splits.x_train, splits.y_train, target_sparsity=0.8, at_init=True,
                                samples=N, seed=1)
    assert report["at_init"] and report["collapsed"] == []
    assert report["weight_sparsity"] >= 0.8
    kept = report["kept"]["0"]
    assert not torch.equal(pruned[0].weight, model[0].weight[kept])  # re-initialized, not the trained filters
    assert accuracy(pruned, splits.x_eval, splits.y_eval) < 0.5  # untrained
    fit(pruned, splits.x_train, splits.y_train, FinetuneConfig(epochs=2, lr=3e-3), seed=0)
    assert accuracy(pruned, splits.x_eval, splits.y_eval) > 0.6


@pytest.mark.parametrize("name", ["concat_net", "dw_residual"])
def test_coupled_layers_stay_consistent(digits, name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x = digits.x_train[:300]
    pruned, report = mipp_prune(model, x, None, target_sparsity=0.6, samples=N)
    assert report["weight_sparsity"] >= 0.6 and report["refused"] == []
    widths = {n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
              for n, m in pruned.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    for layer, kept in report["kept"].items():
        assert widths[layer] == len(kept)
    assert pruned(torch.from_numpy(x[:3])).shape == (3, 10)


def test_a_layer_without_information_is_reported_not_emptied(digits):
    torch.manual_seed(0)  # the result must not depend on which tests ran before
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 10))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.fill_(-1.0)  # every first-layer unit is dead: nothing reaches the rest
    pruned, report = mipp_prune(model, digits.x_train[:300], None, samples=N)
    assert pruned[1].out_features == 1 and pruned[3].out_features == 1
    assert pruned(torch.from_numpy(digits.x_train[:2])).shape == (2, 10)


def test_pre_step_meets_a_mac_target(digits):
    torch.manual_seed(0)
    model = MODELS["cnn_bn"]().eval()
    x = digits.x_train[:300]
    pruned, records = mipp_pre_step(model, x, digits.y_train[:300], retrain=None, macs_sparsity=0.7, samples=N)
    example = torch.from_numpy(x[:1])
    assert count_torch(pruned, example)[0] <= 0.3 * count_torch(model, example)[0]
    assert records["budget"] == "macs" and set(records["kept"]) == {"0", "3"}


def test_bad_options_are_config_errors(digits):
    model = MODELS["mlp"]()
    with pytest.raises(ConfigError):
        mipp_masks(model, digits.x_train[:50], target_sparsity=1.0)
    with pytest.raises(ConfigError):
        mipp_masks(model, digits.x_train[:50], reference="best", samples=50)
    with pytest.raises(ConfigError):
        mipp_masks(model, digits.x_train[:50], budget="flops", samples=50)


def test_fill_puts_terc_removed_nodes_back_down_to_the_target(cnn):
    model, splits = cnn
    alone = mipp_masks(model, splits.x_train, samples=N)
    target = alone["sparsity"] / 2
    filled = mipp_masks(model, splits.x_train, target, samples=N, fill=True)
    assert target <= filled["sparsity"] < alone["sparsity"] and filled["forced"] == 0
    restored = [i for e in filled["layers"].values() for i in e.get("restored", [])]
    assert restored and filled["terc_removed"] == alone["terc_removed"] - len(restored)


def test_mipp_criterion_through_prune_to_macs(cnn):
    """--criterion mipp: MIPP prunes in the criterion's prepare step, kept ids follow."""
    from tinyprune.config import PruneConfig
    from tinyprune.prune import prune_to_macs

    model, splits = cnn
    x, y = splits.x_train[:300], splits.y_train[:300]
    res = prune_to_macs(model, PruneConfig(criterion="mipp", sparsity=0.6, compensate=False), x, y, classes=10)
    assert res.macs_after <= 0.4 * res.macs_before * 1.02
    widths = {layer["name"]: layer["channels_after"] for layer in res.layers}
    assert all(len(res.kept[name]) == widths[name] for name in res.kept)
    assert res.kept["0"] == sorted(res.kept["0"]) and max(res.kept["0"]) < 16
    assert torch.equal(res.model[0].weight, model[0].weight[res.kept["0"]])


def test_apply_kept_reports_a_layer_that_lost_its_last_channels():
    import torch
    import torch.nn as nn

    from tinyprune.prune.mipp import apply_kept

    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    masks = {"layers": {"0": {"kept": [0, 1, 2, 3]}, "2": {"kept": [0, 2, 4]}}}
    apply_kept(model, masks, torch.rand(1, 8))
    # ids [0..3] of a layer that had 6: changed, so listed (they used to be left out)
    assert masks["kept"] == {"0": [0, 1, 2, 3], "2": [0, 2, 4]}
    assert model[0].out_features == 4 and model[2].out_features == 3
