"""The ``flow`` criterion: the information each channel delivers to the layers that read it.

MIPP (Westphal et al.) keeps the nodes that preserve I(layer; next layer). Under a Gaussian
model of the activations this has a closed form that needs no kernel matrix: the next layer
receives channel c through its weights W[:, c], and what c adds on top of the other channels of
its layer is its *conditional* variance given them, v_c = 1 / (Sigma^-1)_cc (the variance that
the other channels cannot linearly predict; a channel that repeats others delivers nothing
new). With the consumer's noise floor sigma_n^2, the information c adds to the next layer is

    dI_c = 0.5 ln(1 + ||W[:, c]||^2 v_c / sigma_n^2)

so within one layer channels rank by the delivered signal s_c = ||W[:, c]||^2 v_c. Across
layers (one global ranking) each channel's signal is taken as a fraction of its layer's total
and divided by the MACs the channel costs (its own filter plus its columns in the consumers):
information lost per MAC saved. The covariances are over samples and spatial positions of the
consumer's *input* (after activation and pooling), captured in one forward pass over the
analysis samples; re-measured whenever another 10 % of the channels has gone.

Shares make every layer's information equal, which it is not: a thin first block feeds
everything after it. With ``sensitivity`` each group's shares are weighted by what thinning it
costs the model's *output*: before pruning, the group's lowest-ranked channels (the fraction a
uniform cut to the MAC target would take) are hidden from their consumers, and the divergence
of the output from the unpruned model's (KL of the class distributions; for real-valued outputs
the Gaussian 0.5 ln(1 + MSE / variance)) per unit of share hidden becomes the group's weight.
The ranking is then output information lost per MAC saved, comparable across layers.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from tinyprune.prune.groups import PRUNABLE as _LAYERS
from tinyprune.prune.groups import group_channel_macs, removes_inputs, removes_outputs
from tinyprune.prune.statistics import Request, collect
from tinyprune.task import is_class_labels
from tinyprune.train import outputs

RIDGE = 1e-3  # relative ridge on the covariance before inverting (constant channels, N < C)


def conditional_variance(cov: torch.Tensor, conditional: bool = True) -> torch.Tensor:
    """Diagonal of ``cov`` [C, C], or the conditional variances 1 / diag(cov^-1)."""
    var = cov.diagonal().clamp_min(0)
    if not conditional or cov.shape[0] == 1:
        return var
    ridge = RIDGE * var.mean().clamp_min(1e-12)
    prec = torch.linalg.inv(cov + ridge * torch.eye(cov.shape[0], dtype=cov.dtype))
    return (1.0 / prec.diagonal().clamp_min(1e-30)).clamp_max(var + ridge)


def _input_stats(model: nn.Module, x: np.ndarray, cache_dir=None) -> dict[str, dict]:
    """Per conv/linear layer: covariance of its input channels (over samples and positions),
    and its output's spatial size; stored in ``cache_dir`` (tinyprune.information.cache)."""
    from tinyprune.information.cache import cached

    def compute():
        stats = _measure_input_stats(model, x)
        out = {"names": np.array(list(stats), dtype=str)}
        for i, e in enumerate(stats.values()):
            out[f"cov{i}"], out[f"positions{i}"] = e["cov"].numpy(), np.array(e["out_positions"])
        return out

    stored = cached("flow-input-stats", model, {"x": x}, {}, compute, cache_dir)
    return {str(name): {"cov": torch.from_numpy(stored[f"cov{i}"]), "out_positions": int(stored[f"positions{i}"])}
            for i, name in enumerate(stored["names"])}


def _preact_stats(model: nn.Module, x: np.ndarray, cache_dir=None) -> dict[str, torch.Tensor]:
    """Per batch norm: the covariance of its output channels (the pre-activations)."""
    from tinyprune.information.cache import cached

    def compute():
        stats = _measure_input_stats(model, x, types=(nn.modules.batchnorm._BatchNorm,), outputs=True)
        return {"names": np.array(list(stats), dtype=str)} | {f"cov{i}": e["cov"].numpy()
                                                                for i, e in enumerate(stats.values())}

    stored = cached("flow-preact-stats", model, {"x": x}, {}, compute, cache_dir)
    return {str(name): torch.from_numpy(stored[f"cov{i}"]) for i, name in enumerate(stored["names"])}


