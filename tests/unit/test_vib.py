"""VIBNet gates: insertion, exact folding and removal, physical pruning, export without gate ops."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from tinyprune.config import DataConfig
from tinyprune.data import prepare
from tinyprune.errors import ConfigError
from tinyprune.lift import lift_graph
from tinyprune.prune.vib import VibConfig, VibImportance, gate_stats, kl_total, train_vib, vib_prune
from tinyprune.prune.vib_gates import GATES, Gate, gates_of, insert_gates, remove_gates
from tinyprune.testing import MODELS


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: spinning intra-op threads only slow things down
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def splits(digits):
    return prepare(digits, MODELS["mlp"]().eval(), DataConfig(), seed=0)


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _randomize_gates(model: nn.Module, seed: int = 0) -> None:
    """Gates as after training: some mu negative or large, some units below the threshold."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for g in gates_of(model).gates.values():
            g.mu.copy_(torch.randn(g.mu.shape, generator=gen) * 1.5)
            g.log_sigma2.copy_(torch.randn(g.mu.shape, generator=gen) * 2.0)


def _randomize_bn(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen))


@pytest.mark.parametrize("name", ["mlp", "cnn_bn", "dw_residual"])
def test_remove_gates_is_exact_and_leaves_the_original_structure(name, splits):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    _randomize_bn(model)
    x = torch.from_numpy(splits.x_train[:64])
    types = [type(m) for m in model.modules()]
    keys = list(model.state_dict())
    gated = insert_gates(copy.deepcopy(model), x[:1], classes=10)
    _randomize_gates(gated)
    assert _hooks(gated) > 0
    with torch.no_grad():
        ref = gated.eval()(x)
    plain = remove_gates(gated)
    assert _hooks(plain) == 0 and not hasattr(plain, GATES)
    assert [type(m) for m in plain.modules()] == types
    assert list(plain.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(plain(x), ref, rtol=0, atol=1e-5)


def test_gate_goes_after_a_batch_norm_that_reads_the_conv(splits):
    model = MODELS["cnn_bn"]().eval()
    gated = insert_gates(model, torch.from_numpy(splits.x_train[:1]), classes=10)
    where = {w["layer"]: w["on"] for w in gates_of(gated).where.values()}
    assert where == {"0": "1", "3": "4"}  # conv 0 -> BN 1, conv 3 -> BN 4; classifier 8 not gated
    # without an example, a symbolic trace finds the same places
    where2 = {w["layer"]: w["on"] for w in gates_of(insert_gates(MODELS["cnn_bn"](), classes=10)).where.values()}
    assert where2 == where


def test_gates_sample_in_training_and_use_the_masked_mean_in_eval():
    g = Gate(4, axis=1, init_log_sigma2=0.0)
    with torch.no_grad():
        g.mu.copy_(torch.tensor([2.0, 0.5, -3.0, 1.0]))
        g.log_sigma2.copy_(torch.tensor([0.0, 0.0, 0.0, 5.0]))  # log alpha: 1.39, -1.39, 2.20, -5
    x = torch.ones(3, 4, 2, 2)
    out = g(x, sample=False)
    assert torch.equal(out[0, :, 0, 0], torch.tensor([2.0, 0.0, -3.0, 0.0]))
    torch.manual_seed(0)
    a, b = g(x, sample=True), g(x, sample=True)
    assert not torch.equal(a, b)
    assert torch.equal(a[:, :, 0, 0], a[:, :, 1, 1])  # one draw per sample and channel


def test_training_lowers_the_kl_and_a_large_gamma_prunes(splits):
    torch.manual_seed(0)
    model = MODELS["mlp"]()
    x, y = splits.x_train, splits.y_train
    gated = train_vib(model, x, y, epochs=4, gamma=1e-2, lr=3e-3, batch_size=100, seed=0, classes=10, gate_lr=5e-2)
    hist = gates_of(gated).history
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3, 4]
    kls = [h["kl"] for h in hist]
    assert kls[-1] < 0.7 * kls[0] and all(b <= a + 1e-6 for a, b in zip(kls, kls[1:]))
    with torch.no_grad():
        assert float(kl_total(gated)) == pytest.approx(kls[-1], rel=1e-6)
    stats = gate_stats(gated)
    assert set(stats) == {"1", "3"}
    assert sum(int((~s["mask"]).sum()) for s in stats.values()) > 0


