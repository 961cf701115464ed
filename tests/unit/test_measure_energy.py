"""The 45 nm energy model: table values, precision, memory tiers, per-layer arithmetic."""

from __future__ import annotations

import pytest

from tinyprune import targets
from tinyprune.measure import energy


def layer(macs=0, elements=0, params=0, weight_bytes=0, activation_bytes=0, dtype="int8", kind="conv"):
    return {"index": 0, "name": "l", "op": "X", "kind": kind, "input_shapes": [], "output_shapes": [], "dtype": dtype,
            "params": params, "macs": macs, "flops": 2 * macs, "elements": elements, "weight_bytes": weight_bytes,
            "activation_bytes": activation_bytes}


def test_table_holds_the_horowitz_values():
    t = energy.table()
    assert t["compute_pj"] == {"int8_add": 0.03, "int8_mult": 0.2, "int32_add": 0.1, "int32_mult": 3.1,
                               "fp16_add": 0.4, "fp16_mult": 1.1, "fp32_add": 0.9, "fp32_mult": 3.7}
    assert [m["read_64bit_pj"] for m in t["memory"]] == [10.0, 20.0, 100.0, 1300.0]


def test_mac_energy_by_precision():
    assert energy.op_energy_pj("int8") == pytest.approx((0.3, 0.1))  # 8-bit multiply, 32-bit accumulate
    assert energy.op_energy_pj("fp32") == pytest.approx((4.6, 0.9))
    assert energy.op_energy_pj("fp16") == pytest.approx((1.5, 0.4))
    assert energy.precision_of("int8") == "int8" and energy.precision_of("float32") == "fp32"
    assert energy.precision_of("uint8") == "int8" and energy.precision_of("float16") == "fp16"


@pytest.mark.parametrize("nbytes, name", [(100, "SRAM 8 KB"), (8192, "SRAM 8 KB"), (8193, "SRAM 32 KB"),
                                          (500_000, "SRAM 1 MB"), (2_000_000, "DRAM")])
def test_memory_tier(nbytes, name):
    assert energy.memory_tier(nbytes)["name"] == name


def test_layer_energy_by_hand():
    l = layer(macs=1000, params=100, weight_bytes=120, activation_bytes=800)
    e = energy.layer_energy([l], working_set_bytes=800)
    row = e["layers"][0]
    assert row["compute_pj"] == pytest.approx(1000 * 0.3)
    assert row["weights_pj"] == pytest.approx(15 * 10.0)  # 120 B = 15 64-bit reads from an 8 KB SRAM
    assert row["activations_pj"] == pytest.approx(100 * 10.0)
    assert e["totals"]["total_pj"] == pytest.approx(300 + 150 + 1000)


def test_same_graph_as_float_costs_more_than_int8():
    layers = [layer(macs=50_000, params=5_000, weight_bytes=5_000, activation_bytes=4_000),
              layer(elements=1_000, activation_bytes=2_000, kind="pool")]
    s = energy.summary(layers, working_set_bytes=6_000)
    f = s["floor_45nm"]
    assert f["as_int8_uj"] == pytest.approx(f["total_uj"], rel=0.05)
    assert f["as_fp32_uj"] > 10 * f["as_int8_uj"]
    # float weights (20 kB) no longer fit the 8 KB tier: they are charged at the 32 KB SRAM
    assert energy.layer_energy(layers, 6_000, "fp32")["weight_memory"]["name"] == "SRAM 32 KB"
