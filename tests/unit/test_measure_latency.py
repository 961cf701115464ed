"""Latency prediction: the per-op formula, and the cortex-m4 calibration against MLPerf Tiny."""

from __future__ import annotations

import dataclasses

import pytest

from tinyprune import targets
from tinyprune.measure.latency import layer_cycles, predict, stats


def rec(kind, macs=0, elements=0, dtype="int8"):
    return {"index": 0, "name": kind, "op": kind.upper(), "kind": kind, "input_shapes": [], "output_shapes": [],
            "dtype": dtype, "params": 0, "macs": macs, "flops": 2 * macs, "elements": elements, "weight_bytes": 0,
            "activation_bytes": 0}


def test_layer_cycles_formula():
    t = targets.load("cortex-m4")
    conv = rec("conv", macs=100_000)
    assert layer_cycles(conv, t) == pytest.approx(t.op_overhead_cycles + 100_000 / t.macs_per_cycle["conv"])
    assert layer_cycles(conv, t, "reference") == pytest.approx(
        t.op_overhead_cycles + 100_000 / t.macs_per_cycle_reference["conv"])
    pool = rec("pool", elements=4_000)
    assert layer_cycles(pool, t) == pytest.approx(t.op_overhead_cycles + 4_000 * t.cycles_per_element["pool"])
    flt = rec("conv", macs=100_000, dtype="float32")
    assert layer_cycles(flt, t) == pytest.approx(t.op_overhead_cycles + 100_000 / t.float_macs_per_cycle)
    p = predict([conv, pool], t)
    assert p["ms"] == pytest.approx(p["cycles"] / t.clock_hz * 1e3)
    assert predict([conv], targets.load("cortex-m55"))["ms"] < predict([conv], t)["ms"]


def kws():  # MLPerf Tiny DS-CNN as the TFLite graph runs it (pad, conv, 4 x (dw, pw), pool, fc, softmax)
    out = [rec("data_movement", elements=54 * 13), rec("conv", macs=25 * 5 * 64 * 40)]
    for _ in range(4):
        out += [rec("depthwise_conv", macs=25 * 5 * 64 * 9), rec("conv", macs=25 * 5 * 64 * 64)]
    return out + [rec("pool", elements=64 * 125), rec("data_movement"), rec("fully_connected", macs=64 * 12),
                  rec("softmax", elements=12)]


def resnet8():
    out = [rec("conv", macs=32 * 32 * 16 * 27)]
    for cin, cout, hw in ((16, 16, 32), (16, 32, 16), (32, 64, 8)):
        out += [rec("conv", macs=hw * hw * cout * 9 * cin), rec("conv", macs=hw * hw * cout * 9 * cout)]
        if cin != cout:
            out.append(rec("conv", macs=hw * hw * cout * cin))
        out.append(rec("elementwise", elements=hw * hw * cout))
    return out + [rec("pool", elements=64 * 64), rec("data_movement"), rec("fully_connected", macs=640),
                  rec("softmax", elements=10)]


def autoencoder():
    widths = [640, 128, 128, 128, 128, 8, 128, 128, 128, 128, 640]
    return [rec("fully_connected", macs=a * b) for a, b in zip(widths, widths[1:])]


@pytest.mark.parametrize("model, ref_ms, opt_ms", [(kws, 181.9, 75.1), (resnet8, 704.0, 226.8),
                                                   (autoencoder, 10.05, 7.57)])
def test_cortex_m4_reproduces_mlperf_tiny_anchors(model, ref_ms, opt_ms):
    """NUCLEO-L4R5ZI at 120 MHz: TFLM reference kernels / X-CUBE-AI (benchmarks/latency_anchors.py)."""
    t = dataclasses.replace(targets.load("cortex-m4"), clock_hz=120_000_000)
    assert predict(model(), t, "reference")["ms"] == pytest.approx(ref_ms, rel=0.05)
    assert predict(model(), t, "optimized")["ms"] == pytest.approx(opt_ms, rel=0.05)


def test_stats_median_and_spread():
    s = stats([0.001, 0.002, 0.003, 0.010], warmup=2)
    assert s["median_ms"] == pytest.approx(2.5) and s["min_ms"] == pytest.approx(1) and s["max_ms"] == pytest.approx(10)
    assert s["p25_ms"] <= s["median_ms"] <= s["p75_ms"] and s["repeats"] == 4 and s["warmup"] == 2