def test_vib_prune_removes_exactly_the_units_below_the_threshold(trained, splits):
    model = trained("mlp")
    cfg = VibConfig(gamma=1e-2, epochs=5, lr=3e-3, gate_lr=5e-2, seed=0)
    pruned, report = vib_prune(model, splits.x_train, splits.y_train, cfg, classes=10)
    assert _hooks(pruned) == 0 and not hasattr(pruned, GATES)
    assert [type(m) for m in pruned.modules()] == [type(m) for m in model.modules()]
    la = report["log_alpha"]
    for name, width, nxt in (("1", 64, "3"), ("3", 32, "5")):
        below = np.asarray(la[name]) < cfg.threshold
        expect = [int(c) for c in np.flatnonzero(~below)] or [int(np.argmax(la[name]))]
        assert report["kept"][name] == expect
        layer = dict(pruned.named_modules())[name]
        assert layer.out_features == len(expect) < width  # some removed, the open ones all kept
        assert dict(pruned.named_modules())[nxt].in_features == len(expect)
    assert pruned[5].out_features == 10  # the classifier keeps its outputs
    assert report["max_abs_diff"] < 1e-4  # the pruned model is the gated model in eval mode
    assert report["macs_after"] < report["macs_before"]
    assert [h["kl"] for h in report["history"]][-1] < report["history"][0]["kl"]
    # the original is untouched
    assert model[1].out_features == 64 and _hooks(model) == 0


def test_pruned_conv_model_exports_without_gate_ops(trained, splits):
    model = trained("cnn_bn")
    cfg = VibConfig(gamma=1e-2, epochs=3, lr=3e-3, gate_lr=5e-2, batch_size=100)
    pruned, report = vib_prune(model, splits.x_train[:600], splits.y_train[:600], cfg, classes=10)
    assert report["max_abs_diff"] < 1e-4
    conv0 = pruned[0]
    assert conv0.out_channels == report["layers"][0]["channels_after"] == pruned[1].num_features
    assert pruned[3].in_channels == conv0.out_channels
    x = torch.from_numpy(splits.x_train[:1])
    ep = torch.export.export(pruned.eval(), (x,))
    names = [str(s.target) for s in ep.graph_signature.input_specs if s.target is not None]
    assert not any(k in n for n in names for k in ("mu", "sigma", "vib", "gate"))
    original = torch.export.export(model.eval(), (x,))

    def ops(program):
        return sorted(str(n.target) for n in program.graph.nodes if n.op == "call_function")

    assert ops(ep) == ops(original)  # same op sequence: no multiplication by a gate left
    torch.testing.assert_close(ep.module()(x), pruned(x))


def test_gates_on_a_lifted_graph_module(trained, splits):
    model = trained("cnn_bn").eval()
    x = torch.from_numpy(splits.x_train[:32])
    gm = lift_graph(torch.export.export(copy.deepcopy(model), (x[:1],)).module()).eval()
    gated = insert_gates(gm, x[:1], classes=10)
    assert len(gates_of(gated).where) == 2
    _randomize_gates(gated)
    with torch.no_grad():
        ref = gated(x)
    plain = remove_gates(gated)
    assert _hooks(plain) == 0
    with torch.no_grad():
        torch.testing.assert_close(plain(x), ref, rtol=0, atol=1e-5)


