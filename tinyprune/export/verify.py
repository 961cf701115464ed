"""The device model's accuracy of record: the real TFLM interpreter on the whole held-out split.

A microcontroller runs TFLM, so TFLM's predictions are the ones reported. LiteRT runs the same
samples twice as a cross-check:
* with its reference kernels, the ones TFLM is built from. The two must agree; when they predict
  different classes on more than 1 % of the samples, one runtime computes something other than
  the graph says and no accuracy can be trusted: an export error.
* with its default optimized kernels (XNNPACK), what a host application runs. These round
  differently (a few LSB at the output), so their agreement with TFLM measures how fragile the
  int8 model is, not whether a runtime is wrong; it is reported, and the console warns below
  99.5 %.
"""

from __future__ import annotations

import numpy as np

from tinyprune.errors import ExportError
from tinyprune.export import micro, tflite

AGREEMENT_FLOOR = 0.99  # TFLM vs LiteRT reference kernels: below this the export fails
OPTIMIZED_AGREEMENT_GOAL = 0.995  # TFLM vs LiteRT optimized kernels: below this the console warns


def device_accuracy(model_bytes: bytes, x_nchw: np.ndarray, y: np.ndarray, arena: int) -> tuple[dict, np.ndarray]:
    """(record, raw TFLM outputs) for the model on every sample of ``x_nchw``.

    LiteRT cannot load models with TFLM-only ops (DECODE); their record says so instead of
    carrying a cross-check."""
    x_device = tflite.device_input(model_bytes, x_nchw)
    n = len(x_device)
    tflm_out = micro.tflm_outputs(model_bytes, x_device, arena).reshape(n, -1)
    tflm_pred = tflm_out.argmax(1)
    record = {"runtime": "tflm", "samples": int(n), "accuracy": float((tflm_pred == y).mean())}
    try:
        reference = tflite.litert_outputs(model_bytes, x_device, reference=True).reshape(n, -1)
        optimized = tflite.litert_outputs(model_bytes, x_device).reshape(n, -1)
    except (ValueError, RuntimeError) as exc:
        record["litert"] = f"not cross-checked: LiteRT cannot load the model ({str(exc).splitlines()[0][:120]})"
        return record, tflm_out
    record.update({
        "agreement_with_litert": float((tflm_pred == reference.argmax(1)).mean()),
        "outputs_identical_to_litert": float((tflm_out == reference).all(1).mean()),
        "litert_optimized_accuracy": float((optimized.argmax(1) == y).mean()),
        "agreement_with_litert_optimized": float((tflm_pred == optimized.argmax(1)).mean()),
    })
    return record, tflm_out


def check_agreement(record: dict) -> None:
    agree = record.get("agreement_with_litert", 1.0)
    if agree < AGREEMENT_FLOOR:
        raise ExportError(
            f"TFLM and LiteRT's reference kernels predict different classes on {1 - agree:.1%} of "
            f"{record['samples']} held-out samples; the runtimes compute different functions from this "
            "flatbuffer, so no accuracy can be trusted; please report this model")


def collapsed(outputs: np.ndarray) -> bool:
    """True when every sample gets the same output: the int8 model ignores its input."""
    flat = outputs.reshape(len(outputs), -1)
    return len(flat) > 1 and bool((flat == flat[0]).all())
