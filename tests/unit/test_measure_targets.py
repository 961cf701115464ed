"""The extended target files: cost-model fields, TFLM op lists, validation of the new keys."""

from __future__ import annotations

import dataclasses

import pytest

from tinyprune import targets
from tinyprune.errors import ConfigError

ALL = ["cortex-m0plus", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55", "esp32-s3"]


def test_all_targets_load_with_cost_model():
    assert set(ALL) <= set(targets.names())
    for name in ALL:
        t = targets.load(name)
        assert set(t.macs_per_cycle) == set(t.macs_per_cycle_reference) == set(targets.MAC_KINDS)
        assert set(t.cycles_per_element) == set(targets.ELEMENT_KINDS)
        assert t.pj_per_cycle > 0 and t.runtime_flash_bytes > 0 and t.runtime_ram_bytes > 0 and t.calibration
        assert t.supports("CONV_2D") and t.supports("TFLM_DECODE") and not t.supports("GELU")
        # optimized kernels are never slower than the portable reference ones for conv
        assert t.macs_per_cycle["conv"] >= t.macs_per_cycle_reference["conv"]


def test_tflm_op_lists_are_real_builtin_operators():
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as s

    builtins = {k for k in vars(s.BuiltinOperator) if not k.startswith("_")}
    for name in ALL:
        ops = targets.load(name).tflm_ops
        assert set(ops) <= builtins and len(set(ops)) == len(ops)
        assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "SOFTMAX", "ADD", "MEAN"} <= set(ops)


def test_relative_speed_of_cores_per_cycle():
    m0, m4, m55 = (targets.load(n).macs_per_cycle["conv"] for n in ("cortex-m0plus", "cortex-m4", "cortex-m55"))
    assert m0 < m4 < m55
    # the M4 file carries the MLPerf Tiny calibration (NUCLEO-L4R5ZI board energy 340-390 pJ/cycle)
    assert 340 <= targets.load("cortex-m4").pj_per_cycle <= 390


def test_target_stays_frozen_and_hashable():
    t = targets.load("cortex-m4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.clock_hz = 1
    assert hash(t) == hash(targets.load("cortex-m4"))
    d = t.to_dict()
    assert d["tflm_ops"] == list(t.tflm_ops) and d["macs_per_cycle"]["conv"] == t.macs_per_cycle["conv"]


@pytest.mark.parametrize("change, message", [
    ({"macs_per_cycle": {"conv": 1.0, "depthwise_conv": 1.0}}, "missing fully_connected"),
    ({"macs_per_cycle": {"conv": 1.0, "depthwise_conv": 1.0, "fully_connected": 1.0, "lstm": 1.0}}, "unknown lstm"),
    ({"macs_per_cycle_reference": {"conv": 0, "depthwise_conv": 1.0, "fully_connected": 1.0}}, "must be a number > 0"),
    ({"cycles_per_element": {"elementwise": -1, "pool": 1, "softmax": 1, "data_movement": 1}}, ">= 0"),
    ({"pj_per_cycle": "360"}, "'pj_per_cycle' must be a number"),
    ({"pj_per_cycle": True}, "'pj_per_cycle' must be a number"),
    ({"runtime_ram_bytes": -4}, "integer >= 0"),
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
