"""Trained quantization: k-means weight sharing per layer, then centroid fine-tuning.

Deep Compression, stage 2 (Han, Mao & Dally 2016, sec. 3). Each Conv/Linear weight is replaced
by ``codebook[index]`` at the kept positions; pruned weights stay exactly zero and belong to no
cluster. Centroids start evenly spaced between the min and max kept weight (the paper's
"linear" initialisation: it keeps the rare large weights, which matter most, representable).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from tinyprune.deepcompress.magnitude import weight_layers
from tinyprune.errors import ConfigError, DataError, InputError
from tinyprune.train import batches

MAX_BITS = 15  # indices are stored as int16 above 8 bits


@dataclass(frozen=True)
class BitsSpec:
    """Index width per layer kind (the paper: 8 bits for conv, 5 for fc)."""

    conv: int = 8
    fc: int = 5

    def for_kind(self, kind: str) -> int:
        return self.conv if kind == "conv" else self.fc

    def to_dict(self) -> dict:
        return {"conv": self.conv, "fc": self.fc}


def _check_bits(value, what: str) -> int:
    try:
        bits = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be an integer number of bits, got '{value}'") from None
    if not 1 <= bits <= MAX_BITS:
        raise ConfigError(f"{what} must be in 1..{MAX_BITS}, got {bits}")
    return bits


def parse_bits(spec: "str | int | BitsSpec", what: str = "bits") -> BitsSpec:
    """``"5"`` (every layer), ``"conv=8,fc=5"`` or ``"fc=4"`` (the other kind keeps its default)."""
    if isinstance(spec, BitsSpec):
        return spec
    if isinstance(spec, int):
        bits = _check_bits(spec, what)
        return BitsSpec(bits, bits)
    text = str(spec).strip()
    if "=" not in text:
        bits = _check_bits(text, what)
        return BitsSpec(bits, bits)
    values = BitsSpec().to_dict()
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in values:
            raise ConfigError(f"{what}: expected 'N' or 'conv=N,fc=M', got '{spec}'")
        values[key] = _check_bits(value.strip(), f"{what} for {key}")
    return BitsSpec(**values)


def index_dtype(bits: int) -> torch.dtype:
    return torch.uint8 if bits <= 8 else torch.int16


@dataclass(frozen=True)
class ClusteredLayer:
    """One weight after weight sharing.

    ``index`` has the weight's shape; its entries at pruned positions (``~mask``) are 0 and
    meaningless. ``codebook`` holds at most ``2**bits`` float32 centroids, fewer when the layer
    has fewer distinct kept values or a cluster ended up empty.
    """

    name: str  # parameter name, the state_dict key
    kind: str  # "conv" or "fc"
    bits: int
    codebook: torch.Tensor  # float32 [k]
    index: torch.Tensor  # uint8 (bits <= 8) or int16, weight shape
    mask: torch.Tensor  # bool, weight shape; True = kept

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mask.shape)

    @property
    def k(self) -> int:
        return int(self.codebook.numel())

    @property
    def kept(self) -> int:
        return int(self.mask.sum())

    def kept_indices(self) -> np.ndarray:
        """Cluster index of every kept weight, in row-major order."""
        return self.index[self.mask].numpy().astype(np.int64)

    def weight(self) -> torch.Tensor:
        """``codebook[index]`` at the kept positions, ``+0.0`` elsewhere (float32)."""
        out = torch.zeros(self.shape, dtype=torch.float32)
        out[self.mask] = self.codebook[self.index[self.mask].long()]
        return out

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "shape": list(self.shape), "bits": self.bits,
                "clusters": self.k, "kept": self.kept, "codebook": [float(c) for c in self.codebook]}


def linear_init(values: torch.Tensor, k: int) -> torch.Tensor:
    """``k`` centroids evenly spaced over ``[min, max]`` of ``values`` (float64)."""
    v = values.detach().double()
    return torch.linspace(float(v.min()), float(v.max()), k, dtype=torch.float64)


def _edges(sorted_values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Cluster ``j`` holds ``sorted_values[edges[j]:edges[j + 1]]`` (nearest centroid, ties go low)."""
    # In 1-D the clusters of sorted centroids are contiguous runs of the sorted values, cut at
    # the midpoints: one binary search per centroid (O(k log n)), no n-by-k distance matrix.
    # The search runs in numpy on the shared buffer because torch.searchsorted spreads these
    # few queries over its thread pool and was ~100x slower per call on a busy machine.
    mids = ((centroids[1:] + centroids[:-1]) / 2).numpy()
    cuts = torch.from_numpy(np.searchsorted(sorted_values.numpy(), mids, side="right"))
    n = torch.tensor([sorted_values.numel()])
    return torch.cat([torch.zeros(1, dtype=cuts.dtype), cuts, n])


