"""The model in the real TFLM interpreter: the smallest working arena and its outputs.

The arena a firmware engineer must reserve is the smallest one with which allocation *and*
invoke succeed. TFLM's own RecordingMicroAllocator total leaves out temporary buffers
(tflite-micro issue 2738), so we bisect with real runs instead of trusting the estimate.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from tinyprune.errors import ExportError

ALIGN = 16  # TFLM aligns arena allocations to 16 bytes; finer steps cannot matter
MAX_ARENA = 64 * 1024 * 1024
MIN_SAMPLES_PER_WORKER = 100  # below this a second interpreter process costs more than it saves


def _run(model: Path, arena: int, inputs: Path, outputs: Path | None = None, alt: int = 0) -> tuple[bool, str]:
    cmd = [sys.executable, "-m", "tinyprune.export.tflm_worker", str(model), str(arena), str(inputs)]
    if outputs is not None:
        cmd.append(str(outputs))
    if alt:
        cmd += ["--alt", str(alt)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return proc.returncode == 0, (proc.stderr or proc.stdout).strip()


def smallest_arena(model_bytes: bytes, sample_int8: np.ndarray, alt: int = 0) -> int:
    """Bisect (to 16 bytes) the smallest arena with which one allocate + invoke succeeds.

    ``alt``: bytes of alternate decompression memory given to TFLM beside the arena (LUT models:
    the decoded weights go there instead of into the arena)."""
    with tempfile.TemporaryDirectory(prefix="tinyprune-tflm-") as tmp:
        model, inputs = Path(tmp) / "model.tflite", Path(tmp) / "x.npy"
        model.write_bytes(model_bytes)
        np.save(inputs, sample_int8[:1])
        lo, hi = 0, 16 * 1024  # lo always fails (or is 0), hi is probed upward until it works
        while True:
            ok, message = _run(model, hi, inputs, alt=alt)
            if ok:
                break
            lo = hi
            hi *= 2
            if hi > MAX_ARENA:
                raise ExportError(f"the model does not run in TFLM even with a {MAX_ARENA >> 20} MiB arena: {message.splitlines()[-1] if message else 'unknown error'}")
        while hi - lo > ALIGN:
            mid = (lo + hi) // 2 // ALIGN * ALIGN
            if mid <= lo:
                break
            if _run(model, mid, inputs, alt=alt)[0]:
                hi = mid
            else:
                lo = mid
        return hi


def smallest_alt(model_bytes: bytes, sample_int8: np.ndarray, arena: int, upper: int) -> int:
    """Bisect (to 16 bytes) the smallest alternate decompression memory with which the model runs
    in ``arena``; ``upper`` must work. (Measured, not summed: TFLM reuses the region between
    DECODE outputs, so it needs less than all decoded weights together.)"""
    with tempfile.TemporaryDirectory(prefix="tinyprune-tflm-") as tmp:
        model, inputs = Path(tmp) / "model.tflite", Path(tmp) / "x.npy"
        model.write_bytes(model_bytes)
        np.save(inputs, sample_int8[:1])
        ok, message = _run(model, arena, inputs, alt=upper)
        if not ok:
            raise ExportError(f"the model does not run in TFLM with a {arena}-byte arena and {upper} bytes of "
                              f"decompression memory: {message.splitlines()[-1] if message else 'unknown error'}")
        lo, hi = 0, upper
        while hi - lo > ALIGN:
            mid = (lo + hi) // 2 // ALIGN * ALIGN
            if mid <= lo:
                break
            if _run(model, arena, inputs, alt=mid)[0]:
                hi = mid
            else:
                lo = mid
        return hi


def tflm_outputs(model_bytes: bytes, x_int8: np.ndarray, arena: int, workers: int | None = None,
                 alt: int = 0) -> np.ndarray:
    """Raw int8 outputs of the TFLM interpreter for each sample of ``x_int8`` (device layout).

    The samples are split over ``workers`` interpreter processes (default: one per CPU), since
    TFLM's reference kernels run one sample at a time and this is the accuracy of record."""
    n = len(x_int8)
    workers = max(1, min(workers or os.cpu_count() or 1, (n + MIN_SAMPLES_PER_WORKER - 1) // MIN_SAMPLES_PER_WORKER))
    bounds = np.linspace(0, n, workers + 1).astype(int)
    with tempfile.TemporaryDirectory(prefix="tinyprune-tflm-") as tmp:
        model = Path(tmp) / "model.tflite"
        model.write_bytes(model_bytes)
        procs = []
        for w in range(workers):
            inputs, outputs = Path(tmp) / f"x{w}.npy", Path(tmp) / f"y{w}.npy"
            np.save(inputs, x_int8[bounds[w]:bounds[w + 1]])
            cmd = [sys.executable, "-m", "tinyprune.export.tflm_worker", str(model), str(arena), str(inputs), str(outputs)]
            cmd += ["--alt", str(alt)] if alt else []
            procs.append((subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), outputs))
        results, failure = [], None
        for proc, outputs in procs:
            out, err = proc.communicate(timeout=3600)
            if proc.returncode != 0 and failure is None:
                failure = (err or out).strip()
            elif proc.returncode == 0:
                results.append(np.load(outputs))
        if failure is not None:
            raise ExportError(f"TFLM failed to run the int8 model: {failure.splitlines()[-1] if failure else 'crashed'}")
        return np.concatenate(results)
