"""PyTorch -> ONNX at a fixed batch of 1, checked against PyTorch with ONNX Runtime."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from tinyprune.fd_output import captured_output
from tinyprune.errors import ExportError

INPUT_NAME = "input"
OUTPUT_NAME = "output"


def export_onnx(model: nn.Module, example: np.ndarray, path: Path, opset: int = 18) -> float:
    """Write ``path``; return the largest |ONNX - PyTorch| output difference on ``example``."""
    x = torch.from_numpy(example[:1])
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with captured_output() as out, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (x,), str(path), dynamo=True, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=opset, external_data=False,
                              verbose=False)
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"ONNX export failed: {detail}") from None
    del out
    ort = onnxruntime()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = model(x).numpy()
    got = session.run(None, {session.get_inputs()[0].name: example[:1]})[0]
    return float(np.abs(want - got).max())


def onnxruntime():
    """onnxruntime with its telemetry off: tinyprune makes no network traffic of its own."""
    import onnxruntime as ort

    ort.disable_telemetry_events()
    return ort
