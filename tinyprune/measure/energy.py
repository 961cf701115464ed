"""Energy per inference: the 45 nm Horowitz floor and a target-calibrated estimate.

45 nm cost model (table: ``energy_45nm.toml``, Horowitz ISSCC 2014). Per layer:

* compute = MACs x (multiply + add) + elements x add, at the layer's precision. An int8 MAC is an
  8-bit multiply and a 32-bit accumulate (int8 kernels accumulate in int32): 0.2 + 0.1 pJ; an
  fp32 MAC is 3.7 + 0.9 pJ. Non-MAC work (pooling, activations, element-wise ops, softmax,
  copies) is charged one add per element at the accumulator precision (int32 for int8 layers,
  since TFLM's int8 element-wise kernels rescale in 32 bits; fp32 for float layers). int16
  layers are charged at the int32 figures (the table has no 16-bit integer entries), fp16 at fp16.
* weights = each weight byte read once per inference, in 64-bit words, at the read energy of the
  smallest memory in the table that holds *all* the model's weights. On a microcontroller the
  weights live in flash, which the table does not cover; charging them as an SRAM of that size
  (and reading each only once: perfect reuse) makes this a lower bound.
* activations = each input activation read once and each output written once, in 64-bit words,
  at the energy of the smallest memory holding the model's working set (the measured TFLM arena
  for TFLite models, else the planned peak of live activations). Writes cost as much as reads.

What this leaves out, and why the figure is a *floor*: instruction fetch and decode, register
file and pipeline energy, address arithmetic, loop control, requantization multiplies, leakage
and everything else on the chip (clock tree, flash controller, regulators), and 45 nm vs the
target's actual process. Measured MCU boards spend roughly 340-390 pJ per *cycle* in total
(MLPerf Tiny, NUCLEO-L4R5ZI), orders of magnitude above the 0.3 pJ of an int8 MAC, so next to
the floor the deployed costs give the board's energy: the target's ``pj_per_cycle`` x the
predicted cycles (``tinyprune.measure.deployed``). That is what a battery sees; the floor is
what the arithmetic and data movement alone would need, and is always labelled as such.
"""

from __future__ import annotations

import math
import tomllib
from functools import lru_cache
from importlib import resources

PRECISIONS = ("int8", "int16", "int32", "fp16", "fp32")
_BYTES = {"int8": 1, "int16": 2, "int32": 4, "fp16": 2, "fp32": 4}


@lru_cache(maxsize=1)
def table() -> dict:
    """The 45 nm table (package data): ``compute_pj`` per op and ``memory`` tiers."""
    raw = tomllib.loads(resources.files("tinyprune.measure").joinpath("energy_45nm.toml").read_text())
    raw["memory"] = sorted(raw["memory"], key=lambda m: m["capacity_bytes"])
    return raw


def precision_of(dtype: str) -> str:
    """The arithmetic precision a layer computes in, from its activation dtype."""
    d = str(dtype).lower()
    if d in ("int8", "uint8", "int4", "uint4", "int2", "qint8", "quint8"):
        return "int8"
    if d in ("int16", "uint16"):
        return "int16"
    if d in ("float16", "bfloat16", "half", "fp16"):
        return "fp16"
    if d in ("int32", "uint32", "int64", "bool"):
        return "int32"
    return "fp32"


def op_energy_pj(precision: str) -> tuple[float, float]:
    """(pJ per MAC, pJ per element of non-MAC work) at ``precision``."""
    c = table()["compute_pj"]
    if precision == "int8":
        return c["int8_mult"] + c["int32_add"], c["int32_add"]
    if precision == "fp16":
        return c["fp16_mult"] + c["fp16_add"], c["fp16_add"]
    if precision == "fp32":
        return c["fp32_mult"] + c["fp32_add"], c["fp32_add"]
    return c["int32_mult"] + c["int32_add"], c["int32_add"]  # int16 / int32: 32-bit figures


