"""Flash of the linked firmware: the model, the TFLM core, and the kernels of the model's op set.

The bytes come from linker maps of real TFLM + CMSIS-NN release builds, per core
(``benchmarks/data/tflm_cmsis_nn_code_size.csv``, stored in ``targets/device_model.toml``): each
kernel's own objects, the CMSIS-NN functions only that kernel calls, the CMSIS-NN functions
several kernels share (linked once when any of them is), the TFLM core, libc and startup. That
build registered twelve ops. A build that registers fewer also leaves out code no single kernel
owns (each op's option parser in the TFLM core, the libm functions a kernel's Prepare calls): one
constant per op, fitted on a linked image (``python -m benchmarks.fit_device``).

An op the calibration does not have (QUANTIZE, MUL, PAD...) is priced at the median kernel of
those it has, and named as an estimate.
"""

from __future__ import annotations

import statistics

from tinyprune.measure import instructions

# the ops the calibration's firmware registered (its per-component bytes are of that build)
ALL_REGISTERED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "AVERAGE_POOL_2D", "MAX_POOL_2D", "ADD",
                  "CONCATENATION", "SOFTMAX", "RESHAPE", "TRANSPOSE", "MEAN", "TFLM_DECODE")
_ALWAYS = ("tflm core", "tflm kernel utils (shared by kernels)", "app (generated main)", "libc+startup")
_POOLS = "AVERAGE_POOL_2D+MAX_POOL_2D"
# ops no kernel runs: the interpreter handles them while planning, or they do not reach the device
_FREE = {"SHAPE", "PACK", "STRIDED_SLICE", "SQUEEZE", "EXPAND_DIMS"}


def _component(op: str) -> str:
    if op in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        return _POOLS
    return "DECODE" if op in ("TFLM_DECODE", "CUSTOM:TFLM_DECODE") else op


def registered(ops) -> list[str]:
    """The op resolver's entries for ``ops`` (each op once; what tinyprune's ``model_ops.h`` adds)."""
    return sorted({o.replace("CUSTOM:", "") for o in ops if o and o not in _FREE})


def code_bytes(ops, core: str, *, sizes: dict | None = None, per_op: float | None = None) -> dict:
    """{"total", "tflm", "cmsis_nn", "libc_startup_app", "per_op", "estimated_ops"}: bytes of code
    and constant data the firmware links for a model with ``ops`` on ``core`` (the model excluded)."""
    if sizes is None:
        sizes = instructions.table()["code_size"][core]
    if per_op is None:
        per_op = instructions.table()["firmware"]["per_unregistered_op_bytes"]
    ops = registered(ops)
    parts = {_component(o) for o in ops}
    kernels = {k[len("kernel "):]: v for k, v in sizes.items() if k.startswith("kernel ")}
    typical = statistics.median(v for k, v in kernels.items() if k != "DECODE")
    tflm = sizes["tflm core"] + sizes["tflm kernel utils (shared by kernels)"]
    cmsis, estimated, per = 0, [], {}
    for part in sorted(parts):
        own = kernels.get(part)
        if own is None:
            estimated.append(part)
            own = typical
        lib = sizes.get(f"cmsis-nn for {part}", 0)
        per[part] = own + lib
        tflm += own
        cmsis += lib
    for name, value in sizes.items():
        if name.startswith("cmsis-nn shared by ") and parts & set(name[len("cmsis-nn shared by "):].split("+")):
            cmsis += value
    unregistered = len(ALL_REGISTERED) - sum(1 for o in ops if o in ALL_REGISTERED)
    rest = sizes["app (generated main)"] + sizes["libc+startup"]
    total = tflm + cmsis + rest - per_op * unregistered + per_op * len([o for o in ops if o not in ALL_REGISTERED])
    return {"total": int(round(total)), "tflm": tflm, "cmsis_nn": cmsis, "libc_startup_app": rest,
            "unregistered_credit": int(round(per_op * unregistered)), "per_op": per,
            "estimated_ops": sorted(estimated)}
