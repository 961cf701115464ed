"""The time limit and memory cap under which untrusted files are read: past either, exit 2."""

import subprocess
import sys
import time

import pytest

from tinyprune import limits
from tinyprune.errors import ResourceLimit


def test_a_python_loop_past_the_time_limit_is_stopped():
    t0 = time.perf_counter()
    with pytest.raises(ResourceLimit, match="took longer than 0.2 s"):
        with limits.bounded("reading x.pt2", 0.2):
            while True:
                pass
    assert time.perf_counter() - t0 < 5


def test_an_allocation_past_the_cap_is_refused_and_the_cap_is_lifted_after():
    import torch

    with pytest.raises(ResourceLimit, match="more than 256 MiB"):
        with limits.bounded("reading x.pt2", 30, memory=256 << 20):
            bytearray(1 << 30)
    with pytest.raises(ResourceLimit, match="more than 256 MiB"):  # torch says RuntimeError
        with limits.bounded("reading x.pt2", 30, memory=256 << 20):
            torch.empty(1 << 28)
    assert len(bytearray(1 << 30)) == 1 << 30


def test_the_timer_is_off_after_the_block():
    with limits.bounded("reading x.pt2", 0.2):
        pass
    time.sleep(0.4)  # an alarm still armed would interrupt this


def test_native_code_past_the_limit_ends_the_process_with_one_line_where_tinyprune_owns_it():
    """A block the timer cannot interrupt (here: in a thread, where signals do not reach): the
    watchdog prints one line and exits 2."""
    code = (
        "import threading, time\n"
        "from tinyprune import limits\n"
        "limits.enable_hard_exit(); limits.GRACE_SECONDS = 0.1\n"
        "def work():\n"
        "    with limits.bounded('running m.tflite', 0.2):\n"
        "        time.sleep(30)\n"
        "t = threading.Thread(target=work); t.start(); t.join()\n"
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and time.perf_counter() - t0 < 20
    assert proc.stderr.strip().splitlines() == ["tinyprune: error: running m.tflite took longer than 0.2 s, the "
                                                "limit for an untrusted file"]


def test_an_alarm_set_before_the_block_keeps_its_remaining_time():
    import signal

    fired = []
    old = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with limits.bounded("reading x.pt2", 10):
            pass
        remaining = signal.getitimer(signal.ITIMER_REAL)[0]
        assert 0 < remaining <= 0.5
        time.sleep(0.8)
        assert fired == [1]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
