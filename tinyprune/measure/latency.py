"""Latency measured on this host. (The target's latency is predicted by the deployed costs,
``tinyprune.measure.deployed``, from instructions per operator.)

Measurement on the host: repeated single-sample inferences, warm-up runs excluded, reported as
median and spread (25th/75th percentile, min, max) in ms. LiteRT and ONNX Runtime run in this
process (one thread, so numbers do not depend on how many cores are free); TFLM runs in a child
process (``tinyprune.measure.tflm_timing``) because its interpreter can crash the process.
Host timings are for comparing stages and runtimes with each other, not the target's latency.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tinyprune.errors import ExportError

# ------------------------------------------------------------------------------------------ host

def stats(seconds: list[float], warmup: int) -> dict:
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {
        "median_ms": float(np.median(ms)), "p25_ms": float(np.percentile(ms, 25)),
        "p75_ms": float(np.percentile(ms, 75)), "min_ms": float(ms.min()), "max_ms": float(ms.max()),
        "repeats": int(len(ms)), "warmup": int(warmup),
    }


def random_input(shape, dtype, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -128), min(info.max, 127) + 1, size=shape).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(bool)
    return rng.standard_normal(shape).astype(dtype)


def _repeat(run, repeats: int, warmup: int, budget_s: float) -> list[float]:
    for _ in range(warmup):
        run()
    times, start = [], time.perf_counter()
    for i in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
        if i >= 4 and time.perf_counter() - start > budget_s:
            break  # a slow model: enough samples for a median
    return times


def time_litert(model_bytes: bytes, repeats: int = 50, warmup: int = 5, budget_s: float = 5.0) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    from tinyprune.fd_output import captured_output

    with captured_output():
        it = Interpreter(model_content=model_bytes, num_threads=1)
        it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], random_input(d["shape"], d["dtype"]))
    return stats(_repeat(it.invoke, repeats, warmup, budget_s), warmup)


def time_onnxruntime(onnx_model: bytes | str | Path, repeats: int = 50, warmup: int = 5, budget_s: float = 5.0,
                     input_shape: tuple[int, ...] | None = None) -> dict:
    from tinyprune.export.onnx import onnxruntime

    ort = onnxruntime()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    src = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
    session = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    feeds = {}
    for i, inp in enumerate(session.get_inputs()):
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        if i == 0 and input_shape is not None:
            shape = list(input_shape)
        dtype = {"tensor(float)": np.float32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
                 "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float16)": np.float16,
                 "tensor(double)": np.float64, "tensor(bool)": np.bool_}.get(inp.type, np.float32)
        feeds[inp.name] = random_input(shape, dtype)
    return stats(_repeat(lambda: session.run(None, feeds), repeats, warmup, budget_s), warmup)


def time_torch(model, example, repeats: int = 50, warmup: int = 5, budget_s: float = 5.0) -> dict:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.eval()
        with torch.no_grad():
            return stats(_repeat(lambda: model(example[:1]), repeats, warmup, budget_s), warmup)
    finally:
        torch.set_num_threads(threads)


def time_tflm(model_bytes: bytes, arena_bytes: int, repeats: int = 30, warmup: int = 3,
              budget_s: float = 5.0) -> dict:
    """Time ``invoke`` in the real TFLM interpreter (a child process); arena as measured."""
    with tempfile.TemporaryDirectory(prefix="tinyprune-tflm-time-") as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(model_bytes)
        cmd = [sys.executable, "-m", "tinyprune.measure.tflm_timing", str(path), str(int(arena_bytes)),
               str(repeats), str(warmup), str(budget_s)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise ExportError("timing the model in TFLM took longer than 10 minutes") from None
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise ExportError(f"TFLM timing run failed: {lines[-1] if lines else f'exit code {proc.returncode}'}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return stats(result["seconds"], warmup)
