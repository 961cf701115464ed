"""Issue 18 benchmark: an 8-cell sweep of the demo model with 1 vs 2 local Ray workers, and
against 8 independent `compress` processes (each measuring the analysis itself).

    python -m benchmarks.sweep_bench        # about 10 min on 2 cores

The demo model (digits_cnn trained on the built-in digits as `tinyprune demo` trains it) is swept
over criterion=l1,flow x sparsity=0.3,0.5 x bits=4,5 with 2 fine-tune epochs; the wall times are
measured in one run, side by side, and printed as a table with ratios.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import markdown_table

GRID = ["criterion=l1,flow", "sparsity=0.3,0.5", "bits=4,5"]
FLAGS = ["--finetune-epochs", "2", "--max-accuracy-drop", "100", "--quiet"]


def main() -> None:
    from tinyprune.api import train_demo_model
    from tinyprune.data import builtin_digits

    root = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    model = train_demo_model(0)
    torch.save(model, root / "demo.pt")
    d = builtin_digits()
    np.savez(root / "digits.npz", x=d.x_train, y=d.y_train)
    base = [sys.executable, "-m", "tinyprune"]
    times = {}
    for workers in (1, 2):
        t = time.perf_counter()
        subprocess.run(base + ["sweep", str(root / "demo.pt"), "--data", str(root / "digits.npz"), "--out",
                               str(root / f"w{workers}"), "--grid", *GRID, "--workers", str(workers), *FLAGS],
                       check=True)
        times[f"sweep, {workers} worker(s)"] = time.perf_counter() - t
    t = time.perf_counter()
    for criterion in ("l1", "flow"):
        for s in ("0.3", "0.5"):
            for bits in ("4", "5"):
                subprocess.run(base + ["compress", str(root / "demo.pt"), "--data", str(root / "digits.npz"),
                                       "--out", str(root / f"alone_{criterion}_{s}_{bits}"), "--criterion", criterion,
                                       "--sparsity", s, "--lut-bits", bits, "--no-cache", *FLAGS], check=True)
    times["8 compress processes, one after the other, no analysis cache"] = time.perf_counter() - t
    one = times["sweep, 1 worker(s)"]
    print(markdown_table(["run", "wall s", "x sweep with 1 worker"],
                         [[k, f"{v:.0f}", f"{v / one:.2f}"] for k, v in times.items()]))


if __name__ == "__main__":
    main()
