"""Progress of compress/demo on stderr: a redrawn bar in a terminal, start/finish lines in logs."""

from __future__ import annotations

import re
import sys
import threading
import time


class Bar:
    """A rich progress bar on stderr, created on first use."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.progress = None
        self.task = None

    def __call__(self, done: int, total: int, message: str) -> None:
        if not self.enabled:
            return
        if self.progress is None:
            from rich.console import Console
            from rich.progress import Progress

            self.progress = Progress(console=Console(stderr=True), transient=True)
            self.progress.start()
            self.task = self.progress.add_task(message, total=total)
        self.progress.update(self.task, completed=done, total=total, description=message)
        if done >= total:
            self.close()

    def close(self):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    abort = close

    def note(self, text: str) -> None:
        """A line that stays (a --fit trial's setting or result), printed above the bar."""
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.console.print(f"tinyprune: {text}", markup=False, highlight=False)
        else:
            print(f"tinyprune: {text}", file=sys.stderr, flush=True)


# the stage lines' prefixes: a step's start and end, and its latest message while it runs
STARTED, FINISHED, RUNNING = "tinyprune: started ", "tinyprune: finished ", "tinyprune: ... "


class StageLines:
    """Progress when stderr is not a terminal (CI logs): one line when a step starts, one when it
    ends with its seconds, instead of a redrawn bar, and the step's latest message every
    ``INTERVAL`` seconds while it runs, so that a log never goes quiet for long (a pruning of
    many minutes used to print nothing). A step is the progress message up to its first number
    ("fine-tune epoch 2/3 loss 0.41" belongs to "fine-tune").

    The latest message is printed when a call finds ``INTERVAL`` seconds since the last line,
    and by a heartbeat thread while no call comes (one ranking or one export that takes
    minutes)."""

    INTERVAL = 10.0

    def __init__(self, enabled: bool, clock=time.perf_counter):
        self.enabled = enabled
        self.clock = clock
        self.current = None
        self.message = ""
        self.started = self.last_line = 0.0
        self._lock = threading.Lock()  # the heartbeat prints from its own thread
        self._heartbeat = None

    @staticmethod
    def _step(message: str) -> str:
        return re.split(r"\s+(?:epoch\s+|at\s+)?[\d(]", message, maxsplit=1)[0].strip() or message

    def _print(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)
        self.last_line = self.clock()

    def __call__(self, done: int, total: int, message: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            step = self._step(message)
            if step != self.current:
                self._close()
                self.current, self.started = step, self.clock()
                self._print(f"{STARTED}{step}")
                self._beat_in_background()
            self.message = message
            self.beat()
            if done >= total:
                self._close()

    def beat(self) -> None:
        """The step's latest message, where ``INTERVAL`` seconds passed since the last line."""
        if self.current is not None and self.clock() - self.last_line >= self.INTERVAL:
            self._print(f"{RUNNING}{self.message} ({self.clock() - self.started:.0f} s)")

    def _beat_in_background(self) -> None:
        if self._heartbeat is not None:
            return

        def run():
            while True:
                time.sleep(self.INTERVAL / 4)
                with self._lock:
                    if self.current is None:  # between steps: the next step starts a new one
                        self._heartbeat = None
                        return
                    self.beat()

        self._heartbeat = threading.Thread(target=run, name="tinyprune-progress", daemon=True)
        self._heartbeat.start()

    def _close(self):
        if self.current is not None:
            self._print(f"{FINISHED}{self.current} in {self.clock() - self.started:.1f} s")
            self.current = None

    def close(self):
        with self._lock:
            self._close()

    def abort(self):
        with self._lock:
            self.current = None  # the error line that follows says what happened

    def note(self, text: str) -> None:
        if self.enabled:
            with self._lock:
                self._print(f"tinyprune: {text}")


def progress_display(enabled: bool):
    """The progress callback for this stderr: a bar in a terminal, stage lines otherwise."""
    return Bar(enabled) if sys.stderr.isatty() else StageLines(enabled)
