"""The flow criterion: conditional variances, hidden-channel divergence, sensitivity weights."""

import copy

import numpy as np
import torch
import torch.nn as nn

from tinyprune.config import PruneConfig
from tinyprune.prune import prune_to_macs
from tinyprune.prune.flow import FlowImportance, conditional_variance, hidden_channels_divergence
from tinyprune.testing import MODELS
from tinyprune.train import outputs


def test_a_repeated_channel_adds_no_conditional_variance():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 5000))
    x = torch.tensor(np.stack([a, b, a], 1))  # channel 2 repeats channel 0
    cond = conditional_variance(torch.cov(x.T))
    assert cond[1] > 0.9  # independent: keeps its variance
    assert cond[0] < 0.01 and cond[2] < 0.01  # each is predicted by the other
    assert torch.allclose(conditional_variance(torch.cov(x.T), conditional=False), torch.cov(x.T).diagonal())


def _forward(model, x):
    return torch.from_numpy(outputs(model, x))


def _group(model, example, layer, idxs):
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(model, example)
    return graph.get_pruning_group(layer, tp.prune_conv_out_channels if isinstance(layer, nn.Conv2d)
                                   else tp.prune_linear_out_channels, idxs)


def test_hiding_channels_from_their_consumers_is_removing_them():
    torch.manual_seed(0)
    model = MODELS["cnn_bn"]().eval()
    x = np.random.default_rng(1).random((32, 1, 8, 8), dtype=np.float32)
    example = torch.from_numpy(x[:1])
    reference = _forward(model, x)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    everything = _group(model, example, conv, list(range(conv.out_channels)))
    assert hidden_channels_divergence(model, x, everything, [], reference, classify=True) == 0.0
    hidden = hidden_channels_divergence(model, x, everything, [0, 2], reference, classify=True)

    pruned = copy.deepcopy(model)
    conv_copy = next(m for m in pruned.modules() if isinstance(m, nn.Conv2d))
    _group(pruned, example, conv_copy, [0, 2]).prune()
    out = _forward(pruned.eval(), x)
    ref = torch.log_softmax(reference.double(), -1)
    removed = float((ref.exp() * (ref - torch.log_softmax(out.double(), -1))).sum(-1).mean())
    assert hidden > 1e-4
    assert abs(hidden - removed) < 1e-6 * max(1.0, removed)
    # the model is left as it was: no hook remains
    assert torch.equal(_forward(model, x), reference)


class TwoBranches(nn.Module):
    """Two identical branches; the second reaches the output 1000x weaker."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(8, 16)
        self.head_a, self.head_b = nn.Linear(16, 10), nn.Linear(16, 10)
        self.b.load_state_dict(self.a.state_dict())
        self.head_b.load_state_dict(self.head_a.state_dict())

    def forward(self, x):
        return self.head_a(torch.relu(self.a(x))) + 1e-3 * self.head_b(torch.relu(self.b(x)))


def test_sensitivity_thins_the_branch_the_output_does_not_need():
    torch.manual_seed(0)
    model = TwoBranches().eval()
    x = np.random.default_rng(0).normal(size=(256, 8)).astype(np.float32)
    y = np.arange(256) % 10
    plain = prune_to_macs(model, PruneConfig(criterion="flow", sparsity=0.3, compensate=False), x, y, classes=10)
    weighted = prune_to_macs(model, PruneConfig(criterion="flow", sparsity=0.3, options={"sensitivity": True}, compensate=False),
                             x, y, classes=10)
    plain_w = {lay["name"]: lay["channels_after"] for lay in plain.layers}
    weighted_w = {lay["name"]: lay["channels_after"] for lay in weighted.layers}
    # identical branches rank alike without the weights; with them the weak branch goes first
    assert abs(plain_w["a"] - plain_w["b"]) <= 1
    assert weighted_w["b"] < weighted_w["a"] and weighted_w["a"] >= 15
    assert weighted.macs_after <= 0.7 * weighted.macs_before * 1.02


def test_sensitivity_weights_are_measured_once_per_group_on_the_unpruned_model():
    torch.manual_seed(0)
    model = MODELS["cnn_bn"]().eval()
    x = np.random.default_rng(1).random((64, 1, 8, 8), dtype=np.float32)
    imp = FlowImportance(model, x, sensitivity=True, sparsity=0.5, y=np.arange(64) % 10)
    assert imp.classify and 0.25 < imp.probe < 0.3
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    group = _group(model, torch.from_numpy(x[:1]), conv, list(range(conv.out_channels)))
    scores = imp(group)
    assert scores.shape == (conv.out_channels,) and torch.isfinite(scores).all()
    assert len(imp.weights) == 1 and next(iter(imp.weights.values())) > 0
    regress = FlowImportance(model, x, sensitivity=True, y=np.zeros(64, dtype=np.float32))
    assert not regress.classify
