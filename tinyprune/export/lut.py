"""Weight-shared int8 models for TFLM: LUT-compressed weights decoded on the device.

A weight-shared (clustered) model has few distinct values per layer, and int8 export keeps
that: folding batch norm multiplies each output channel by one scale and per-channel
quantization rounds each channel with one scale, both functions of the value, so an output
channel never gains distinct values. TFLM's compression tool stores such a tensor as
``bits``-wide indices into per-channel (or per-tensor) value tables, and a DECODE operator
inserted before the consumer restores the int8 tensor in the arena at run time. The flash
shrinks by roughly ``8 / bits``; the arena grows by the decoded tensors; outputs are unchanged.

The value tables must follow the tensor's *quantization*, not a free choice: TFLM's LUT
decoder takes the number of tables and their axis from the output tensor's quantization
(one table per scale, along ``quantized_dimension``) and ignores the axis written by the
compressor. The compressor accepts a per-tensor table for a per-channel quantized weight,
and TFLM then silently decodes wrong weights (measured: outputs off by up to 186 steps).
So per-channel quantized weights get per-channel tables on their quantized axis, and
per-tensor quantized weights one table.

Each DECODE op costs flash of its own (operator, two tensors, their names, alignment, about
400 bytes measured), so a tensor is compressed only when the whole model shrinks with it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from tinyprune.fd_output import captured_output
from tinyprune.errors import ConfigError, DataError, ExportError

# Ops whose weight is op["inputs"][1], by layer kind. Their output channels are axis 0 of
# conv/FC filters and the last axis of depthwise filters [1, H, W, C]; the channel axis used
# is read from each tensor's quantization, which the decoder follows.
KIND = {"CONV_2D": "conv", "DEPTHWISE_CONV_2D": "conv", "FULLY_CONNECTED": "fc"}
LUT_MAX_BITS = 7  # the DECODE metadata's bitwidth field holds 1..7
DCM_BYTES = 16  # decode common metadata ahead of the value tables


@dataclass(frozen=True)
class LutTensor:
    """One weight tensor: what it holds, and whether (and how) it was LUT-compressed."""

    tensor: int  # index in subgraph 0
    name: str
    ops: tuple[str, ...]  # consumers among CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED
    shape: tuple[int, ...]
    channel_axis: int | None  # quantized dimension of a per-channel quantized weight, else None
    distinct_max: int  # most distinct values in one output channel (whole tensor when per-tensor)
    distinct_total: int  # distinct values in the whole tensor
    bits: int  # index width the tensor needs: ceil(log2(distinct_max)), at least 1 (0: not int8)
    bytes_before: int
    mode: str | None = None  # "per_channel" | "per_tensor": the layout its quantization dictates
    bytes_after: int | None = None  # packed indices + value tables + decode metadata
    flash_saved: int | None = None  # model bytes saved compressing this tensor alone (DECODE op included)
    reason: str | None = None  # why it was left as plain int8

    @property
    def compressed(self) -> bool:
        return self.reason is None

    def to_dict(self) -> dict:
        return {**asdict(self), "compressed": self.compressed}


@dataclass(frozen=True)
class LutResult:
    model: bytes  # the compressed flatbuffer (the input bytes when nothing was compressed)
    tensors: tuple[LutTensor, ...]
    flash_before: int
    flash_after: int

    @property
    def compressed(self) -> tuple[LutTensor, ...]:
        return tuple(t for t in self.tensors if t.compressed)

    @property
    def skipped(self) -> tuple[LutTensor, ...]:
        return tuple(t for t in self.tensors if not t.compressed)

    @property
    def overhead(self) -> int:
        """Flash the rewrite costs beyond the tensors themselves: DECODE ops, their tensors, alignment."""
        saved = sum(t.bytes_before - t.bytes_after for t in self.compressed)
        return self.flash_after - (self.flash_before - saved) if self.compressed else 0

    def to_dict(self) -> dict:
        return {"flash_before": self.flash_before, "flash_after": self.flash_after,
                "flash_saved": self.flash_before - self.flash_after, "overhead_bytes": self.overhead,
                "tensors": [t.to_dict() for t in self.tensors]}


def _limits(max_bits) -> dict[str, int]:
    """``max_bits`` -> index width limit per op kind ("conv", "fc") and per op name."""
    from tinyprune.deepcompress.weight_sharing import BitsSpec, parse_bits

    if isinstance(max_bits, (str, BitsSpec)):
        spec = parse_bits(max_bits, "max bits")
        return {"conv": spec.conv, "fc": spec.fc}
    if isinstance(max_bits, int) and not isinstance(max_bits, bool):
        return {"conv": max_bits, "fc": max_bits}
    if isinstance(max_bits, dict):
        known = {"conv", "fc", *KIND}
        unknown = sorted(set(max_bits) - known)
        if unknown:
            raise ConfigError(f"max bits for unknown op kind {unknown[0]!r}; use one of {sorted(known)}")
        return {str(k): v for k, v in max_bits.items()}
    raise ConfigError(f"max bits must be an int, a dict or 'conv=N,fc=M', got {max_bits!r}")


def _limit(limits: dict, op: str) -> int:
    value = limits.get(op, limits.get(KIND[op], LUT_MAX_BITS))
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"max bits for {op} must be an integer >= 1, got {value!r}")
    return min(value, LUT_MAX_BITS)


def _bits(distinct: int) -> int:
    return max(1, math.ceil(math.log2(distinct))) if distinct > 1 else 1


def _weight_tensors(int8_bytes: bytes) -> list[tuple[int, dict, np.ndarray, list[str]]]:
    """``(index, details, values, consumer ops)`` of every conv/FC weight, each tensor once."""
    from tinyprune.export.tflite import litert_interpreter

    from tinyprune.measure.graph import read_graph

    it = litert_interpreter(int8_bytes)
    details = {t["index"]: t for t in it.get_tensor_details()}
    found: dict[int, list[str]] = {}
    for op in read_graph(int8_bytes).ops:  # the flatbuffer's own op list, not LiteRT's private one
        if op.op in KIND and len(op.inputs) > 1 and op.inputs[1] >= 0:
            found.setdefault(int(op.inputs[1]), []).append(op.op)
    out = []
    for index, ops in found.items():
        try:
            values = np.array(it.get_tensor(index))
        except ValueError:  # no buffer: a weight computed at run time
            values = None
        out.append((index, details[index], values, ops))
    return out


def _quantized_axis(d: dict) -> int | None:
    q = d.get("quantization_parameters") or {}
    return int(q.get("quantized_dimension", 0)) if len(q.get("scales", ())) > 1 else None


def _plan(index: int, d: dict, values: np.ndarray | None, ops: list[str], limits: dict) -> LutTensor:
    """Measure one tensor and lay out its LUT; ``reason`` is set when it stays int8."""
    shape = tuple(int(s) for s in d["shape"])
    axis = _quantized_axis(d)
    common = dict(tensor=index, name=str(d["name"]), ops=tuple(ops), shape=shape, channel_axis=axis)
    if values is None:
        return LutTensor(**common, distinct_max=0, distinct_total=0, bits=0, bytes_before=0,
                         reason="not a constant tensor")
    if values.dtype != np.int8:
        return LutTensor(**common, distinct_max=0, distinct_total=0, bits=0, bytes_before=values.nbytes,
                         reason=f"{values.dtype} weights; only int8 weights are LUT-compressed")
    distinct_total = int(np.unique(values).size)
    if axis is None:
        mode, n_tables, distinct_max = "per_tensor", 1, distinct_total
    else:
        mode, n_tables = "per_channel", values.shape[axis]
        distinct_max = max(np.unique(c).size for c in np.moveaxis(values, axis, 0))
    bits = _bits(distinct_max)
    before = values.nbytes
    measured = dict(**common, distinct_max=distinct_max, distinct_total=distinct_total, bits=bits,
                    bytes_before=before, mode=mode)
    if axis is not None and axis not in (0, values.ndim - 1):
        return LutTensor(**measured, reason=f"quantized on axis {axis}; TFLM decodes axis 0 or the last only")
    limit = min(_limit(limits, o) for o in ops)
    if bits > limit:
        why = (f"needs {bits}-bit indices; LUT indices are at most {LUT_MAX_BITS} bits" if bits > LUT_MAX_BITS
               else f"needs {bits}-bit indices, more than the {limit} allowed")
        return LutTensor(**measured, reason=why)
    # Tables are padded to the longest one (the compressor's value-table stride).
    after = math.ceil(values.size * bits / 8) + n_tables * distinct_max + DCM_BYTES
    if after >= before:
        return LutTensor(**measured, bytes_after=after, reason=f"no saving: {before} bytes would become {after}")
    return LutTensor(**measured, bytes_after=after)


def _compress(int8_bytes: bytes, plans: list[LutTensor]) -> bytes:
    from tflite_micro.tensorflow.lite.micro.compression import SpecBuilder, compress, spec

    builder = SpecBuilder()
    for p in plans:
        mode = spec.PerChannel(p.channel_axis) if p.mode == "per_channel" else spec.PerTensor()
        builder.add_tensor(subgraph=0, tensor=p.tensor).with_lut(index_bitwidth=p.bits, mode=mode)
    # The tool warns about expansion and prints notes on stderr; the plan already decided.
    with captured_output(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bytes(compress(int8_bytes, builder.build()))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    cause = exc.__cause__
    if cause is not None and str(cause).strip():
        text += f" ({str(cause).strip().splitlines()[0][:120]})"
    return text.splitlines()[0][:240]


def _replace(plan: LutTensor, **changes) -> LutTensor:
    return LutTensor(**{**asdict(plan), **changes})


def lut_compress(int8_bytes: bytes, max_bits: "int | dict | str" = LUT_MAX_BITS, skip: "set[int]" = frozenset()) -> LutResult:
    """LUT-compress every int8 conv/depthwise/FC weight that needs fewer than 8 index bits.

    ``max_bits`` caps the index width: one int for all, ``{"conv": 4, "fc": 4}`` (op names
    such as ``"DEPTHWISE_CONV_2D"`` also work), or ``"conv=4,fc=4"``. A tensor needing more,
    one the compressor refuses, or one whose DECODE op would cost more flash than it saves
    stays plain int8 and is listed with the reason. Tensors in ``skip`` (indices) stay plain
    int8 because their decoded copy would not fit in the target's RAM.
    """
    int8_bytes = bytes(int8_bytes)
    limits = _limits(max_bits)
    plans = [_plan(i, d, v, ops, limits) for i, d, v, ops in _weight_tensors(int8_bytes)]
    plans = [_replace(p, reason="its decoded copy would not fit in the target's RAM beside the arena")
             if p.tensor in skip and p.compressed else p for p in plans]
    # Each candidate alone, through the real tool: its true flash effect, and any refusal.
    # (Small models have few weight tensors, so one extra rewrite each is cheap.)
    for n, p in enumerate(plans):
        if not p.compressed:
            continue
        try:
            saved = len(int8_bytes) - len(_compress(int8_bytes, [p]))
        except Exception as exc:
            plans[n] = _replace(p, reason=f"compressor refused it: {_first_line(exc)}")
            continue
        plans[n] = _replace(p, flash_saved=saved) if saved > 0 else _replace(
            p, flash_saved=saved, reason=f"no saving in flash: the DECODE op costs more than the "
                                         f"{p.bytes_before - p.bytes_after} bytes saved")
    chosen = [p for p in plans if p.compressed]
    if not chosen:
        return LutResult(int8_bytes, tuple(plans), len(int8_bytes), len(int8_bytes))
    try:
        out = _compress(int8_bytes, chosen)
    except Exception as exc:
        raise ExportError(f"TFLM LUT compression failed: {_first_line(exc)}") from None
    return LutResult(out, tuple(plans), len(int8_bytes), len(out))


def verify_bit_exact(int8_bytes: bytes, lut_bytes: bytes, x_int8: np.ndarray, want: np.ndarray | None = None,
                     arena_before: int | None = None) -> tuple[dict, np.ndarray]:
    """Run both models in the real TFLM interpreter; compare every output byte.

    ``x_int8`` holds quantized samples in device layout. Each model gets its own smallest
    working arena (the LUT model also holds the decoded weights there). ``want`` and
    ``arena_before`` are the int8 model's TFLM outputs and arena when already known.
    Returns (the comparison, the LUT model's outputs).
    """
    from tinyprune.export import micro

    x_int8 = np.asarray(x_int8)
    if x_int8.dtype != np.int8 or len(x_int8) == 0:
        raise DataError("verify_bit_exact needs at least one int8 sample")
    if arena_before is None:
        arena_before = micro.smallest_arena(int8_bytes, x_int8[:1])
    arena_after = micro.smallest_arena(lut_bytes, x_int8[:1])
    if want is None:
        want = micro.tflm_outputs(int8_bytes, x_int8, arena_before)
    got = micro.tflm_outputs(lut_bytes, x_int8, arena_after)
    want = want.reshape(got.shape) if want.size == got.size else want
    same = want.shape == got.shape
    differing = int((want != got).reshape(len(want), -1).any(1).sum()) if same else len(x_int8)
    return {
        "bit_exact": bool(same and differing == 0),
        "samples": int(len(x_int8)),
        "samples_differing": differing,
        "max_abs_diff": int(np.abs(want.astype(np.int32) - got.astype(np.int32)).max()) if same else None,
        "arena_before": int(arena_before),
        "arena_after": int(arena_after),
        "arena_delta": int(arena_after - arena_before),
        "flash_before": len(int8_bytes),
        "flash_after": len(lut_bytes),
    }, got


def decompression_memory(lut_bytes: bytes, x_int8: np.ndarray, want: np.ndarray, samples: int = 64) -> dict | None:
    """The LUT model with TFLM's alternate decompression memory: DECODE writes the decoded weights
    into a separate region (another RAM bank, where the board has one) instead of the arena.

    Measured in the real interpreter: the smallest arena given room for every decoded tensor,
    then the smallest region with which that arena still works, then the outputs on the first
    ``samples`` samples against ``want`` (the LUT model's outputs without the region). None for
    a model without DECODE ops."""
    from tinyprune.export import micro
    from tinyprune.measure.graph import read_graph

    graph = read_graph(lut_bytes)
    decoded = [graph.tensors[o] for op in graph.ops if op.op == "TFLM_DECODE" for o in op.outputs if o >= 0]
    if not decoded:
        return None
    upper = sum((t.nbytes + micro.ALIGN - 1) // micro.ALIGN * micro.ALIGN for t in decoded)
    arena = micro.smallest_arena(lut_bytes, x_int8[:1], alt=upper)
    alt = micro.smallest_alt(lut_bytes, x_int8[:1], arena, upper)
    n = min(samples, len(x_int8))
    got = micro.tflm_outputs(lut_bytes, x_int8[:n], arena, alt=alt)
    same = got.shape == want[:n].shape and bool((got == want[:n]).all())
    return {"arena_bytes": int(arena), "alt_bytes": int(alt), "decoded_tensors": len(decoded),
            "decoded_bytes": int(sum(t.nbytes for t in decoded)), "samples_checked": int(n), "bit_exact": same}
