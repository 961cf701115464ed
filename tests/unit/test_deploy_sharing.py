"""Deployment-aware weight sharing: which layers a LUT can pay for, and the shared model itself."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from tinyprune.deepcompress.deploy import SharingConfig, candidates, lut_saving, share
from tinyprune.errors import ConfigError


def test_lut_saving_counts_indices_tables_and_the_decode_op():
    # 64x64 FC at 4 bits: 4096 bytes -> 2048 of indices + 64 tables of 16 + metadata + DECODE op
    assert lut_saving(4096, 64, 4) == 4096 - (2048 + 64 * 16 + 16 + 400)
    assert lut_saving(4096, 64, 7) < 0  # 64 tables of 128 values outweigh what 7-bit indices save
    assert lut_saving(100, 4, 2) < 0  # a small layer never pays for its DECODE op


def test_candidates_are_the_layers_a_lut_can_shrink():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(8 * 36, 128), nn.ReLU(), nn.Linear(128, 10))
    # the conv's 72 weights never pay; the head's 1,280 save a little at 4 bits
    assert [n for n, _, _ in candidates(model, 4)] == ["2.weight", "4.weight"]
    # at 7 bits each of the 128 output channels needs a 128-entry table: no layer pays
    assert candidates(model, 7) == []


def test_sharing_config_rejects_widths_tflm_cannot_decode():
    with pytest.raises(ConfigError, match="1..7"):
        SharingConfig(min_bits=8)
    with pytest.raises(ConfigError):
        SharingConfig(epochs=-1)


def test_shared_layers_hold_at_most_2_to_the_bits_values_and_the_rest_is_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    x = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
    y = np.arange(64) % 10
    shared = share(model, ["1.weight"], 3, x, y, SharingConfig(epochs=1), seed=0)
    assert len(torch.unique(shared[1].weight)) <= 8
    assert len(torch.unique(shared[3].weight)) > 8  # but are not shared
    assert len(torch.unique(model[1].weight)) > 8  # the input model is left alone
    again = share(model, ["1.weight"], 3, x, y, SharingConfig(epochs=1), seed=0)
    assert torch.equal(again[1].weight, shared[1].weight)  # same seed, same weights
