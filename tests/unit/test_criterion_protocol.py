"""The criterion protocol: registry, per-criterion configs, flags, seeds reaching the code."""

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from tinyprune.cli import main
from tinyprune.config import DataConfig, PruneConfig
from tinyprune.data import prepare
from tinyprune.errors import ConfigError
from tinyprune.prune import protocol
from tinyprune.prune.protocol import Criterion, Step, register
from tinyprune.prune.structured import prune_to_macs
from tinyprune.testing import MODELS


def test_every_criterion_builds_from_its_frozen_config():
    assert {"l1", "random", "mi", "mspic", "vib", "mipp", "flow", "taylor"} <= set(protocol.names())
    for name in protocol.names():
        cls = protocol.get(name)
        crit = protocol.build(name)
        assert crit.config == cls.Config() and cls.description
        for f in dataclasses.fields(cls.Config):
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(crit.config, f.name, getattr(crit.config, f.name))


def test_flags_follow_from_the_configs():
    flags = protocol.option_flags()
    assert flags["--vib-gamma"] == ("vib", "gamma", 5e-4)
    assert flags["--mi-estimator"] == ("mi", "estimator", "kde-binned")
    cfg = PruneConfig(criterion="vib", options={"gamma": "0.01", "epochs": 3})
    assert cfg.options.gamma == 0.01 and cfg.options.epochs == 3


@pytest.mark.parametrize("criterion, options, message", [
    ("nope", None, "unknown criterion 'nope'; known criteria: bnscale, flow, l1"),
    ("l1", {"gamma": 1.0}, "--l1-gamma is not an option of --criterion l1 .*belongs to --criterion vib"),
    ("vib", {"epochs": -1}, "--vib-epochs must be >= 0"),
    ("vib", {"gamma": "x"}, "--vib-gamma must be a number"),
    ("vib", {"layer_gamma": "1,x"}, "--vib-layer-gamma takes numbers separated by commas"),
    ("vib", {"layer_gamma": "1,-2"}, "--vib-layer-gamma multipliers must be finite and >= 0"),
    ("mi", {"estimator": "histogram"}, "--mi-estimator must be one of kde-binned, kde, binning"),
])
def test_bad_criterion_settings_are_one_line_config_errors(criterion, options, message):
    with pytest.raises(ConfigError, match=message):
        PruneConfig(criterion=criterion, options=options)


