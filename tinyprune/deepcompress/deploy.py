"""Weight sharing that pays on the device: LUT bits only where the deployed model gains.

Deep Compression's trained quantization (Han, Mao & Dally 2016) shares each layer's weights among
2^b values. On a microcontroller that buys flash only through TFLM's LUT compression (DECODE
ops), and only for layers large enough that b-bit indices plus the value tables and the DECODE
op cost less than the int8 tensor. It costs RAM, because DECODE writes the decoded tensor into
the arena, and it costs accuracy. So the plan is made per layer and measured on the real thing:

1. candidates: the Conv/Linear layers whose int8 weight would shrink at the narrowest index tried
   by more than its tables and DECODE op cost; the others are left exactly as they are;
2. bits: the fewest, from ``min_bits`` up to 7, for which the shared model, exported to int8,
   LUT-compressed and run in TFLM on the held-out split, stays within the accuracy budget.
   Float accuracy after the centroid fine-tune rejects a width before any export;
3. RAM: while the decoded tensors push the TFLM arena (plus the target's runtime RAM) past the
   target's RAM, the largest decoded tensor goes back to plain int8;
4. flash: the LUT model is kept only when its flatbuffer is smaller than the plain int8 one.

Unstructured weight pruning is not part of it: TFLite stores zeros densely, so pruned weights
shrink no flatbuffer (they feed the ``.tpz`` archive, ``--archive``).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from tinyprune.deepcompress.magnitude import weight_layers
from tinyprune.deepcompress.weight_sharing import cluster_weight, finetune_centroids
from tinyprune.errors import ConfigError
from tinyprune.export.lut import DCM_BYTES, LUT_MAX_BITS

DECODE_OP_BYTES = 400  # flash of one DECODE op, its two tensors, names and alignment (measured; export/lut.py)


@dataclass(frozen=True)
class SharingConfig:
    min_bits: int = 4  # fewest LUT index bits tried per shared layer; up to 7 while over budget
    epochs: int = 2  # centroid fine-tune (grouped gradients), per width tried
    lr: float = 1e-3
    batch_size: int = 64

    def __post_init__(self):
        if not 1 <= self.min_bits <= LUT_MAX_BITS:
            raise ConfigError(f"--lut-bits must be in 1..{LUT_MAX_BITS} (TFLM's LUT index width), got {self.min_bits}")
        if self.epochs < 0 or self.lr <= 0 or self.batch_size < 1:
            raise ConfigError("weight sharing needs epochs >= 0, lr > 0 and batch size >= 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _channels(module: nn.Module) -> int:
    return int(module.weight.shape[0])


def lut_saving(numel: int, channels: int, bits: int) -> int:
    """Estimated flash a b-bit LUT saves on an int8 weight of ``numel`` entries (may be negative)."""
    after = -(-numel * bits // 8) + channels * (1 << bits) + DCM_BYTES + DECODE_OP_BYTES
    return numel - after


def candidates(model: nn.Module, bits: int) -> list[tuple[str, str, int]]:
    """(weight name, kind, entries) of the layers whose LUT could save flash at ``bits`` (the
    fewest tried, where it saves most; per-channel tables grow with 2^bits)."""
    return [(name, kind, module.weight.numel()) for name, module, kind in weight_layers(model)
            if lut_saving(module.weight.numel(), _channels(module), bits) > 0]


def weight_bytes_saved_at_most(model: nn.Module, bits: int) -> int:
    """Weight bytes ``bits``-bit LUTs could save at most: index bytes only, the tables and DECODE ops
    not counted, so no LUT model of ``model`` saves more (an upper bound for skipping the search)."""
    return sum(numel - -(-numel * bits // 8) for _, _, numel in candidates(model, bits))


def share(model: nn.Module, layers: list[str], bits: int, x: np.ndarray, y: np.ndarray, cfg: SharingConfig,
          seed: int) -> nn.Module:
    """A copy of ``model`` whose listed weights share 2^bits values each (k-means, centroids fine-tuned).

    Every weight is kept (no mask), so each int8 output channel holds at most 2^bits values and
    LUT-compresses at ``bits``."""
    model = copy.deepcopy(model).float()
    params = dict(model.named_parameters())
    kinds = {name: kind for name, _, kind in weight_layers(model)}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        clusters = [cluster_weight(name, kinds[name], params[name], bits, torch.ones_like(params[name], dtype=torch.bool))
                    for name in layers]
        with torch.no_grad():
            for c in clusters:
                params[c.name].copy_(c.weight())
        finetune_centroids(model, clusters, x, y, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=seed)
    return model.eval()


PREFER = ("auto", "ram", "flash")


def flash_for_ram(prefer: str, target, plain, lut) -> tuple[bool, str]:
    """(deploy the LUT model, the trade in words; empty when none is made).

    ``plain`` and ``lut`` are the two models' deployed costs (tinyprune.measure.deployed). A LUT
    model that saves flash but needs more RAM (decoded weights in the arena) is a trade. The rule
    (``--prefer auto``): on a target with more than half its flash free and RAM the tighter
    resource (the larger share used), flash is cheap and RAM is not, so the plain int8 model is
    deployed; otherwise the flash is taken. ``--prefer flash`` always takes it, ``--prefer ram``
    never does."""
    if prefer not in PREFER:
        raise ConfigError(f"--prefer must be one of {', '.join(PREFER)}, got {prefer!r}")
    saved, extra = plain.flash_bytes - lut.flash_bytes, lut.ram_bytes - plain.ram_bytes
    if extra <= 0:
        return True, ""
    trade = f"{saved:,} B less firmware flash for {extra:,} B more RAM"
    if prefer == "flash":
        return True, f"traded {trade} (--prefer flash)"
    if prefer == "ram":
        return False, f"the LUT model would trade {trade}; --prefer ram keeps the plain int8 model"
    free = target.flash_bytes - plain.flash_bytes
    flash_used, ram_used = plain.flash_bytes / target.flash_bytes, plain.ram_bytes / target.ram_bytes
    if free > target.flash_bytes / 2 and ram_used > flash_used:
        return False, (f"the LUT model would trade {trade}; with {free:,} B of {target.name}'s flash free and RAM the "
                       f"tighter resource ({ram_used:.0%} used, flash {flash_used:.0%}), the plain int8 model is "
                       "deployed (--prefer flash deploys the LUT model)")
    why = "less than half the flash is free" if free <= target.flash_bytes / 2 else "flash is the tighter resource"
    return True, f"traded {trade} ({why}; --prefer ram keeps the plain int8 model)"


@dataclass
class Trial:
    bits: int
    float_accuracy: float
    int8_accuracy: float | None = None
    flash_bytes: int | None = None
    arena_bytes: int | None = None
    tensors_compressed: int = 0
    verdict: str = ""
    # bytes of decoded weights in the target's separate decompression RAM (None: they are in the arena)
    decompression_bytes: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Plan:
    """What the search chose (``chosen`` None: the plain int8 model stays the deployed one)."""

    layers: list[str]
    trials: list[Trial]
    chosen: Trial | None
    reason: str
    lut: object = None  # the LutResult of the chosen width
    model: nn.Module | None = None  # the shared float model the LUT model was exported from
    int8: bytes | None = None
    tflm_out: np.ndarray | None = None
    check: dict | None = None
    split: dict | None = None  # the measured layout with the decoded weights in the separate region, when used

    def to_dict(self) -> dict:
        return {"deployed": self.chosen is not None, "reason": self.reason, "layers": self.layers,
                "bits": self.chosen.bits if self.chosen else None, "trials": [t.to_dict() for t in self.trials]}


def search(model: nn.Module, cfg: SharingConfig, *, x_train, y_train, x_eval, y_eval, accuracy_floor: float,
           base_flash: int, ram_limit: int, seed: int, export: Callable, evaluate: Callable,
           progress=None, task=None, anomaly=None, decompression_limit: int = 0,
           split: Callable | None = None, flash_of: Callable[[bytes], int] | None = None,
           decode_code_bytes: int = 0) -> Plan:
    """Find the fewest LUT bits whose deployed model stays at or above ``accuracy_floor``.

    ``base_flash`` is the firmware flash with the plain int8 model and ``flash_of(lut_bytes)`` the
    firmware flash with a LUT model (its DECODE kernel included): a LUT model is deployed only when
    the firmware shrinks. ``decode_code_bytes``: what the DECODE kernel adds to the firmware; when
    the candidate layers cannot save that much at the fewest bits, nothing is tried.

    ``export(float_model) -> int8 bytes``; ``evaluate(int8_bytes, lut_bytes) -> (check, lut outputs,
    score, arena)`` runs the LUT model in TFLM (``check`` compares it with the int8 model). Scores
    are the task's (tinyprune.task; accuracy when ``task`` is None).

    The decoded weights live in the arena, whose reserved size (``kTensorArenaSize``) must fit
    ``ram_limit``. A target with a separate
    region of ``decompression_limit`` bytes can hold them there instead (TFLM's alternate
    decompression memory): ``split(lut_bytes, arena) -> {"arena_bytes", "alt_bytes", "bit_exact"}``
    measures that layout, and a model whose arena alone fits ``ram_limit`` and whose decoded
    weights fit the region is deployed that way."""
    from tinyprune.export.firmware import arena_size
    from tinyprune.export.lut import lut_compress
    from tinyprune.task import CLASSIFY
    from tinyprune.train import score

    found = candidates(model, cfg.min_bits)
    layers = [name for name, _, _ in found]
    if not layers:
        return Plan([], [], None, "no layer is large enough for a LUT (indices, tables and DECODE op) to save flash")
    most = weight_bytes_saved_at_most(model, cfg.min_bits)
    if decode_code_bytes and most <= decode_code_bytes:
        return Plan(layers, [], None, f"a LUT model cannot make the firmware smaller (the DECODE kernel adds "
                                      f"{decode_code_bytes:,} B of code, {cfg.min_bits}-bit LUTs save at most "
                                      f"{most:,} B of weights)")
    flash_of = flash_of or len
    trials: list[Trial] = []

    def say(bits: int, doing: str) -> None:  # one trial can take minutes (652 s measured on an 87k-parameter net)
        if progress:
            progress(bits - cfg.min_bits, LUT_MAX_BITS + 1 - cfg.min_bits, f"weight sharing at {bits} bits: {doing}")

    for bits in range(cfg.min_bits, LUT_MAX_BITS + 1):
        say(bits, "clustering the weights")
        shared = share(model, layers, bits, x_train, y_train, cfg, seed)
        trial = Trial(bits, score(shared, x_eval, y_eval, task or CLASSIFY, anomaly))
        trials.append(trial)
        if trial.float_accuracy < accuracy_floor:
            trial.verdict = "float accuracy already below the budget"
            continue
        say(bits, "int8 export")
        int8 = export(shared)
        skip: set[int] = set()
        alt = None  # the layout with the decoded weights in the separate region, when used
        while True:
            lut = lut_compress(int8, max_bits=bits, skip=skip)
            if not lut.compressed:
                break
            say(bits, f"{len(lut.compressed)} LUT tensors, checking in TFLM")
            check, lut_out, acc, arena = evaluate(int8, lut.model)
            if arena_size(arena) <= ram_limit:  # the firmware reserves kTensorArenaSize, as the costs count it
                alt = None
                break
            alt = split(lut.model, arena) if split is not None and decompression_limit > 0 else None
            if (alt and alt["bit_exact"] and arena_size(alt["arena_bytes"]) <= ram_limit
                    and alt["alt_bytes"] <= decompression_limit):
                arena = alt["arena_bytes"]
                break
            # the decoded tensors live in the arena: give back the largest until it fits
            skip.add(max(lut.compressed, key=lambda t: t.bytes_before).tensor)
        flash = flash_of(lut.model)
        if not lut.compressed or flash >= base_flash:
            trial.flash_bytes = flash
            trial.verdict = ("no decoded tensor fits in RAM beside the arena" if skip and not lut.compressed
                             else f"firmware not smaller ({flash:,} B against {base_flash:,} B with the int8 model)")
            break  # wider indices save less flash and decode into as much RAM
        trial.int8_accuracy, trial.flash_bytes, trial.arena_bytes = acc, flash, arena
        trial.decompression_bytes = alt["alt_bytes"] if alt else None
        trial.tensors_compressed = len(lut.compressed)
        if not check["bit_exact"]:
            trial.verdict = "LUT model differs from its int8 model in TFLM"
            continue
        if acc < accuracy_floor:
            trial.verdict = "int8 accuracy in TFLM below the budget"
            continue
        trial.verdict = "deployed"
        return Plan(layers, trials, trial, f"{bits}-bit LUTs on {len(lut.compressed)} weight tensors", lut, shared,
                    int8, lut_out, check, alt)
    last = trials[-1].verdict if trials else "nothing tried"
    return Plan(layers, trials, None, f"no width from {cfg.min_bits} to {LUT_MAX_BITS} bits pays on the device "
                                      f"within the accuracy budget (last: {last})")
