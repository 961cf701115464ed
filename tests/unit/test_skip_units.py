import numpy as np
import torch
import torch.nn as nn

from tinyprune.config import DataConfig, PruneConfig
from tinyprune.data import prepare
from tinyprune.prune import prune_to_macs
from tinyprune.prune.skip_units import as_graph, cluster_policies, find_units, recalibrate_bn, remove_units
from tinyprune.testing import MODELS
from tinyprune.train import accuracy

X = torch.rand(4, 1, 8, 8)


def test_finds_residual_and_concat_units():
    for name, kind in (("dw_residual", "residual"), ("concat_net", "concat")):
        units = find_units(as_graph(MODELS[name]().eval(), X[:1]))
        assert [u.kind for u in units] == [kind, kind]
    assert find_units(as_graph(MODELS["cnn_bn"]().eval(), X[:1])) == []


def test_removing_a_residual_unit_leaves_its_shortcut():
    model = MODELS["dw_residual"]().eval()
    gm = as_graph(model, X[:1])
    units = find_units(gm)
    pruned = remove_units(gm, {units[1].node})
    # without block2's branch the network is stem -> block1 -> relu(identity) -> head
    with torch.no_grad():
        want = model.head(torch.relu(model.block1(model.stem(X))).mean((2, 3)))
    torch.testing.assert_close(pruned(X), want)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def test_removing_concat_units_slices_the_consumers():
    model = MODELS["concat_net"]().eval()
    gm = as_graph(model, X[:1])
    for names in ({"cat"}, {"cat_1"}, {"cat", "cat_1"}):
        pruned = remove_units(gm, names)
        assert pruned(X).shape == (4, 10)
        convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d)]
        assert convs[-1].in_channels == 16 + 12 * (2 - len(names))


def test_cluster_policies_keep_the_shallowest_unit_of_each_cluster():
    mi = [0.50, 0.51, 0.90, 0.52, 0.91]
    policies = dict(cluster_policies(mi, resolutions=(0.005, 0.015, 0.5)))
    assert policies[0.005] == set()
    assert policies[0.015] == {1, 3, 4}  # clusters {0,1,3} and {2,4}: heads 0 and 2 stay
    assert policies[0.5] == {1, 2, 3, 4}


def test_mspic_removes_a_unit_and_keeps_accuracy(trained, digits):
    model = trained("concat_net").eval()
    splits = prepare(digits, model, DataConfig(), 0)
    x, y = splits.x_train[:600], splits.y_train[:600]
    res = prune_to_macs(model, PruneConfig(criterion="mspic", sparsity=0.4, compensate=False), x, y, classes=10)
    units = res.record["skip_unit_stages"]
    assert units and units[0]["removed"], units
    assert len(units[0]["mi"]) == 2 and all(0 <= v <= np.log(10) + 1e-6 for v in units[0]["mi"])
    assert res.macs_after <= 0.6 * res.macs_before * 1.02
    # the stage's error threshold (5 points on the analysis samples) holds before any retraining
    assert units[0]["error"] <= units[0]["base_error"] + 0.05
    assert accuracy(res.model, splits.x_eval, splits.y_eval) > accuracy(model, splits.x_eval, splits.y_eval) - 0.15


def test_recalibrated_batch_norms_hold_the_statistics_of_the_pruned_network():
    # After a branch is removed, each BN's running statistics are those of what now reaches it,
    # measured over the samples (cumulative average), and no weight moves.
    torch.manual_seed(0)
    model = MODELS["dw_residual"]().eval()
    gm = remove_units(as_graph(model, X[:1]), {find_units(as_graph(model, X[:1]))[0].node})
    x = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
    weights = {k: v.clone() for k, v in gm.state_dict().items() if "running" not in k and "num_batches" not in k}
    seen = {}
    bns = [m for m in gm.modules() if isinstance(m, nn.BatchNorm2d)]
    hooks = [b.register_forward_pre_hook(lambda m, a: seen.setdefault(m, []).append(a[0].detach())) for b in bns]
    recalibrate_bn(gm, x, batch_size=16)
    for h in hooks:
        h.remove()
    assert not gm.training and bns
    for b in bns:
        inputs = torch.cat(seen[b])
        torch.testing.assert_close(b.running_mean, inputs.mean((0, 2, 3)), atol=1e-5, rtol=1e-4)
        assert b.momentum == 0.1  # restored
    assert all(torch.equal(v, gm.state_dict()[k]) for k, v in weights.items())