def test_input_gates_zero_first_layer_columns(splits):
    torch.manual_seed(0)
    model = MODELS["mlp"]().eval()
    x = torch.from_numpy(splits.x_train[:16])
    gated = insert_gates(model, x[:1], classes=10, gate_inputs=True)
    _randomize_gates(gated)
    layer, gate = gates_of(gated).input_gate()
    assert layer == "1" and gate.mu.numel() == 64
    closed = (~gate.mask().bool()).nonzero().flatten()
    assert len(closed) > 0
    with torch.no_grad():
        ref = gated(x)
    plain = remove_gates(gated)
    assert torch.all(plain[1].weight[:, closed] == 0)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), ref, rtol=0, atol=1e-5)


def test_vib_importance_ranks_by_log_alpha(trained, splits):
    import torch_pruning as tp

    model = copy.deepcopy(trained("mlp"))
    la = {"1": np.linspace(-3, 3, 64), "3": np.zeros(32)}
    imp = VibImportance(model, la, per_mac=False)
    imp.kept = {"1": list(range(64)), "3": list(range(32)), "5": list(range(10))}
    dg = tp.DependencyGraph().build_dependency(model, torch.from_numpy(splits.x_train[:1]), verbose=False)
    group = dg.get_pruning_group(model[1], tp.prune_linear_out_channels, list(range(64)))
    scores = imp(group)
    assert torch.allclose(scores.double(), torch.from_numpy(la["1"]), atol=1e-6)
    imp.kept["1"] = list(range(32, 64))  # after removing the first half
    model2 = copy.deepcopy(model)
    tp.DependencyGraph().build_dependency(model2, torch.from_numpy(splits.x_train[:1]), verbose=False) \
        .get_pruning_group(model2[1], tp.prune_linear_out_channels, list(range(32))).prune()
    imp.model = model2
    dg2 = tp.DependencyGraph().build_dependency(model2, torch.from_numpy(splits.x_train[:1]), verbose=False)
    scores2 = imp(dg2.get_pruning_group(model2[1], tp.prune_linear_out_channels, list(range(32))))
    assert torch.allclose(scores2.double(), torch.from_numpy(la["1"][32:]), atol=1e-6)


def test_vib_importance_per_mac_divides_the_information_bound_by_the_macs_saved(splits):
    """Equal gates in a conv and a linear layer: the conv channel, which feeds every position of
    its map, must rank far lower per MAC, so a global MAC loop thins the convs, not only the cheap
    fully connected layers (the LeNet-5 collapse of RESULTS.md)."""
    import torch_pruning as tp

    from tinyprune.prune.groups import group_channel_macs, output_positions

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 16), nn.ReLU(),
                          nn.Linear(16, 10)).eval()
    example = torch.from_numpy(splits.x_train[:1])
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))][:-1]
    la = {n: np.full(m.weight.shape[0], 2.0) for n, m in layers}
    imp = VibImportance(model, la, example)
    dg = tp.DependencyGraph().build_dependency(model, example, verbose=False)
    positions = output_positions(model, example)
    per_layer = {}
    for name, module in layers:
        fn = tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels
        group = dg.get_pruning_group(module, fn, list(range(module.weight.shape[0])))
        scores = imp(group).double()
        macs = group_channel_macs(group, positions)
        torch.testing.assert_close(scores, torch.log1p(torch.exp(torch.tensor(2.0))).double() / macs,
                                   rtol=1e-6, atol=0)
        per_layer[type(module).__name__] = float(scores.mean())
    assert per_layer["Conv2d"] < per_layer["Linear"] / 2  # 1,600 MACs a channel against 522 a neuron
    with pytest.raises(ConfigError):
        VibImportance(model, la)  # per MAC without an example input


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError):
        VibConfig(gamma=-1)
    with pytest.raises(ConfigError):
        VibConfig(epochs=-2)
    with pytest.raises(ConfigError):
        VibConfig(layer_gamma=(1.0, float("nan")))
    model = insert_gates(MODELS["mlp"](), classes=10)
    with pytest.raises(ConfigError):
        insert_gates(model, classes=10)  # twice
    with pytest.raises(ConfigError):
        kl_total(model, layer_gamma=[1.0])  # two gates


