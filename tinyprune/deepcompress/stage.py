"""Deep Compression as one pipeline stage: prune -> trained quantization -> Huffman archive.

``run_deepcompress`` chains the core modules of this package on a copy of the model and
returns the clustered model, the ``.tpz`` bytes, the per-layer table (the paper's Tables 2-5)
and one :class:`~tinyprune.report.records.StageRecord` per step. Each record carries the
compression ratio against dense float32 *after* that step, the columns of the paper's Table 1:

* P      - pruning alone: kept weights as 32-bit floats plus their relative indices (CSR-like);
* P+Q    - plus weight sharing: ``b``-bit cluster indices plus the float32 codebooks;
* P+Q+H  - plus Huffman coding: the bytes of the archive itself, every byte counted.

All three count the same tensors (the whole ``state_dict``): tensors that are not Conv/Linear
weights (biases, batch norm) are stored raw as float32 in every column, so the ratios differ
only by how the weights are stored and can be compared with each other. P+Q+H counts every
archive byte (code tables, names, shapes, header, checksum), which P and P+Q leave out; on a
tiny, very sparse model (90% of an 8 KB MLP pruned) that overhead outweighs what Huffman
saves and P+Q+H comes out below P+Q.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from tinyprune.config import FinetuneConfig
from tinyprune.deepcompress.archive import model_tensors, pack, unpack
from tinyprune.deepcompress.huffman import DEFAULT_GAP_BITS, EncodedLayer, encode_layer
from tinyprune.deepcompress.magnitude import apply_masks, keep_masks, magnitude_masks, weight_layers
from tinyprune.deepcompress.weight_sharing import (
    BitsSpec, ClusteredLayer, cluster_model, finetune_centroids, index_dtype, kmeans_1d, parse_bits,
)
from tinyprune.deepcompress.tables import compression_table
from tinyprune.errors import ConfigError, DataError, ExportError
from tinyprune.measure.macs import count_torch
from tinyprune.report.records import StageRecord
from tinyprune.task import CLASSIFY
from tinyprune.train import Progress, _quiet, fit, score

STAGES = ("weight_pruned", "clustered", "huffman")


class RoundTripError(ExportError):
    """The archive did not decode to exactly the weights it was written from (a bug, not bad input)."""


@dataclass(frozen=True)
class DeepCompressConfig:
    weight_sparsity: float = 0.5  # fraction of each Conv/Linear weight removed (paper: per layer)
    # module or parameter name -> its own sparsity; left out of the hash (a dict is unhashable)
    overrides: Mapping[str, float] = field(default_factory=dict, hash=False)
    bits: str = "conv=8,fc=5"  # cluster index width per layer kind (paper: 8 conv, 5 fc)
    gap_bits: str = DEFAULT_GAP_BITS  # relative-index width per layer kind (paper: 8 conv, 5 fc)
    prune_epochs: int = 2  # Adam fine-tune with the masks held, per pruning round
    # Han et al. 2015 prune and retrain iteratively: round r removes 1 - (1 - s)**(r / rounds) of
    # each layer, the same fraction of what is left each round, so the final rates are the set ones.
    prune_rounds: int = 1
    centroid_epochs: int = 2  # SGD on the shared values (grouped gradients)
    lr: float = 1e-3  # learning rate of the pruning fine-tune
    optimizer: str = "adam"  # of the pruning fine-tune: "adam", or "sgd" with momentum 0.9 (Caffe's solver)
    weight_decay: float = 0.0  # L2 during the pruning fine-tune (Han et al. 2015 prune with L2)
    centroid_lr: float = 1e-3  # SGD learning rate of the centroid fine-tune
    batch_size: int = 64
    # Deep Compression stores pruned weights implicitly, so all 2**b codes go to kept weights
    # and a dense layer can hold 2**b + 1 distinct values (the +1 is the zero). A dense LUT (TFLM
    # DECODE) must store that zero as a code too: reserve it, and every layer, hence every int8
    # output channel after export, has at most 2**b distinct values and LUT-compresses at b bits.
    lut_ready: bool = False

    def __post_init__(self):
        # Fail on a bad option before any training, with the core's own messages.
        if not 0.0 <= float(self.weight_sparsity) < 1.0:
            raise ConfigError(f"weight sparsity must be in [0, 1), got {self.weight_sparsity}")
        parse_bits(self.bits, "bits")
        parse_bits(self.gap_bits, "gap bits")
        if self.prune_epochs < 0 or self.centroid_epochs < 0:
            raise ConfigError("deep compression epochs must be >= 0")
        if self.prune_rounds < 1:
            raise ConfigError(f"pruning rounds must be >= 1, got {self.prune_rounds}")
        if self.lr <= 0 or self.centroid_lr <= 0 or self.batch_size < 1:
            raise ConfigError("deep compression learning rates must be > 0 and batch size >= 1")
        FinetuneConfig(lr=self.lr, optimizer=self.optimizer, weight_decay=self.weight_decay)  # its own checks
        # A plain dict copy: the caller's mapping may change later, the config must not.
        object.__setattr__(self, "overrides", {str(k): float(v) for k, v in dict(self.overrides).items()})

    def to_dict(self) -> dict:
        return {"weight_sparsity": self.weight_sparsity, "overrides": dict(self.overrides), "bits": self.bits,
                "gap_bits": self.gap_bits, "prune_epochs": self.prune_epochs, "prune_rounds": self.prune_rounds,
                "centroid_epochs": self.centroid_epochs, "lr": self.lr, "optimizer": self.optimizer,
                "weight_decay": self.weight_decay, "centroid_lr": self.centroid_lr,
                "batch_size": self.batch_size, "lut_ready": self.lut_ready}


@dataclass(frozen=True)
class Sizes:
    """Bytes of the model after each step, and the ratios of dense float32 over them."""

    dense: int  # every state_dict entry as float32
    pruned: float  # P: kept weights as float32 + relative indices; other tensors raw
    quantized: float  # P+Q: b-bit indices + codebooks + relative indices; other tensors raw
    archive: int  # P+Q+H: the .tpz file

    @property
    def ratios(self) -> dict[str, float]:
        return {"P": self.dense / self.pruned, "P+Q": self.dense / self.quantized,
                "P+Q+H": self.dense / self.archive}

    def to_dict(self) -> dict:
        return {"dense_bytes": self.dense, "pruned_bytes": self.pruned, "quantized_bytes": self.quantized,
                "archive_bytes": self.archive, "ratios": self.ratios}


@dataclass(frozen=True)
class DeepCompressResult:
    model: nn.Module  # weights exactly codebook[index] at kept positions, +0.0 elsewhere
    archive: bytes  # the .tpz file
    clusters: tuple[ClusteredLayer, ...]
    table: list[dict]  # per layer, paper Tables 2-5 layout, with a "total" row
    records: tuple[StageRecord, ...]  # weight_pruned, clustered, huffman
    sizes: Sizes

    @property
    def ratios(self) -> dict[str, float]:
        return self.sizes.ratios

    def record(self, name: str) -> StageRecord:
        return next(r for r in self.records if r.name == name)

    def to_dict(self) -> dict:
        # The model and the archive bytes are artifacts, not report content.
        return {"archive_bytes": len(self.archive), "sizes": self.sizes.to_dict(),
                "clusters": [c.to_dict() for c in self.clusters], "table": self.table,
                "stages": [r.to_dict() for r in self.records]}


@torch.no_grad()
def _cluster(model: nn.Module, spec: BitsSpec, masks: Mapping[str, torch.Tensor],
             lut_ready: bool) -> list[ClusteredLayer]:
    """k-means per layer (linear init); with ``lut_ready`` one code is left for the pruned zero."""
    if not lut_ready:
        return cluster_model(model, spec, masks)
    params = dict(model.named_parameters())
    layers = []
    for name, module, kind in weight_layers(model):
        bits, keep = spec.for_kind(kind), masks[name]
        w = module.weight.detach().float().cpu()
        # Only a layer that lost weights needs a code for zero; k-means may still return fewer.
        k = (1 << bits) - (0 if bool(keep.all()) else 1)
        codebook, labels = kmeans_1d(w[keep], max(k, 1))
        index = torch.zeros(w.shape, dtype=index_dtype(bits))
        index[keep] = labels.to(index.dtype)
        layer = ClusteredLayer(name, kind, bits, codebook, index, keep.clone())
        params[name].copy_(layer.weight())
        layers.append(layer)
    return layers


def _stored_params(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> int:
    """Parameters that must be stored: all of them minus the pruned weight positions."""
    pruned = sum(int((~m).sum()) for m in masks.values())
    return sum(p.numel() for p in model.parameters()) - pruned


def _sizes(encoded: Sequence[EncodedLayer], extras: Mapping[str, object], archive: bytes) -> Sizes:
    extra_elements = sum(int(np.prod(tuple(v.shape), dtype=np.int64)) for v in extras.values())
    dense = 4 * (sum(e.numel for e in encoded) + extra_elements)
    raw = 4 * extra_elements
    # Relative indices (with their fillers) are stored in both P and P+Q; only the values change.
    gaps = sum(e.gap_count * e.gap_bits for e in encoded) / 8
    pruned = raw + gaps + sum(4 * e.kept for e in encoded)
    quantized = raw + gaps + sum(e.kept * e.bits / 8 + 4 * len(e.codebook) for e in encoded)
    return Sizes(dense, pruned, quantized, len(archive))


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _check_round_trip(archive: bytes, model: nn.Module, clusters: Sequence[ClusteredLayer]) -> dict:
    """Decode the archive and compare it with the model bit for bit; RoundTripError on any difference.

    The reference is the model itself, not the cluster records, so a weight that drifted from
    ``codebook[index]`` after clustering is caught as well.
    """
    decoded = unpack(archive)
    state = model.state_dict()
    clustered = {c.name for c in clusters}
    missing = sorted(set(state) - set(decoded))
    if missing:
        raise RoundTripError(f"archive round trip lost tensor '{missing[0]}'")
    for name, value in state.items():
        want = value.detach().cpu().numpy()
        # Weights and other floating tensors are stored as float32, integer buffers as int64.
        want = want.astype(np.float32 if want.dtype.kind == "f" else np.int64)
        if not _same_bits(decoded[name], want):
            what = "weight" if name in clustered else "tensor"
            raise RoundTripError(f"archive round trip changed {what} '{name}'")
    return decoded


@torch.no_grad()
def _decoded_model(model: nn.Module, decoded: Mapping[str, np.ndarray]) -> nn.Module:
    """A copy of ``model`` holding the decoded tensors: the accuracy of the archive, measured."""
    out = copy.deepcopy(model)
    state = out.state_dict()
    for name, value in decoded.items():
        # np.array, not ascontiguousarray: the latter turns a 0-d tensor (num_batches_tracked) into 1-d.
        state[name].copy_(torch.from_numpy(np.array(value)).to(state[name].dtype))
    return out.eval()


def _check_data(x_train, y_train, x_eval, y_eval) -> None:
    if len(x_train) != len(y_train) or len(x_eval) != len(y_eval):
        raise DataError("inputs and labels differ in length")
    if len(x_train) < 2 or len(x_eval) < 1:
        raise DataError("deep compression needs at least 2 training and 1 evaluation samples")


def run_deepcompress(model: nn.Module, x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray,
                     y_eval: np.ndarray, cfg: DeepCompressConfig = DeepCompressConfig(), seed: int = 0,
                     progress: Progress | None = None, task=None, anomaly=None) -> DeepCompressResult:
    """Prune, cluster and Huffman-code a copy of ``model`` (the input is not changed).

    ``x_*`` are float32 arrays in the model's layout, ``y_*`` integer labels or float targets
    (``task``, tinyprune.task; accuracies are then the task's score). The returned model is the
    clustered one in eval mode; the archive decodes to it bit for bit (checked).
    """
    progress = progress or _quiet
    _check_data(x_train, y_train, x_eval, y_eval)
    x_train = np.ascontiguousarray(x_train, dtype=np.float32)
    y_train = np.asarray(y_train)
    y_train = y_train.astype(np.int64) if y_train.dtype.kind in "iu" else y_train.astype(np.float32)
    model = copy.deepcopy(model).float()
    if not weight_layers(model):
        raise ConfigError("the model has no Conv/Linear weights to deep-compress")
    macs, _ = count_torch(model, torch.from_numpy(x_train[:1]))
    # Own RNG scope: same seed, same result, and the caller's global torch RNG is left alone.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return _run(model, x_train, y_train, x_eval, y_eval, cfg, seed, progress, macs,
                    lambda m: score(m, x_eval, y_eval, task or CLASSIFY, anomaly))


def _round_rate(final: float, r: int, rounds: int) -> float:
    """Fraction removed after round ``r`` of ``rounds``: equal fractions of what is left each round."""
    # The last round lands on the set rate exactly (no float round trip through the power).
    return final if r == rounds else 1.0 - (1.0 - final) ** (r / rounds)


def _prune_iteratively(model, x_train, y_train, cfg: DeepCompressConfig, seed: int, progress: Progress,
                       held_out) -> tuple[dict, list[dict]]:
    """Prune-retrain rounds toward the configured rates; returns the final masks and one row per round.

    A weight pruned in one round stays pruned: each round's mask is taken on the retrained
    weights and intersected with the previous one.
    """
    masks: dict = {}
    rounds = []
    for r in range(1, cfg.prune_rounds + 1):
        rate = _round_rate(cfg.weight_sparsity, r, cfg.prune_rounds)
        overrides = {k: _round_rate(v, r, cfg.prune_rounds) for k, v in cfg.overrides.items()}
        new = magnitude_masks(model, rate, overrides)
        masks = {n: m & masks[n] for n, m in new.items()} if masks else new
        label = "prune fine-tune" if cfg.prune_rounds == 1 else f"prune round {r}/{cfg.prune_rounds} fine-tune"
        with keep_masks(model, masks):
            # Each round its own seed, so rounds do not replay the same batch order.
            fit(model, x_train, y_train, FinetuneConfig(cfg.prune_epochs, cfg.lr, cfg.batch_size, cfg.optimizer,
                                                        cfg.weight_decay), seed + r - 1,
                progress, label)
        apply_masks(model, masks)  # the last optimizer step came after the last forward pre-hook
        weights = sum(m.numel() for m in masks.values())
        rounds.append({"round": r, "kept_fraction": sum(int(m.sum()) for m in masks.values()) / max(weights, 1),
                       "accuracy": held_out(model)})
    return masks, rounds


def _run(model, x_train, y_train, x_eval, y_eval, cfg: DeepCompressConfig, seed: int, progress: Progress,
         macs: int, held_out) -> DeepCompressResult:
    spec, gap_spec = parse_bits(cfg.bits, "bits"), parse_bits(cfg.gap_bits, "gap bits")

    t = time.perf_counter()
    masks, rounds = _prune_iteratively(model, x_train, y_train, cfg, seed, progress, held_out)
    pruned_acc, pruned_s = rounds[-1]["accuracy"], time.perf_counter() - t
    params = _stored_params(model, masks)

    t = time.perf_counter()
    progress(0, 1, "clustering weights (k-means)")
    clusters = _cluster(model, spec, masks, cfg.lut_ready)
    clusters = finetune_centroids(model, clusters, x_train, y_train, epochs=cfg.centroid_epochs,
                                  lr=cfg.centroid_lr, batch_size=cfg.batch_size, seed=seed)
    model.eval()
    clustered_acc, clustered_s = held_out(model), time.perf_counter() - t

    t = time.perf_counter()
    progress(1, 1, "Huffman coding")
    encoded = [encode_layer(c, cfg.gap_bits) for c in clusters]
    extras = model_tensors(model, clusters)
    archive = pack(encoded, extras)
    decoded = _check_round_trip(archive, model, clusters)
    archive_acc = held_out(_decoded_model(model, decoded))
    table = compression_table(encoded, total=True)
    huffman_s = time.perf_counter() - t

    sizes = _sizes(encoded, extras, archive)
    ratios = sizes.ratios
    weights = sum(e.numel for e in encoded)
    kept = sum(e.kept for e in encoded)
    records = (
        StageRecord("weight_pruned", params, macs, pruned_acc, pruned_s, details={
            "weights": weights, "weights_kept": kept, "kept_fraction": kept / weights if weights else 0.0,
            "sparsity": cfg.weight_sparsity, "overrides": dict(cfg.overrides), "epochs": cfg.prune_epochs,
            "rounds": rounds,
            "layers_kept": {n: int(m.sum()) for n, m in masks.items()},
            "bytes": sizes.pruned, "ratio_vs_fp32": ratios["P"]}),
        StageRecord("clustered", params, macs, clustered_acc, clustered_s, details={
            "bits": spec.to_dict(), "lut_ready": cfg.lut_ready, "clusters": {c.name: c.k for c in clusters},
            "epochs": cfg.centroid_epochs,
            "bytes": sizes.quantized, "ratio_vs_fp32": ratios["P+Q"]}),
        StageRecord("huffman", params, macs, archive_acc, huffman_s, details={
            "gap_bits": gap_spec.to_dict(), "archive_bytes": len(archive), "round_trip": "bit-exact",
            "bytes": sizes.archive, "ratio_vs_fp32": ratios["P+Q+H"], "ratios": ratios,
            "dense_fp32_bytes": sizes.dense}),
    )
    return DeepCompressResult(model.eval(), archive, tuple(clusters), table, records, sizes)
