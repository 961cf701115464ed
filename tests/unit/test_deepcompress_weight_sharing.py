"""Stage 2: k-means weight sharing with linear init, and centroid fine-tuning."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from tinyprune.deepcompress.magnitude import apply_masks, magnitude_masks
from tinyprune.deepcompress.weight_sharing import (
    BitsSpec, centroid_step, cluster_model, cluster_weight, finetune_centroids, grouped_gradient, kmeans_1d,
    linear_init, parse_bits,
)
from tinyprune.errors import ConfigError


def _problem(seed=0, n=96):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 12)).astype(np.float32)
    y = (x[:, :3].argmax(1)).astype(np.int64)  # a learnable three-class rule
    return x, y


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 3))


def _loss(model, x, y):
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)))


def test_parse_bits():
    assert parse_bits("5") == BitsSpec(5, 5)
    assert parse_bits("conv=8,fc=5") == BitsSpec(8, 5)
    assert parse_bits("fc=3") == BitsSpec(8, 3)
    assert parse_bits(4).for_kind("conv") == 4
    for bad in ("0", "16", "conv=x", "bn=3", "conv:8"):
        with pytest.raises(ConfigError):
            parse_bits(bad)


def test_linear_init_spans_min_max():
    v = torch.tensor([0.3, -1.5, 2.0, 0.7])
    c = linear_init(v, 8)
    assert c[0] == pytest.approx(-1.5) and c[-1] == pytest.approx(2.0)
    assert torch.allclose(c.diff(), torch.full((7,), 3.5 / 7, dtype=torch.float64))


def test_kmeans_assigns_each_value_to_its_nearest_centroid():
    v = torch.randn(5000, generator=torch.Generator().manual_seed(1))
    codebook, labels = kmeans_1d(v, 16)
    assert codebook.dtype == torch.float32 and codebook.numel() <= 16
    dist = (v[:, None] - codebook[None, :]).abs()
    assert torch.all(dist.gather(1, labels[:, None]).squeeze(1) <= dist.min(1).values + 1e-6)
    # Lloyd's fixed point: every centroid is the mean of its members.
    means = torch.zeros(codebook.numel()).index_add_(0, labels, v) / torch.bincount(labels)
    assert torch.allclose(codebook, means, atol=1e-5)


def test_fewer_distinct_values_than_clusters_is_lossless():
    v = torch.tensor([0.5, -0.25, 0.5, 0.125, -0.25])
    codebook, labels = kmeans_1d(v, 32)
    assert codebook.numel() == 3 and torch.equal(codebook[labels], v)


@pytest.mark.parametrize("bits", [1, 2, 3, 5])
def test_cluster_model_bounds_distinct_values_and_keeps_zeros(bits):
    model = nn.Sequential(nn.Conv2d(2, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    masks = magnitude_masks(model, 0.6)
    apply_masks(model, masks)
    layers = cluster_model(model, bits, masks)
    params = dict(model.named_parameters())
    for layer in layers:
        w = params[layer.name].detach()
        assert torch.equal(w, layer.weight())
        assert (w[~layer.mask] == 0).all()
        assert torch.unique(w[layer.mask]).numel() <= 2 ** bits
        assert layer.k <= 2 ** bits and layer.index.dtype == torch.uint8
        assert set(layer.to_dict()) >= {"name", "shape", "bits", "codebook"}


def test_int16_indices_above_8_bits():
    layer = cluster_weight("w", "fc", torch.randn(64, 64), 10)
    assert layer.index.dtype == torch.int16 and layer.k <= 1024
    assert torch.unique(layer.weight()).numel() <= 1024


def test_grouped_gradient_is_sum_of_member_gradients():
    weight = torch.tensor([[0.9, 0.0, -0.5], [1.1, -0.6, 0.0]])
    layer = cluster_weight("w", "fc", weight, 1)  # two clusters: {-0.5, -0.6} and {0.9, 1.1}
    grad = torch.tensor([[1.0, 100.0, 2.0], [3.0, 4.0, 100.0]])  # pruned entries must not count
    assert torch.allclose(grouped_gradient(grad, layer), torch.tensor([2.0 + 4.0, 1.0 + 3.0]))
    new = centroid_step(layer.codebook, grad, layer, lr=0.1)
    assert torch.allclose(new, layer.codebook - 0.1 * torch.tensor([6.0, 4.0]))


def test_finetune_step_moves_centroid_by_lr_times_summed_gradients():
    x, y = _problem()
    model = _mlp()
    layers = cluster_model(model, 2)
    # Reference: autograd gradient of the shared weights, summed per cluster by hand.
    nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    expected = {}
    for layer in layers:
        grad = dict(model.named_parameters())[layer.name].grad
        sums = torch.stack([grad[(layer.index.long() == c) & layer.mask].sum() for c in range(layer.k)])
        expected[layer.name] = layer.codebook - 0.05 * sums
    model.zero_grad()
    tuned = finetune_centroids(model, layers, x, y, epochs=1, lr=0.05, batch_size=len(x), train_other=False)
    for layer in tuned:
        assert torch.allclose(layer.codebook, expected[layer.name], atol=1e-6)


def test_centroid_finetune_lowers_loss_and_keeps_structure():
    x, y = _problem()
    model = _mlp()
    for _ in range(200):  # a quick dense pre-train, so quantization has something to lose
        model.zero_grad()
        nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.2 * p.grad
    masks = magnitude_masks(model, 0.5)
    apply_masks(model, masks)
    layers = cluster_model(model, 2, masks)
    before = _loss(model, x, y)
    tuned = finetune_centroids(model, layers, x, y, epochs=30, lr=0.01, batch_size=32)
    assert _loss(model, x, y) < before
    params = dict(model.named_parameters())
    for old, new in zip(layers, tuned):
        w = params[new.name].detach()
        assert torch.equal(new.index, old.index) and torch.equal(new.mask, old.mask)
        assert torch.equal(w, new.weight()) and (w[~new.mask] == 0).all()
        assert torch.unique(w[new.mask]).numel() <= 4
