"""The device model's accuracy of record: the real TFLM interpreter on the whole held-out split.

A microcontroller runs TFLM, so TFLM's predictions are the ones reported. LiteRT runs the same
samples twice as a cross-check:
* with its reference kernels, the ones TFLM is built from. The two must agree; when they predict
  different classes on more than 1 % of the samples (for regression and reconstruction: more
  than 1 % of the output values are over 4 quantization steps apart), one runtime computes
  something other than the graph says and no accuracy can be trusted: an export error.
* with its default optimized kernels (XNNPACK), what a host application runs. These round
  differently (a few LSB at the output), so their agreement with TFLM measures how fragile the
  int8 model is, not whether a runtime is wrong; it is reported, and the console warns below
  99.5 %.
"""

from __future__ import annotations

import numpy as np

from tinyprune.errors import ExportError
from tinyprune.export import micro, tflite
from tinyprune.task import CLASSIFY, Task, metrics

LSB_TOLERANCE = 4  # regression/reconstruction outputs this many int8 steps apart still agree (an autoencoder
# of 6 layers measured up to 3 between TFLM and LiteRT reference kernels: rounding, not a wrong graph)

AGREEMENT_FLOOR = 0.99  # TFLM vs LiteRT reference kernels: below this the export fails
OPTIMIZED_AGREEMENT_GOAL = 0.995  # TFLM vs LiteRT optimized kernels: below this the console warns


def task_metrics(model_bytes: bytes, raw: np.ndarray, y: np.ndarray, task: Task = CLASSIFY,
                 anomaly: np.ndarray | None = None) -> dict:
    """The task's metrics (tinyprune.task) of a device model's raw outputs against ``y``."""
    n = len(raw)
    if task.kind == "classify":
        acc = float((raw.reshape(n, -1).argmax(1) == y).mean())
        return {"score": acc, "accuracy": acc}
    out = tflite.io_details(model_bytes)["output"]
    values = raw.astype(np.float64)
    if out["dtype"] == "int8":
        values = (values - out["zero_point"]) * out["scale"]
    if values.ndim == 4:  # NHWC on the device, NCHW in PyTorch
        values = values.transpose(0, 3, 1, 2)
    elif values.ndim == 3:  # NLC on the device (onnx2tf converts 1-D signals channels-last), NCL in PyTorch
        values = values.transpose(0, 2, 1)
    return metrics(task, values.reshape(y.shape), y, anomaly)


def _agree(a: np.ndarray, b: np.ndarray, task: Task) -> np.ndarray:
    """Per sample (classify: the same class) or per output value (regress, reconstruct: within
    LSB_TOLERANCE; rounding differences accumulate over deep stacks, and one value of 784 a few
    steps off is not a different function)."""
    n = len(a)
    if task.kind == "classify":
        return a.reshape(n, -1).argmax(1) == b.reshape(n, -1).argmax(1)
    return np.abs(a.reshape(n, -1).astype(np.int64) - b.reshape(n, -1).astype(np.int64)) <= LSB_TOLERANCE


def device_accuracy(model_bytes: bytes, x_nchw: np.ndarray, y: np.ndarray, arena: int, task: Task = CLASSIFY,
                    anomaly: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """(record, raw TFLM outputs) for the model on every sample of ``x_nchw``. ``score`` is the
    task's score (accuracy for classifiers), with the task's metrics beside it.

    LiteRT cannot load models with TFLM-only ops (DECODE); their record says so instead of
    carrying a cross-check."""
    x_device = tflite.device_input(model_bytes, x_nchw)
    n = len(x_device)
    tflm_out = micro.tflm_outputs(model_bytes, x_device, arena)
    record = {"runtime": "tflm", "samples": int(n), **task_metrics(model_bytes, tflm_out, y, task, anomaly)}
    try:
        reference = tflite.litert_outputs(model_bytes, x_device, reference=True)
        optimized = tflite.litert_outputs(model_bytes, x_device)
    except (ValueError, RuntimeError) as exc:
        record["litert"] = f"not cross-checked: LiteRT cannot load the model ({str(exc).splitlines()[0][:120]})"
        return record, tflm_out
    flat = tflm_out.reshape(n, -1)
    record.update({
        "agreement_with_litert": float(_agree(tflm_out, reference, task).mean()),
        "outputs_identical_to_litert": float((flat == reference.reshape(n, -1)).all(1).mean()),
        "litert_optimized_score": task_metrics(model_bytes, optimized, y, task, anomaly)["score"],
        "agreement_with_litert_optimized": float(_agree(tflm_out, optimized, task).mean()),
    })
    return record, tflm_out


def check_agreement(record: dict) -> None:
    agree = record.get("agreement_with_litert", 1.0)
    if agree < AGREEMENT_FLOOR:
        raise ExportError(
            f"TFLM and LiteRT's reference kernels disagree on {1 - agree:.1%} of the predictions for "
            f"{record['samples']} held-out samples; the runtimes compute different functions from this "
            "flatbuffer, so no accuracy can be trusted; please report this model")


def collapsed(outputs: np.ndarray) -> bool:
    """True when every sample gets the same output: the int8 model ignores its input."""
    flat = outputs.reshape(len(outputs), -1)
    return len(flat) > 1 and bool((flat == flat[0]).all())