@pytest.mark.parametrize("argv, message", [
    (["--criterion", "l1", "--vib-gamma", "0.1"], "--vib-gamma belongs to --criterion vib, not --criterion l1"),
    (["--criterion", "nope"], "unknown criterion 'nope'"),
    (["--criterion", "vib", "--vib-epochs", "-2"], "--vib-epochs must be >= 0"),
    (["--no-cache", "--cache-dir", "somewhere"], "--no-cache and --cache-dir contradict each other"),
])
def test_cli_rejects_flags_before_loading_the_model(tmp_path, capsys, argv, message):
    # the model file does not exist: the flag error must come first
    code = main(["compress", str(tmp_path / "missing.pt"), "--data", str(tmp_path / "missing.npz"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.fixture(scope="module")
def mlp_data(digits):
    torch.manual_seed(0)
    model = MODELS["mlp"]()
    splits = prepare(digits, model.eval(), DataConfig(), seed=0)
    return model, splits


def _without_times(record):
    if isinstance(record, dict):
        return {k: _without_times(v) for k, v in record.items() if k != "seconds"}
    if isinstance(record, list):
        return [_without_times(v) for v in record]
    return record


def _pruned_state(res):
    return {k: v.clone() for k, v in res.model.state_dict().items()}, res.kept, _without_times(res.record)


def _same(a, b):
    (sa, ka, ra), (sb, kb, rb) = a, b
    return ka == kb and ra == rb and sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


def test_vib_layer_gamma_reaches_training_and_a_wrong_count_fails_first(mlp_data):
    model, splits = mlp_data
    x, y = splits.x_train[:300], splits.y_train[:300]

    def widths(layer_gamma):
        cfg = PruneConfig(criterion="vib", sparsity=0.0, options={"gamma": 2e-2, "epochs": 2, "layer_gamma": layer_gamma})
        res = prune_to_macs(model, cfg, x, y, 10, train=(x, y), seed=0)
        return [m.out_features for m in res.model.modules() if isinstance(m, torch.nn.Linear)][:-1]

    # the MLP has two gated hidden layers (64, 32): the KL on the second alone thins the second alone
    spared, thinned = widths("0,0"), widths("0,1")
    assert spared[0] >= 0.9 * 64 and spared[1] >= 0.9 * 32
    assert thinned[0] >= 0.9 * 64 and thinned[1] < 0.5 * spared[1]
    with pytest.raises(ConfigError, match="--vib-layer-gamma gives 3 multipliers for 2 gated layers"):
        widths("1,1,1")


# MIPP's cost grows as the cube of its analysis samples (N x N Grams): 100 keep it to seconds
@pytest.mark.parametrize("criterion, options, sparsity, samples", [
    ("vib", {"gamma": 1e-2, "epochs": 1}, 0.0, 300),
    ("mipp", None, 0.6, 100),
])
def test_seed_reaches_vib_and_mipp(mlp_data, criterion, options, sparsity, samples):
    model, splits = mlp_data
    x, y = splits.x_train, splits.y_train
    cfg = PruneConfig(criterion=criterion, sparsity=sparsity, options=options, compensate=False)

    def run(seed):
        torch.manual_seed(123)  # the global RNG is the same: only --seed differs
        return _pruned_state(prune_to_macs(model, cfg, x[:samples], y[:samples], 10, train=(x, y), seed=seed))

    first, again, other = run(0), run(0), run(1)
    assert _same(first, again)
    assert not _same(first, other)


@dataclass(frozen=True)
class _HalfConfig:
    layer: str = "1"


class _KeepFirstHalf(Criterion):
    """A criterion written against the protocol only: prepare halves one layer, then L1."""

    name = "test-half"
    description = "test only"
    Config = _HalfConfig

    def prepare(self, model, ctx):
        import torch_pruning as tp

        layer = dict(model.named_modules())[self.config.layer]
        n = layer.out_features
        dg = tp.DependencyGraph().build_dependency(model, torch.from_numpy(ctx.x[:1]))
        dg.get_pruning_group(layer, tp.prune_linear_out_channels, list(range(n // 2, n))).prune()
        return Step(model, {self.config.layer: list(range(n // 2))}, {"halved": self.config.layer, "seed": ctx.seed})

    def importance(self, model, ctx, step):
        return protocol.build("l1").importance(model, ctx, step)


def test_a_new_criterion_is_one_registered_class(mlp_data):
    model, splits = mlp_data
    register(_KeepFirstHalf)
    try:
        cfg = PruneConfig(criterion="test-half", sparsity=0.5, compensate=False)
        res = prune_to_macs(model, cfg, splits.x_train[:200], splits.y_train[:200], 10, seed=7)
    finally:
        protocol.CRITERIA.pop("test-half")
    assert res.record == {"halved": "1", "seed": 7}
    assert set(res.kept["1"]) <= set(range(32)) and len(res.kept["1"]) == res.model[1].out_features
    assert res.macs_after <= 0.5 * res.macs_before * 1.02
    # kept ids follow the channels: the remaining rows are the original rows with those ids
    assert torch.equal(res.model[1].weight, model[1].weight[res.kept["1"]])
    assert np.isfinite(res.model[1].weight.detach().numpy()).all()


@pytest.mark.parametrize("labels, message", [
    (np.zeros(200, dtype=np.int64), "needs at least 2 classes in its 200 samples, found 1"),
    (np.r_[np.zeros(199, dtype=np.int64), [1]], "class 1 has 1 of 200"),
])
def test_mi_analysis_rejects_labels_it_cannot_use(mlp_data, labels, message):
    from tinyprune.errors import DataError

    model, splits = mlp_data
    with pytest.raises(DataError, match=message):
        prune_to_macs(model, PruneConfig(criterion="mi", sparsity=0.3, compensate=False), splits.x_train[:200], labels, 10)


def test_bnscale_prunes_by_batch_norm_scale_and_refuses_a_model_without_one(mlp_data, trained, digits):
    model, splits = mlp_data
    with pytest.raises(ConfigError, match="no affine batch norm; use l1 or flow"):
        prune_to_macs(model, PruneConfig("bnscale", 0.4, compensate=False), splits.x_train[:200], splits.y_train[:200], 10)
    cnn = trained("cnn_bn")
    result = prune_to_macs(cnn, PruneConfig("bnscale", 0.4, compensate=False), digits.x_train[:200], digits.y_train[:200], 10)
    assert 0.4 <= 1 - result.macs_after / result.macs_before <= 0.41
    # the channels kept in the first conv are those with the largest |gamma|
    gamma = cnn.get_submodule("1").weight.detach().abs()
    kept = result.kept["0"]
    assert min(gamma[kept]) >= max(gamma[[c for c in range(16) if c not in kept]])


def test_a_criterion_that_cannot_serve_a_task_names_the_ones_that_can():
    from tinyprune.prune.protocol import CRITERIA, Criterion, check_task, register

    @register
    class LabelsOnly(Criterion):
        name = "labels_only_test"
        description = "test"
        tasks = ("classify",)

    try:
        check_task("labels_only_test", "classify")
        with pytest.raises(ConfigError, match="--criterion labels_only_test needs class labels .* for --task "
                                              "reconstruct use one of bnscale, flow, l1, mi, mipp, mspic, random"):
            check_task("labels_only_test", "reconstruct")
    finally:
        del CRITERIA["labels_only_test"]