def test_removal_after_a_pre_activation_batch_norm_stays_exact(trained, splits):
    """concat_net: closed channels reach the 1x1 fuse conv through a BN, which turns their 0
    into a constant; that constant goes into the conv's bias before the channel is removed."""
    model = trained("concat_net")
    cfg = VibConfig(gamma=3e-3, epochs=6, lr=3e-3, gate_lr=5e-2)
    pruned, report = vib_prune(model, splits.x_train, splits.y_train, cfg, classes=10)
    assert sum(l["channels_before"] - l["channels_after"] for l in report["layers"]) > 0
    assert pruned.fuse[0].num_features < 16 + 2 * 12
    assert report["max_abs_diff"] < 1e-4


def test_vib_criterion_through_prune_to_macs(trained, splits):
    """--criterion vib: the prepare step trains and removes, kept ids follow, log alpha ranks the rest."""
    from tinyprune.config import PruneConfig
    from tinyprune.prune import prune_to_macs

    model = trained("mlp")
    x, y = splits.x_train, splits.y_train
    cfg = PruneConfig(criterion="vib", sparsity=0.0, options={"gamma": 1e-2, "epochs": 4})
    res = prune_to_macs(model, cfg, x[:300], y[:300], 10, train=(x, y))
    prepared = res.record["prepared"]
    assert res.macs_after < res.macs_before  # gamma alone removed units
    for layer in res.layers:
        assert len(res.kept[layer["name"]]) == layer["channels_after"]
    gated = {layer["name"]: layer for layer in prepared["layers"]}
    assert res.kept["1"] == gated["1"]["kept"]
    # a MAC target beyond what the gates closed: the loop continues by lowest log alpha
    deeper = prune_to_macs(model, PruneConfig(criterion="vib", sparsity=0.95, options={"gamma": 1e-2, "epochs": 4}, compensate=False),
                           x[:300], y[:300], 10, train=(x, y))
    assert deeper.macs_after <= 0.05 * deeper.macs_before * 1.02
    assert set(deeper.kept["1"]) <= set(gated["1"]["kept"])


def test_sgd_moves_the_gates_at_the_networks_rate_with_weight_decay_on_both(splits):
    """The authors' solver: SGD with momentum, the gates at the network's learning rate, L2 on all."""
    torch.manual_seed(0)
    model = MODELS["mlp"]()
    x, y = splits.x_train, splits.y_train
    gated = train_vib(model, x, y, epochs=4, gamma=0.2, lr=0.05, batch_size=50, seed=0, classes=10,
                      optimizer="sgd", weight_decay=1e-3)
    registry = gates_of(gated)
    assert registry.gate_lr == 0.05
    kls = [h["kl"] for h in registry.history]
    assert kls[-1] < 0.7 * kls[0]
    stats = gate_stats(gated)
    assert sum(int((~s["mask"]).sum()) for s in stats.values()) > 0
    # without the KL, weight decay alone pulls log sigma^2 from -9 towards 0 and mu towards 0
    plain = train_vib(MODELS["mlp"](), x, y, epochs=2, gamma=0.0, lr=0.05, batch_size=50, seed=0, classes=10,
                      optimizer="sgd", weight_decay=0.1)
    g = next(iter(gates_of(plain).gates.values()))
    assert float(g.log_sigma2.detach().mean()) > -8.5


def test_vib_optimizer_settings_are_checked():
    with pytest.raises(ConfigError, match="--vib-optimizer"):
        VibConfig(optimizer="rmsprop")
    with pytest.raises(ConfigError, match="--vib-weight-decay"):
        VibConfig(weight_decay=-1e-4)
