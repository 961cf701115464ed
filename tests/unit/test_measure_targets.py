"""The target files: energy range, TFLM op lists, validation (retired cost-model keys named)."""

from __future__ import annotations

import dataclasses

import pytest

from tinyprune import targets
from tinyprune.errors import ConfigError

ALL = ["cortex-m0plus", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55", "esp32-s3"]


def test_all_targets_load_with_their_energy_range():
    assert set(ALL) <= set(targets.names())
    assert "device_model" not in targets.names()  # the device model beside them is not a target
    for name in ALL:
        t = targets.load(name)
        assert 0 < t.pj_per_cycle_low <= t.pj_per_cycle <= t.pj_per_cycle_high and t.energy_source and t.calibration
        assert t.supports("CONV_2D") and t.supports("TFLM_DECODE") and not t.supports("GELU")


def test_tflm_op_lists_are_real_builtin_operators():
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as s

    builtins = {k for k in vars(s.BuiltinOperator) if not k.startswith("_")}
    for name in ALL:
        ops = targets.load(name).tflm_ops
        assert set(ops) <= builtins and len(set(ops)) == len(ops)
        assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "SOFTMAX", "ADD", "MEAN"} <= set(ops)


def test_the_m4_energy_is_its_mlperf_tiny_boards():
    from tinyprune.measure import runtimes

    board = runtimes.energy_board("cortex-m4")
    assert board["board"] == "NUCLEO-L4R5ZI"
    assert targets.load("cortex-m4").pj_per_cycle == pytest.approx(board["pj_per_cycle"])


def test_target_stays_frozen_and_hashable():
    t = targets.load("cortex-m4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.clock_hz = 1
    assert hash(t) == hash(targets.load("cortex-m4"))
    d = t.to_dict()
    assert d["tflm_ops"] == list(t.tflm_ops) and d["pj_per_cycle"] == t.pj_per_cycle


@pytest.mark.parametrize("change, message", [
    ({"macs_per_cycle": {"conv": 1.0}}, "macs_per_cycle no longer used"),
    ({"runtime_ram_bytes": 4096, "op_overhead_cycles": 1}, "op_overhead_cycles, runtime_ram_bytes no longer used"),
    ({"pj_per_cycle": "360"}, "'pj_per_cycle' must be a number"),
    ({"pj_per_cycle": True}, "'pj_per_cycle' must be a number"),
    ({"pj_per_cycle": 1000.0}, "pj_per_cycle must lie within"),
    ({"decompression_ram_bytes": -4}, "integer >= 0"),
    ({"tflm_ops": "CONV_2D"}, "list of op names"),
    ({"tflm_ops": ["CONV_2D", 3]}, "list of op names"),
])
def test_invalid_cost_model_is_rejected(change, message):
    raw = targets.load("cortex-m4").to_dict() | change
    with pytest.raises(ConfigError, match=message):
        targets._validate("cortex-m4", raw)


def test_missing_cost_key_is_rejected():
    raw = targets.load("cortex-m4").to_dict()
    del raw["tflm_ops"]
    with pytest.raises(ConfigError, match="missing key 'tflm_ops'"):
        targets._validate("cortex-m4", raw)
