"""Host latency statistics (the target's latency is the deployed costs': test_device_costs.py)."""

from __future__ import annotations

import pytest

from tinyprune.measure.latency import stats


def test_stats_median_and_spread():
    s = stats([0.001, 0.002, 0.003, 0.010], warmup=2)
    assert s["median_ms"] == pytest.approx(2.5) and s["min_ms"] == pytest.approx(1) and s["max_ms"] == pytest.approx(10)
    assert s["p25_ms"] <= s["median_ms"] <= s["p75_ms"] and s["repeats"] == 4 and s["warmup"] == 2