def memory_tier(nbytes: int) -> dict:
    """The smallest memory of the table that holds ``nbytes``: {name, capacity_bytes, read_64bit_pj}."""
    for m in table()["memory"]:
        if nbytes <= m["capacity_bytes"]:
            return {"name": m["name"], "capacity_bytes": None if math.isinf(m["capacity_bytes"]) else int(m["capacity_bytes"]),
                    "read_64bit_pj": float(m["read_64bit_pj"])}
    raise AssertionError("the energy table must end with an unbounded memory")


def _bytes_per_element(dtype: str) -> float:
    return _BYTES.get(precision_of(dtype), 4) if str(dtype).lower() not in ("int4", "uint4") else 0.5


def layer_energy(layers: list[dict], working_set_bytes: int, precision: str | None = None) -> dict:
    """Per-layer and total 45 nm energy (pJ) of ``layers`` (records of ``tinyprune.measure.macs``).

    ``precision`` forces every layer to one precision (``"fp32"`` or ``"int8"``) to compare the
    same graph as float and as int8: weights and activations are re-sized to that width.
    ``working_set_bytes`` is the activation memory (arena) the activations live in, at the
    layer's own precision; it is re-sized too.
    """
    own_weight_bytes = sum(l["weight_bytes"] for l in layers)
    scale_ws = 1.0
    if precision is not None:
        widths = [_bytes_per_element(l["dtype"]) for l in layers if l["activation_bytes"]]
        own = sum(widths) / len(widths) if widths else 4.0
        scale_ws = _BYTES[precision] / own
    per_layer, totals = [], {"compute_pj": 0.0, "weights_pj": 0.0, "activations_pj": 0.0}
    rows = []
    for l in layers:
        prec = precision or precision_of(l["dtype"])
        if precision is None:
            wbytes, abytes = l["weight_bytes"], l["activation_bytes"]
        else:
            wbytes = l["params"] * _BYTES[precision]
            abytes = l["activation_bytes"] / _bytes_per_element(l["dtype"]) * _BYTES[precision]
        rows.append((l, prec, wbytes, abytes))
    weight_total = sum(r[2] for r in rows) if precision is not None else own_weight_bytes
    w_tier = memory_tier(int(weight_total))
    a_tier = memory_tier(int(working_set_bytes * scale_ws))
    for l, prec, wbytes, abytes in rows:
        mac_pj, elem_pj = op_energy_pj(prec)
        compute = l["macs"] * mac_pj + l["elements"] * elem_pj
        weights = math.ceil(wbytes / 8) * w_tier["read_64bit_pj"]
        acts = math.ceil(abytes / 8) * a_tier["read_64bit_pj"]
        per_layer.append({"compute_pj": compute, "weights_pj": weights, "activations_pj": acts,
                          "total_pj": compute + weights + acts, "precision": prec})
        totals["compute_pj"] += compute
        totals["weights_pj"] += weights
        totals["activations_pj"] += acts
    totals["total_pj"] = totals["compute_pj"] + totals["weights_pj"] + totals["activations_pj"]
    return {"layers": per_layer, "totals": totals, "weight_memory": w_tier, "activation_memory": a_tier}


def summary(layers: list[dict], working_set_bytes: int) -> dict:
    """The 45 nm floor of the energy per inference in uJ, at the model's own precision and as fp32
    and as int8. (What the board spends is the deployed costs' energy: tinyprune.measure.deployed.)"""
    own = layer_energy(layers, working_set_bytes)
    as_fp32 = layer_energy(layers, working_set_bytes, "fp32")["totals"]["total_pj"]
    as_int8 = layer_energy(layers, working_set_bytes, "int8")["totals"]["total_pj"]
    t = own["totals"]
    out = {
        "floor_45nm": {
            "total_uj": t["total_pj"] * 1e-6, "compute_uj": t["compute_pj"] * 1e-6,
            "weights_uj": t["weights_pj"] * 1e-6, "activations_uj": t["activations_pj"] * 1e-6,
            "as_fp32_uj": as_fp32 * 1e-6, "as_int8_uj": as_int8 * 1e-6,
            "weight_memory": own["weight_memory"]["name"], "activation_memory": own["activation_memory"]["name"],
            "label": "45 nm compute + memory floor (Horowitz ISSCC 2014): arithmetic and data movement only",
        },
        "per_layer_pj": [round(x["total_pj"], 3) for x in own["layers"]],
    }
    return out
