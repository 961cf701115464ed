"""The Deep Compression stage end to end in PyTorch: prune -> cluster -> Huffman archive."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from tinyprune.config import DataConfig, FinetuneConfig
from tinyprune.data import prepare
from tinyprune.deepcompress import archive_ratio, unpack
from tinyprune.deepcompress import stage as stage_mod
from tinyprune.deepcompress.stage import STAGES, DeepCompressConfig, RoundTripError, run_deepcompress
from tinyprune.errors import ConfigError
from tinyprune.lift import lift_graph
from tinyprune.measure.macs import count_torch
from tinyprune.report.records import StageRecord
from tinyprune.testing import MODELS
from tinyprune.train import accuracy, fit

# Half the weights of each layer removed and a short fine-tune may cost a little accuracy on
# these small digit models; more than this means a stage broke the model.
ACCURACY_TOLERANCE = 0.05
FAST = dict(prune_epochs=1, centroid_epochs=1)


def _small_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )


@pytest.fixture(scope="module")
def splits(digits):
    return prepare(digits, MODELS["mlp"]().eval(), DataConfig(), seed=0)  # the split the fixtures train on


@pytest.fixture(scope="module")
def mlp_case(trained, splits):
    model = trained("mlp").eval()
    cfg = DeepCompressConfig(bits="conv=8,fc=5", **FAST)
    return model, cfg, run_deepcompress(model, splits.x_train, splits.y_train, splits.x_eval, splits.y_eval, cfg)


@pytest.fixture(scope="module")
def cnn_case(splits):
    """A lifted GraphModule (conv/linear/batch norm as real modules), as the pipeline holds it."""
    torch.manual_seed(0)
    # A short training and a part of the data keep this fast; the checks compare with this model.
    x, y = splits.x_train[:720], splits.y_train[:720]
    model = fit(_small_cnn(), x, y, FinetuneConfig(epochs=3, lr=5e-3), seed=0)
    graph = lift_graph(torch.export.export(model.eval(), (torch.from_numpy(x[:1]),)).module()).eval()
    cfg = DeepCompressConfig(bits="conv=4,fc=4", lut_ready=True, **FAST)
    return graph, cfg, run_deepcompress(graph, x, y, splits.x_eval, splits.y_eval, cfg)


@pytest.fixture(params=["mlp", "cnn"])
def case(request):
    return request.getfixturevalue(f"{request.param}_case")


def test_clustered_weights_are_codebook_entries_and_zeros_stay_zero(case):
    _, cfg, result = case
    params = dict(result.model.named_parameters())
    assert result.clusters, "no layer was clustered"
    for layer in result.clusters:
        w = params[layer.name].detach()
        assert torch.equal(w, layer.weight())  # exactly codebook[index] / 0
        # pruned positions hold +0.0 (never -0.0), so archives and exports compare bit-exact
        assert (w[~layer.mask] == 0).all() and not torch.signbit(w[~layer.mask]).any()
        assert layer.kept == layer.mask.numel() - round(cfg.weight_sparsity * layer.mask.numel())
        assert torch.unique(w[layer.mask]).numel() <= layer.k <= 1 << layer.bits


def test_lut_ready_leaves_a_code_for_zero(case):
    _, cfg, result = case
    for layer in result.clusters:
        distinct = torch.unique(layer.weight()).numel()  # the zero included
        if cfg.lut_ready:
            assert distinct <= 1 << layer.bits
        else:
            assert distinct <= (1 << layer.bits) + 1


def test_without_lut_ready_a_dense_layer_can_need_one_more_value(trained, splits):
    # Light pruning leaves no centroid in the gap around zero: all 2**b codes are used by kept
    # weights and the pruned zero is value 2**b + 1, one bit more for a dense LUT.
    model = trained("mlp")
    common = dict(weight_sparsity=0.1, bits="4", prune_epochs=0, centroid_epochs=0)
    args = (splits.x_train, splits.y_train, splits.x_eval[:50], splits.y_eval[:50])
    plain = run_deepcompress(model, *args, DeepCompressConfig(**common))
    ready = run_deepcompress(model, *args, DeepCompressConfig(**common, lut_ready=True))
    assert max(torch.unique(c.weight()).numel() for c in plain.clusters) == 17
    assert max(torch.unique(c.weight()).numel() for c in ready.clusters) <= 16


def test_archive_round_trips_bit_exact(case):
    _, _, result = case
    decoded = unpack(result.archive)
    state = result.model.state_dict()
    assert set(decoded) == set(state)
    for name, value in state.items():
        want = value.numpy().astype(np.float32 if value.is_floating_point() else np.int64)
        assert decoded[name].dtype == want.dtype and decoded[name].tobytes() == want.tobytes(), name
    assert result.record("huffman").details["round_trip"] == "bit-exact"


def test_a_round_trip_difference_raises(monkeypatch, trained, splits):
    def corrupt(data):
        out = unpack(data)
        name = next(iter(out))
        out[name] = out[name].copy()
        out[name].reshape(-1)[0] = np.nextafter(out[name].reshape(-1)[0], np.float32(np.inf))
        return out

    monkeypatch.setattr(stage_mod, "unpack", corrupt)
    with pytest.raises(RoundTripError, match="round trip changed"):
        run_deepcompress(trained("mlp"), splits.x_train[:64], splits.y_train[:64], splits.x_eval[:8],
                         splits.y_eval[:8], DeepCompressConfig(prune_epochs=0, centroid_epochs=0))


def test_records(case, splits):
    model, cfg, result = case
    assert [r.name for r in result.records] == list(STAGES)
    assert all(isinstance(r, StageRecord) for r in result.records)
    macs, params = count_torch(model, torch.from_numpy(splits.x_train[:1]))
    pruned = sum(c.mask.numel() - c.kept for c in result.clusters)
    before = accuracy(model, splits.x_eval, splits.y_eval)
    for record in result.records:
        assert record.macs == macs  # unstructured pruning removes no MACs from a dense kernel
        assert record.params == params - pruned
        assert record.seconds >= 0
        assert record.accuracy >= before - ACCURACY_TOLERANCE, (record.name, record.accuracy, before)
        assert record.to_dict()["details"]["ratio_vs_fp32"] > 0
    details = result.record("weight_pruned").details
    assert details["weights_kept"] == sum(c.kept for c in result.clusters)
    assert details["kept_fraction"] == pytest.approx(1 - cfg.weight_sparsity, abs=0.01)
    assert result.record("clustered").details["clusters"] == {c.name: c.k for c in result.clusters}
    assert result.record("huffman").details["archive_bytes"] == len(result.archive)
    # The archive decodes to the clustered model, so the Huffman stage cannot change accuracy.
    assert result.record("huffman").accuracy == result.record("clustered").accuracy


def test_ratios_are_ordered_and_match_the_archive(case):
    _, _, result = case
    r = result.ratios
    assert 1 < r["P"] <= r["P+Q"] <= r["P+Q+H"]
    assert r["P+Q+H"] == pytest.approx(archive_ratio(result.archive))
    assert [result.record(s).details["ratio_vs_fp32"] for s in STAGES] == [r["P"], r["P+Q"], r["P+Q+H"]]
    table = result.table
    assert [row["name"] for row in table] == [c.name for c in result.clusters] + ["total"]
    assert table[-1]["bytes"] < len(result.archive)
    assert table[-1]["kept"] == sum(c.kept for c in result.clusters)


def test_input_model_is_left_alone_and_runs_are_repeatable(trained, splits):
    model = trained("mlp")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = DeepCompressConfig(bits="5", prune_epochs=1, centroid_epochs=0)
    args = (splits.x_train[:256], splits.y_train[:256], splits.x_eval[:32], splits.y_eval[:32], cfg)
    seen = []
    first = run_deepcompress(model, *args, seed=3, progress=lambda d, t, m: seen.append(m))
    second = run_deepcompress(model, *args, seed=3)
    assert first.archive == second.archive
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert any("prune fine-tune" in m for m in seen) and any("Huffman" in m for m in seen)


def test_config_is_checked_before_any_work():
    for bad in (dict(weight_sparsity=1.0), dict(bits="conv=9x"), dict(gap_bits="0"), dict(prune_epochs=-1),
                dict(lr=0.0)):
        with pytest.raises(ConfigError):
            DeepCompressConfig(**bad)
    cfg = DeepCompressConfig(overrides={"0": 0.2})
    assert cfg.to_dict()["overrides"] == {"0": 0.2}


def test_per_layer_overrides(trained, splits):
    cfg = DeepCompressConfig(weight_sparsity=0.5, overrides={"5": 0.2}, prune_epochs=0, centroid_epochs=0)
    result = run_deepcompress(trained("mlp"), splits.x_train[:64], splits.y_train[:64], splits.x_eval[:8],
                              splits.y_eval[:8], cfg)
    kept = {c.name: c.kept / c.mask.numel() for c in result.clusters}
    assert kept["5.weight"] == pytest.approx(0.8, abs=0.01) and kept["1.weight"] == pytest.approx(0.5, abs=0.01)


def test_iterative_pruning_reaches_the_set_rates_through_nested_masks(trained, splits):
    # Three prune-retrain rounds (Han et al. 2015): each removes the same share of what is left,
    # a weight once pruned stays pruned, and the last round lands on the set per-layer rates.
    cfg = DeepCompressConfig(weight_sparsity=0.875, overrides={"5": 0.5}, prune_rounds=3, prune_epochs=1,
                             centroid_epochs=0)
    x, y = splits.x_train[:256], splits.y_train[:256]
    result = run_deepcompress(trained("mlp"), x, y, splits.x_eval[:64], splits.y_eval[:64], cfg)
    rounds = result.record("weight_pruned").details["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    kept = [r["kept_fraction"] for r in rounds]
    assert kept[0] > kept[1] > kept[2]
    layer1 = result.clusters[0]
    assert layer1.name == "1.weight" and layer1.kept / layer1.mask.numel() == pytest.approx(0.125, abs=0.002)
    assert result.record("weight_pruned").accuracy == rounds[-1]["accuracy"]
    single = run_deepcompress(trained("mlp"), x, y, splits.x_eval[:64], splits.y_eval[:64],
                              DeepCompressConfig(weight_sparsity=0.875, overrides={"5": 0.5}, prune_epochs=1,
                                                 centroid_epochs=0))
    assert [c.kept for c in single.clusters] == [c.kept for c in result.clusters]
    assert len(single.record("weight_pruned").details["rounds"]) == 1


def test_round_rates_remove_equal_shares_of_what_is_left():
    rates = [stage_mod._round_rate(0.92, r, 4) for r in (1, 2, 3, 4)]
    left = [1 - r for r in rates]
    assert rates[-1] == 0.92
    assert left[1] / left[0] == pytest.approx(left[0]) and left[3] / left[2] == pytest.approx(left[0])
    with pytest.raises(ConfigError):
        DeepCompressConfig(prune_rounds=0)