def kmeans_1d(values: torch.Tensor, k: int, max_iter: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on a 1-D tensor with linear initialisation.

    Returns ``(codebook float32 [k'], labels int64 [n])`` with ``k' <= k``: empty clusters are
    dropped, centroids equal in float32 are merged, and when ``values`` has at most ``k``
    distinct entries the codebook is exactly those values (lossless). Each label is the
    nearest centroid; on convergence each centroid is the mean of its members.
    """
    v = values.detach().reshape(-1).to(torch.float32)
    if v.numel() == 0:
        return torch.zeros(0, dtype=torch.float32), torch.zeros(0, dtype=torch.int64)
    distinct, inverse = torch.unique(v, return_inverse=True)
    if distinct.numel() <= k:
        return distinct, inverse
    # Sort once; every Lloyd iteration is then k binary searches plus prefix-sum differences.
    ordered, order = torch.sort(v.double())
    prefix = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(ordered, 0)])
    centroids = linear_init(ordered, k)
    edges = _edges(ordered, centroids)
    for _ in range(max_iter):
        counts = edges.diff()
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        # An empty cluster keeps its centroid; in 1-D it stays between its neighbours.
        centroids, _ = torch.sort(torch.where(counts > 0, sums / counts.clamp(min=1), centroids))
        new_edges = _edges(ordered, centroids)
        if torch.equal(new_edges, edges):
            break
        edges = new_edges
    counts = edges.diff()
    used = counts > 0
    codebook, merged = torch.unique(centroids[used].to(torch.float32), return_inverse=True)
    labels = torch.empty_like(order)
    labels[order] = torch.repeat_interleave(merged, counts[used])
    return codebook, labels


def cluster_weight(name: str, kind: str, weight: torch.Tensor, bits: int,
                   mask: torch.Tensor | None = None, max_iter: int = 1000) -> ClusteredLayer:
    """Share the kept entries of ``weight`` among at most ``2**bits`` centroids."""
    bits = _check_bits(bits, f"bits for '{name}'")
    w = weight.detach().to(torch.float32).cpu()
    if not torch.isfinite(w).all():
        raise InputError(f"weight '{name}' has NaN or infinite entries; cannot cluster it")
    # Without a mask, the weights that are exactly zero count as pruned.
    keep = (w != 0) if mask is None else mask.detach().to(torch.bool).cpu()
    if keep.shape != w.shape:
        raise InputError(f"mask for '{name}' has shape {tuple(keep.shape)}, the weight has {tuple(w.shape)}")
    codebook, labels = kmeans_1d(w[keep], 1 << bits, max_iter)
    index = torch.zeros(w.shape, dtype=index_dtype(bits))
    index[keep] = labels.to(index.dtype)
    return ClusteredLayer(name, kind, bits, codebook, index, keep.clone())


@torch.no_grad()
def _write_weights(params: Mapping[str, nn.Parameter], layers: Sequence[ClusteredLayer]) -> None:
    for layer in layers:
        params[layer.name].copy_(layer.weight())


def cluster_model(model: nn.Module, bits: "str | int | BitsSpec" = "conv=8,fc=5",
                  masks: Mapping[str, torch.Tensor] | None = None, max_iter: int = 1000) -> list[ClusteredLayer]:
    """Cluster every Conv/Linear weight and write ``codebook[index]`` back into ``model``.

    ``masks`` (from :mod:`tinyprune.deepcompress.magnitude`) marks the kept weights; a layer
    without one treats its exact zeros as pruned.
    """
    spec = parse_bits(bits)
    masks = masks or {}
    layers = [cluster_weight(pname, kind, module.weight, spec.for_kind(kind), masks.get(pname), max_iter)
              for pname, module, kind in weight_layers(model)]
    _write_weights(dict(model.named_parameters()), layers)
    return layers


def grouped_gradient(grad: torch.Tensor, layer: ClusteredLayer) -> torch.Tensor:
    """Sum of the gradients of each cluster's members (paper eq. 3), float32 ``[k]``.

    Pruned positions belong to no cluster, so their gradients are dropped.
    """
    members = layer.index[layer.mask].long()
    return torch.zeros(layer.k, dtype=torch.float32).scatter_add_(
        0, members, grad.detach().cpu()[layer.mask].to(torch.float32))


def centroid_step(codebook: torch.Tensor, grad: torch.Tensor, layer: ClusteredLayer, lr: float) -> torch.Tensor:
    """One SGD step on the shared values: ``codebook - lr * grouped_gradient``."""
    return codebook - lr * grouped_gradient(grad, layer)


def finetune_centroids(model: nn.Module, clusters: Sequence[ClusteredLayer], x: np.ndarray, y: np.ndarray,
                       epochs: int = 1, lr: float = 1e-3, batch_size: int = 64, seed: int = 0,
                       train_other: bool = True) -> list[ClusteredLayer]:
    """Fine-tune the centroids with grouped gradients (plain SGD, cross-entropy).

    Only the codebooks of the clustered weights move; indices and masks are fixed, so no layer
    ever has more than ``2**bits`` distinct kept values and pruned weights stay zero. With
    ``train_other`` the remaining parameters (biases, batch-norm) take the same SGD step.
    Returns the updated records; the model holds the final shared weights.
    """
    if epochs < 0 or lr <= 0 or batch_size < 1:
        raise ConfigError("centroid fine-tune needs epochs >= 0, lr > 0 and batch size >= 1")
    if len(x) != len(y):
        raise DataError(f"{len(x)} inputs but {len(y)} labels")
    params = dict(model.named_parameters())
    missing = [c.name for c in clusters if c.name not in params]
    if missing:
        raise InputError(f"clustered layer '{missing[0]}' is not a parameter of the model")
    codebooks = {c.name: c.codebook.clone() for c in clusters}
    others = [p for n, p in params.items() if n not in codebooks and p.requires_grad] if train_other else []

    def current() -> list[ClusteredLayer]:
        return [dataclasses.replace(c, codebook=codebooks[c.name].clone()) for c in clusters]

    y = np.asarray(y)
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    yt = torch.as_tensor(y).long() if y.dtype.kind in "iu" else torch.as_tensor(y, dtype=torch.float32)
    loss_fn = nn.CrossEntropyLoss() if y.dtype.kind in "iu" else nn.MSELoss()  # float y: regression/reconstruction

    def step(xb: torch.Tensor, yb: torch.Tensor) -> float:
        layers = current()
        _write_weights(params, layers)
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        with torch.no_grad():
            for layer in layers:
                grad = params[layer.name].grad
                if grad is not None:
                    codebooks[layer.name] = centroid_step(codebooks[layer.name], grad, layer, lr)
            for p in others:
                if p.grad is not None:
                    p.sub_(lr * p.grad)
        return loss.item()

    batches(xt, yt, epochs, batch_size, seed, step, model=model)  # plain SGD on the shared values
    model.zero_grad(set_to_none=True)
    result = current()
    _write_weights(params, result)
    model.eval()
    return result
