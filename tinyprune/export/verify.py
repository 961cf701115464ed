"""The device model's accuracy of record: the real TFLM interpreter on the whole held-out split.

A microcontroller runs TFLM, so TFLM's predictions are the ones reported. LiteRT runs the same
samples as a cross-check: both interpret one flatbuffer with (mostly) the same reference
kernels, so when they disagree on more than 1 % of the samples one of the two runtimes computes
something else than the graph says and no accuracy can be trusted; that is an export error.
"""

from __future__ import annotations

import numpy as np

from tinyprune.errors import ExportError
from tinyprune.export import micro, tflite

AGREEMENT_FLOOR = 0.99  # share of samples on which TFLM and LiteRT must predict the same class


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
        litert_out = tflite.litert_outputs(model_bytes, x_device).reshape(n, -1)
    except (ValueError, RuntimeError) as exc:
        record["litert"] = f"not cross-checked: LiteRT cannot load the model ({str(exc).splitlines()[0][:120]})"
        return record, tflm_out
    litert_pred = litert_out.argmax(1)
    record.update({
        "litert_accuracy": float((litert_pred == y).mean()),
        "agreement_with_litert": float((tflm_pred == litert_pred).mean()),
        "outputs_identical_to_litert": float((tflm_out == litert_out).all(1).mean()),
    })
    return record, tflm_out


def check_agreement(record: dict) -> None:
    agree = record.get("agreement_with_litert", 1.0)
    if agree < AGREEMENT_FLOOR:
        raise ExportError(
            f"TFLM and LiteRT predict different classes on {1 - agree:.1%} of {record['samples']} held-out samples "
            f"(TFLM {record['accuracy']:.2%}, LiteRT {record['litert_accuracy']:.2%}); the runtimes compute different "
            "functions from this flatbuffer, so no accuracy can be trusted; please report this model")


def collapsed(outputs: np.ndarray) -> bool:
    """True when every sample gets the same output: the int8 model ignores its input."""
    flat = outputs.reshape(len(outputs), -1)
    return len(flat) > 1 and bool((flat == flat[0]).all())
