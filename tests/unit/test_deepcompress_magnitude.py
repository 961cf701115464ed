"""Stage 1: per-layer magnitude masks and keeping them during fine-tuning."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from tinyprune.deepcompress.magnitude import (
    apply_masks, finetune_pruned, keep_masks, magnitude_masks, sparsity, weight_layers,
)
from tinyprune.errors import ConfigError


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def test_weight_layers_names_kinds():
    assert [(n, k) for n, _, k in weight_layers(_model())] == [("0.weight", "conv"), ("3.weight", "fc")]


def test_masks_remove_smallest_magnitudes_per_layer():
    model = _model()
    masks = magnitude_masks(model, 0.75, overrides={"0": 0.5})
    assert sparsity(masks) == pytest.approx({"0.weight": 0.5, "3.weight": 0.75}, abs=1e-3)
    for name, param in model.named_parameters():
        if name in masks:
            kept, pruned = param[masks[name]].abs(), param[~masks[name]].abs()
            assert kept.min() >= pruned.max()


def test_override_by_parameter_name_and_unknown_name():
    model = _model()
    assert sparsity(magnitude_masks(model, 0.0, {"3.weight": 0.9}))["3.weight"] == pytest.approx(0.9, abs=1e-3)
    with pytest.raises(ConfigError, match="unknown layer 'nope'"):
        magnitude_masks(model, 0.5, {"nope": 0.5})
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        magnitude_masks(model, 1.0)


def test_apply_masks_writes_positive_zero():
    model = _model()
    masks = magnitude_masks(model, 0.5)
    apply_masks(model, masks)
    w = model[0].weight.detach()
    assert (w[~masks["0.weight"]].numpy().view(np.uint32) == 0).all()  # +0.0, not -0.0


def test_masks_survive_an_optimizer_with_momentum():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))

    def step():
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(3):
        step()  # dense steps fill the momentum buffers of weights about to be pruned
    masks = magnitude_masks(model, 0.8)
    with keep_masks(model, masks):
        for _ in range(3):
            step()
        # Momentum alone moved the pruned weights despite their zeroed gradients ...
        assert (model[3].weight[~masks["3.weight"]] != 0).any()
        model(x)  # ... and the forward pre-hook zeroes them before they are used.
    for name, param in model.named_parameters():
        if name in masks:
            assert (param[~masks[name]] == 0).all()
            assert (param[masks[name]] != 0).any()


def test_finetune_pruned_keeps_zeros():
    model = _model()
    masks = magnitude_masks(model, 0.9)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 32).astype(np.int64)
    finetune_pruned(model, masks, x, y, epochs=2, lr=1e-2, batch_size=8)
    for name, param in model.named_parameters():
        if name in masks:
            assert (param[~masks[name]] == 0).all()
