"""Progress without a terminal (CI logs): a line at least every 15 s of a long pruning, tested on
a fake clock that a slow fake criterion advances, not by timing real work."""

import io
import re
import sys
import time

import numpy as np
import pytest
import torch

from tinyprune.cli_progress import FINISHED, RUNNING, STARTED, StageLines
from tinyprune.config import DataConfig, PruneConfig
from tinyprune.data import prepare
from tinyprune.prune import protocol, prune_to_macs
from tinyprune.prune.protocol import Criterion, register
from tinyprune.testing import MODELS


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Log(io.StringIO):
    """stderr that notes the (fake) time of every line."""

    def __init__(self, clock):
        super().__init__()
        self.clock, self.lines = clock, []

    def write(self, text):
        self.lines += [(self.clock(), line) for line in text.splitlines() if line]
        return super().write(text)


SECONDS_PER_RANKING = 1.5  # what each channel ranking of the fake criterion "takes"


def _slow_criterion(clock):
    class Slow(Criterion):
        """L1 ranking that takes SECONDS_PER_RANKING of the fake clock per group ranked."""

        name = "test-slow"
        description = "test only"

        def importance(self, model, ctx, step):
            l1 = protocol.build("l1").importance(model, ctx, step)

            def rank(group, *args, **kwargs):
                clock.now += SECONDS_PER_RANKING
                return l1(group, *args, **kwargs)

            return rank

    return Slow


@pytest.fixture
def slow_pruning(digits):
    clock = Clock()
    register(_slow_criterion(clock))
    torch.manual_seed(0)
    model = MODELS["mlp"]()
    splits = prepare(digits, model.eval(), DataConfig(), seed=0)
    yield clock, model, splits
    protocol.CRITERIA.pop("test-slow")


def test_a_long_pruning_prints_a_line_at_least_every_15_seconds_without_a_terminal(slow_pruning, monkeypatch):
    clock, model, splits = slow_pruning
    log = Log(clock)
    monkeypatch.setattr(sys, "stderr", log)  # here: pytest's capture sets sys.stderr again after fixtures
    lines = StageLines(enabled=True, clock=clock)
    lines(0, 1000, "pruning (test-slow, 50% of the MACs): ranking channels")  # as api._prune starts the step
    cfg = PruneConfig(criterion="test-slow", sparsity=0.5, compensate=False)
    res = prune_to_macs(model, cfg, splits.x_train[:200], splits.y_train[:200], 10, progress=lines)
    lines.close()
    times = [t for t, _ in log.lines]
    assert times[-1] > 30  # the pruning took over 30 s of the fake clock
    assert max(b - a for a, b in zip(times, times[1:])) <= 15, log.getvalue()
    text = [line for _, line in log.lines]
    assert text[0] == f"{STARTED}pruning" and text[-1].startswith(f"{FINISHED}pruning in ")
    running = [line for line in text if line.startswith(RUNNING)]
    assert len(running) >= 2 and len(text) == len(running) + 2  # one step, its latest message in between
    # each says how far: the step, the channels removed and the MACs so far
    last = re.match(r".*\(step (\d+)\): (\d+) channels removed, ([\d,]+) MACs of ([\d,]+), target", running[-1])
    assert last and 0 < int(last[1]) <= res.steps and int(last[2]) > 0
    assert res.macs_after <= int(last[3].replace(",", "")) < int(last[4].replace(",", "")) == res.macs_before


def test_the_heartbeat_speaks_while_no_progress_call_comes():
    # one call, then a long silence (one ranking or export of minutes): the beat prints every INTERVAL
    clock, out = Clock(), io.StringIO()
    lines = StageLines(enabled=True, clock=clock)
    real_stderr, sys.stderr = sys.stderr, out
    try:
        lines(0, 10, "weight sharing at 3 bits: int8 export")
        for _ in range(10):
            clock.now += 4
            lines.beat()  # what the heartbeat thread does at each wake-up
        lines(10, 10, "weight sharing at 3 bits: done")
    finally:
        sys.stderr = real_stderr
    text = out.getvalue().splitlines()
    assert text[0] == f"{STARTED}weight sharing"
    assert [l for l in text if l.startswith(RUNNING)] == [
        f"{RUNNING}weight sharing at 3 bits: int8 export ({s} s)" for s in (12, 24, 36)]
    assert text[-1] == f"{FINISHED}weight sharing in 40.0 s"


def test_the_heartbeat_thread_runs_during_a_step_and_ends_after_it(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    monkeypatch.setattr(StageLines, "INTERVAL", 0.02)
    lines = StageLines(enabled=True)
    lines(0, 2, "fine-tune epoch 1/2")
    deadline = time.monotonic() + 10
    while RUNNING not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert f"{RUNNING}fine-tune epoch 1/2" in out.getvalue()
    thread = lines._heartbeat
    lines(2, 2, "fine-tune epoch 2/2")
    thread.join(timeout=10)
    assert not thread.is_alive()
    lines2 = StageLines(enabled=False)
    lines2(0, 2, "fine-tune epoch 1/2")
    assert lines2._heartbeat is None