def _measure_input_stats(model: nn.Module, x: np.ndarray, batch_size: int = 256, types: tuple = _LAYERS,
                         outputs: bool = False) -> dict[str, dict]:
    """Covariance of every ``types`` layer's input (or output) channels over all of ``x``, in
    float64 without a shift: the sums flow has always ranked by, bit for bit."""
    names = {m: n for n, m in model.named_modules()}
    requests = [Request(m, point="output" if outputs else "input", shift=False)
                for m in model.modules() if isinstance(m, types)]
    stats = collect(model, x, requests, batch_size)
    return {names[r.layer]: {"cov": stats[r].covariance(), "out_positions": stats["positions"][r.layer]}
            for r in requests if r in stats}


def _column_energy(module: nn.Module) -> torch.Tensor:
    """||W[:, c]||^2 for every input channel c of a conv/linear layer."""
    w = module.weight.detach().double()
    if isinstance(module, nn.Linear):
        return w.pow(2).sum(0)
    groups = module.groups
    per = w.pow(2).reshape(groups, w.shape[0] // groups, w.shape[1], -1).sum((1, 3))  # [groups, in/groups]
    return per.reshape(-1)


class _Stale(Exception):
    pass


def _output_divergence(reference: torch.Tensor, output: torch.Tensor, classify: bool) -> float:
    """Nats of the model's output lost: KL(p_ref || p) for classes, else Gaussian 0.5 ln(1 + MSE/var)."""
    if classify:
        ref = torch.log_softmax(reference.double(), -1)
        return float((ref.exp() * (ref - torch.log_softmax(output.double(), -1))).sum(-1).mean())
    mse = float((output.double() - reference.double()).pow(2).mean())
    return 0.5 * math.log1p(mse / max(float(reference.double().var()), 1e-12))


def hidden_channels_divergence(model: nn.Module, x: np.ndarray, group, hide: list[int], reference: torch.Tensor,
                               classify: bool) -> float:
    """Output divergence when the group's root channels ``hide`` reach none of their consumers:
    what removing them does to the output, without removing them (no compensation of biases)."""
    hidden = set(hide)
    handles = []
    for item in group:
        layer = item.dep.layer
        if not (isinstance(layer, _LAYERS) and removes_inputs(item.dep)):
            continue
        idx = torch.as_tensor([i for i, r in zip(item.idxs, item.root_idxs) if int(r) in hidden], dtype=torch.long)
        if len(idx) == 0:
            continue
        dim = -1 if isinstance(layer, nn.Linear) else 1
        handles.append(layer.register_forward_pre_hook(
            lambda _m, inp, idx=idx, dim=dim: (inp[0].index_fill(dim, idx, 0.0),) + tuple(inp[1:])))
    was_training = model.training
    try:
        return _output_divergence(reference, torch.from_numpy(outputs(model, x)), classify)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


class FlowImportance:
    """torch-pruning importance: signal each channel delivers to its consumers (see module doc)."""

    REMEASURE = 0.10

    def __init__(self, model: nn.Module, x: np.ndarray, conditional: bool = True, per_mac: bool = True,
                 cache_dir=None, sensitivity: bool = False, sparsity: float = 0.5, y: np.ndarray | None = None,
                 point: str = "input"):
        self.model, self.x, self.cache_dir = model, x, cache_dir
        self.conditional, self.per_mac = conditional, per_mac
        self.sensitivity = sensitivity
        self.point = point
        self._preact: dict[str, torch.Tensor] = {}
        # the channel fraction a uniform cut to the MAC target takes (MACs fall with its square)
        self.probe = 1.0 - math.sqrt(max(0.0, 1.0 - sparsity))
        self.classify = y is not None and is_class_labels(y)
        self.weights: dict[str, float] = {}  # root layer -> output nats lost per unit of share hidden
        self._reference: torch.Tensor | None = None
        self.kept: dict[str, list[int]] | None = None
        self._stats: dict[str, dict] | None = None
        self._channels_then = 0
        self._measured: dict[str, tuple[list[int], torch.Tensor]] = {}  # root layer -> (ids then, score)

    def _measure(self) -> None:
        self._stats, self._measured = _input_stats(self.model, self.x, self.cache_dir), {}
        self._channels_then = self._channels()
        if self.point == "preact":
            self._preact = _preact_stats(self.model, self.x, self.cache_dir)

    def _channels(self) -> int:
        return sum(m.weight.shape[0] for m in self.model.modules() if isinstance(m, _LAYERS))

    def _stale(self) -> bool:
        return self._stats is None or self._channels() <= (1 - self.REMEASURE) * self._channels_then

    def _preact_signal(self, group, names) -> torch.Tensor | None:
        """Shares of conditional variance at the group's batch-norm outputs (None: no batch norm)."""
        signal, seen = torch.zeros(len(group[0].idxs), dtype=torch.float64), False
        for item in group:
            layer = item.dep.layer
            if not (isinstance(layer, nn.modules.batchnorm._BatchNorm) and names.get(layer) in self._preact
                    and removes_outputs(item.dep)):
                continue
            cov = self._preact[names[layer]]
            if cov.shape[0] != layer.num_features:
                raise _Stale
            s = conditional_variance(cov, self.conditional)
            s = s / s.sum().clamp_min(1e-30)
            signal.index_add_(0, torch.as_tensor(item.root_idxs), s[torch.as_tensor(item.idxs)])
            seen = True
        return signal if seen else None

    def _score(self, group) -> torch.Tensor | None:
        names = {m: n for n, m in self.model.named_modules()}
        preact = self._preact_signal(group, names) if self.point == "preact" else None
        if preact is not None:
            return self._finish(group, names, preact)
        signal = torch.zeros(len(group[0].idxs), dtype=torch.float64)
        seen = False
        for item in group:
            layer = item.dep.layer
            if not (isinstance(layer, _LAYERS) and names.get(layer) in self._stats and removes_inputs(item.dep)):
                continue
            cov = self._stats[names[layer]]["cov"]
            energy = _column_energy(layer)
            if cov.shape[0] != energy.shape[0]:
                raise _Stale
            s = conditional_variance(cov, self.conditional) * energy
            s = s / s.sum().clamp_min(1e-30)  # the layer's share: comparable across layers
            signal.index_add_(0, torch.as_tensor(item.root_idxs), s[torch.as_tensor(item.idxs)])
            seen = True
        if not seen:
            return None
        return self._finish(group, names, signal)

    def _finish(self, group, names, signal: torch.Tensor) -> torch.Tensor:
        if self.sensitivity:
            signal = signal * self._weight(group, signal)
        if not self.per_mac:
            return signal
        positions = {m: self._stats[n]["out_positions"] for m, n in names.items() if n in self._stats}
        return signal / group_channel_macs(group, positions).clamp_min(1.0)

    def _weight(self, group, signal: torch.Tensor) -> float:
        """The group's sensitivity weight, measured the first time the group is scored."""
        names = {m: n for n, m in self.model.named_modules()}
        root = names.get(group[0].dep.target.module)
        if root not in self.weights:
            if self._reference is None:
                was_training = self.model.training
                self._reference = torch.from_numpy(outputs(self.model, self.x))
                self.model.train(was_training)
            k = min(len(signal) - 1, max(1, round(self.probe * len(signal))))
            hide = torch.argsort(signal)[:k].tolist()
            share = float(signal[hide].sum() / signal.sum().clamp_min(1e-30))
            nats = hidden_channels_divergence(self.model, self.x, group, hide, self._reference, self.classify)
            self.weights[root] = max(nats, 0.0) / max(share, 1e-6)
        # a group whose thinning costs nothing measurable still ranks its channels among themselves
        floor = 1e-3 * max(self.weights.values())
        return max(self.weights[root], floor, 1e-12)

    def __call__(self, group) -> torch.Tensor | None:
        names = {m: n for n, m in self.model.named_modules()}
        root_name = names.get(group[0].dep.target.module)
        if self._stale():
            self._measure()
        if root_name in self._measured and self.kept is not None and root_name in self.kept:
            ids_then, score = self._measured[root_name]
            pos = {c: i for i, c in enumerate(ids_then)}
            ids_now = self.kept[root_name]
            if all(c in pos for c in ids_now) and len(ids_now) == len(group[0].idxs):
                return score[torch.tensor([pos[c] for c in ids_now])].float()
        try:
            score = self._score(group)
        except _Stale:  # a layer changed since the last measurement
            self._measure()
            score = self._score(group)
        if score is not None and root_name is not None:
            ids = list(self.kept[root_name]) if self.kept and root_name in self.kept else list(range(len(score)))
            self._measured[root_name] = (ids, score)
        return None if score is None else score.float()
