"""A time limit and a memory cap for work on untrusted files (reading a .pt2, analysing a .tflite).

The work runs in this process: a child process would pay torch's import (seconds) on every load,
while the checks before it already bound what the file can ask for. The caps are the backstop:
the address space gets a soft ``RLIMIT_AS`` for the block (an allocation past it fails, and
becomes ResourceLimit, exit 2), and a timer raises ResourceLimit in the main thread when the block
runs too long. Native code that never returns to Python (an interpreter loop in LiteRT, one huge
kernel) cannot be interrupted that way; where tinyprune owns the process (the console command,
see ``enable_hard_exit``), a watchdog then prints the one line and exits 2.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import threading
import time

from tinyprune.errors import ResourceLimit, TinypruneError

MEMORY_CAP = 2 << 30  # bytes of address space on top of what the process maps when the block starts
GRACE_SECONDS = 10  # how long the watchdog leaves the timer to interrupt Python code first

_state = threading.local()
_hard_exit = False


def enable_hard_exit() -> None:
    """Let a block that overruns its time in native code end the process (exit 2, one line)."""
    global _hard_exit
    _hard_exit = True


class _Deadline(BaseException):
    """Raised by the timer; a BaseException so that the ``except Exception`` of the code it
    interrupts (torch's deserializer has several) does not swallow it."""


def _mapped_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None  # not Linux: no cap, the timer still applies


def _message(what: str, seconds: float) -> str:
    return f"{what} took longer than {seconds:g} s, the limit for an untrusted file"


@contextlib.contextmanager
def bounded(what: str, seconds: float, memory: int = MEMORY_CAP):
    """Run the block under a time limit and an address-space cap; ResourceLimit past either.
    Nested blocks run under the outer one's limits."""
    if getattr(_state, "active", False):
        yield
        return
    _state.active = True
    old_limit = resource.getrlimit(resource.RLIMIT_AS)
    mapped = _mapped_bytes()
    capped = False
    if mapped is not None:
        cap = mapped + memory
        if old_limit[0] == resource.RLIM_INFINITY or cap < old_limit[0]:
            hard = old_limit[1]
            resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
            capped = True
    armed = [True]
    timed = threading.current_thread() is threading.main_thread()
    old_handler = None
    if timed:
        def on_alarm(signum, frame):
            if armed[0]:
                raise _Deadline()

        old_handler = signal.signal(signal.SIGALRM, on_alarm)
        old_timer = signal.setitimer(signal.ITIMER_REAL, seconds)
        started = time.monotonic()
    watchdog = None
    if _hard_exit:
        def give_up():
            os.write(2, f"tinyprune: error: {_message(what, seconds)}\n".encode())
            os._exit(ResourceLimit.exit_code)

        watchdog = threading.Timer(seconds + GRACE_SECONDS, give_up)
        watchdog.daemon = True
        watchdog.start()
    try:
        yield
    except _Deadline:
        raise ResourceLimit(_message(what, seconds)) from None
    except Exception as exc:
        if isinstance(exc, TinypruneError) or not is_allocation_failure(exc):
            raise
        raise ResourceLimit(f"{what} needed more than {memory >> 20} MiB of memory, the cap for an untrusted "
                            "file") from None
    finally:
        armed[0] = False
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_handler)
            if old_timer[0] > 0:  # someone else's alarm: it keeps what was left of its time
                signal.setitimer(signal.ITIMER_REAL, max(old_timer[0] - (time.monotonic() - started), 1e-3),
                                 old_timer[1])
        if watchdog is not None:
            watchdog.cancel()
        if capped:
            resource.setrlimit(resource.RLIMIT_AS, old_limit)
        _state.active = False


def is_allocation_failure(exc: BaseException) -> bool:
    """torch reports a failed allocation as a RuntimeError, not MemoryError."""
    return isinstance(exc, MemoryError) or "can't allocate memory" in str(exc)

