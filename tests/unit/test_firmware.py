"""Firmware file generation: TFLM resolver method names and the arena constant."""

import pytest

from tinyprune.export.firmware import arena_size, resolver_method


@pytest.mark.parametrize("op, method", [
    ("CONV_2D", "AddConv2D"), ("DEPTHWISE_CONV_2D", "AddDepthwiseConv2D"), ("FULLY_CONNECTED", "AddFullyConnected"),
    ("MAX_POOL_2D", "AddMaxPool2D"), ("AVERAGE_POOL_2D", "AddAveragePool2D"), ("RELU6", "AddRelu6"),
    ("HARD_SWISH", "AddHardSwish"), ("CONCATENATION", "AddConcatenation"), ("TFLM_DECODE", "AddDecode"),
    ("BATCH_MATMUL", "AddBatchMatMul"), ("L2_NORMALIZATION", "AddL2Normalization"), ("MEAN", "AddMean"),
])
def test_resolver_methods_are_tflms(op, method):
    assert resolver_method(op) == method


def test_arena_constant_has_a_margin_and_tflm_alignment():
    assert arena_size(7680) == 8704  # 7680 + 1 KiB (10 % would be less)
    assert arena_size(100_000) == 110_000  # 10 %, already a multiple of 16
    assert all(arena_size(n) % 16 == 0 and arena_size(n) >= n + 1024 for n in (1, 17, 4095, 123_457))
