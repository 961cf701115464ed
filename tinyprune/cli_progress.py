"""Progress of compress/demo on stderr: a redrawn bar in a terminal, start/finish lines in logs."""

from __future__ import annotations

import re
import sys
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


STARTED, FINISHED = "tinyprune: started ", "tinyprune: finished "  # the stage lines' prefixes


class StageLines:
    """Progress when stderr is not a terminal (CI logs): one line when a step starts, one when it
    ends with its seconds, instead of a redrawn bar. A step is the progress message up to its
    first number ("fine-tune epoch 2/3 loss 0.41" belongs to "fine-tune")."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.current = None
        self.started = 0.0

    @staticmethod
    def _step(message: str) -> str:
        return re.split(r"\s+(?:epoch\s+|at\s+)?[\d(]", message, maxsplit=1)[0].strip() or message

    def __call__(self, done: int, total: int, message: str) -> None:
        if not self.enabled:
            return
        step = self._step(message)
        if step != self.current:
            self.close()
            self.current, self.started = step, time.perf_counter()
            print(f"{STARTED}{step}", file=sys.stderr, flush=True)
        if done >= total:
            self.close()

    def close(self):
        if self.current is not None:
            print(f"{FINISHED}{self.current} in {time.perf_counter() - self.started:.1f} s", file=sys.stderr,
                  flush=True)
            self.current = None

    def abort(self):
        self.current = None  # the error line that follows says what happened

    def note(self, text: str) -> None:
        if self.enabled:
            print(f"tinyprune: {text}", file=sys.stderr, flush=True)


def progress_display(enabled: bool):
    """The progress callback for this stderr: a bar in a terminal, stage lines otherwise."""
    return Bar(enabled) if sys.stderr.isatty() else StageLines(enabled)
