"""VIBNet: variational-information-bottleneck gates, trained, then removed physically (Dai et al. 2018).

Seed 003 (and the authors' code, ``zhuchen03/VIBNet``). Every prunable layer's output h_i
(per conv channel / per linear neuron; not the classifier output) is multiplied by a gate

    z = mu + sigma * eps,  eps ~ N(0, 1) per sample and unit, in training;   z = mu * m at eval,

with parameters ``mu`` (init 1) and ``log sigma^2`` (init -9, the authors' ``init_mag``), and
``m`` the hard mask below. Training minimizes (paper's final objective, per sample)

    loss = CE + sum_i gamma_i * sum_units log(1 + alpha),     alpha = mu^2 / sigma^2,

``log(1 + mu^2/sigma^2)`` being (twice) the KL bound on I(h_i; h_{i-1}) after optimizing the
prior's variance. Conventions against the paper and code, so settings translate:

* ``gamma_i = gamma * layer_gamma[i]`` (``layer_gamma`` default: 1 for every layer). The
  authors' code adds ``kl_fac * 0.5 * kl_mult_i * log(1+alpha)`` summed over every *position* of a
  conv map (and the paper's objective, as we read it, weights the CE by the number of layers
  L); here the KL of a channel counts once (a channel is one unit, kept or removed) and the CE
  is not scaled, so ``gamma = 0.5 * kl_fac * kl_mult_i * (H*W)`` of their code's settings.
* The code's ``logalpha`` is ``log(sigma^2/mu^2)`` and it keeps units with ``logalpha <
  mask_thresh`` (default 0). Here ``log_alpha = log(mu^2/sigma^2)`` and a unit is removed when
  ``log_alpha < threshold`` (default 0: alpha < 1, the signal-to-noise ratio of the gate below
  one); ``threshold = -mask_thresh``.

Where the gate goes. On the conv/linear output, except when the layer's only consumer is an
affine BatchNorm: then on the BN output. Either way the deterministic eval scale ``mu * m``
folds *exactly* into the parameters that produced the gated tensor (conv/linear weight rows
and bias, or BN weight and bias), and a closed unit outputs exactly 0, so removing it (the
next layer's input column goes with it, through torch-pruning) does not change the output
when what follows maps 0 to 0 (ReLU, pooling, another conv/linear, flatten, addition of
coupled channels that are all closed). When it maps 0 to a constant instead (a BN between the
closed channel and the next layer, as in a pre-activation BN after a DenseNet concat), the
constant's contribution is added to the next layer's bias before the removal: exact for a
linear or 1x1/unpadded conv consumer; at the borders of a padded k x k conv a small error
stays. :func:`vib_prune` measures and reports the difference (``max_abs_diff``).
The paper puts the gate after the activation (conv -> BN -> ReLU -> gate); with mu > 0 that is
the same function, ReLU(mu h) = mu ReLU(h).

Input gates (``gate_inputs=True``, needed to compare with the paper's LeNet-300-100 784-300-100
-> 97-71-33, whose first number counts input pixels): one gate per input feature/channel of
the first layer. The model's input shape is the data's, so closed inputs become zero weight
columns of the first layer (reported as ``inputs_used``), not a smaller input.

Gates are forward hooks (forward pre-hooks for input gates) on the existing modules, with
their parameters in one ``VibGates`` module kept as the plain attribute ``model.vib_gates``
(not a submodule: ``model.parameters()`` and ``state_dict()`` stay the original ones), so
they work on any ``nn.Module``, including
the ``GraphModule`` of :mod:`tinyprune.lift`, and leave its structure alone.
:func:`remove_gates` folds them and deletes hooks and attribute: the result has the original
module structure and no gate ops, so it exports with ``torch.export``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from tinyprune.config import FinetuneConfig
from tinyprune.errors import ConfigError
from tinyprune.prune.groups import PRUNABLE, channel_groups
from tinyprune.prune.vib_gates import _units, gates_of, insert_gates, remove_gates
from tinyprune.task import is_class_labels
from tinyprune.train import Progress, _quiet, fit


@dataclass(frozen=True)
class VibConfig:
    # KL weight per unit and sample (module doc: the paper's scale). 5e-4 took LeNet-300-100 on
    # MNIST to about the paper's widths (benchmarks/RESULTS_vib.md); larger removes more.
    gamma: float = 5e-4
    epochs: int = 10  # VIB training epochs (network weights and gates trained together)
    lr: float = 1e-3  # Adam learning rate of the network weights, cosine-annealed over the epochs
    # Adam learning rate of mu and log sigma^2 (the authors' code has an ib_lr too); None: auto,
    # max(1e-2, 20 / training steps), so a gate can travel from -9 past 0 on a small dataset too
    gate_lr: float | None = None
    threshold: float = 0.0  # remove units with log(mu^2 / sigma^2) below this (paper: 0)
    batch_size: int = 100
    init_log_sigma2: float = -9.0  # authors' code: init_mag = 9
    gate_inputs: bool = False  # also gate the first layer's inputs (paper's LeNet-300-100 table)
    layer_gamma: tuple[float, ...] | None = None  # per gated layer multiplier, in gate order; None: all 1
    # "adam", or "sgd" with momentum 0.9 as the authors' code trains (there gates share the
    # network's rate: gate_lr None means lr); weight_decay applies to weights and gates alike, as
    # the authors' ib_wd defaults to their weight decay
    optimizer: str = "adam"
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if not (isinstance(self.gamma, (int, float)) and math.isfinite(self.gamma) and self.gamma >= 0):
            raise ConfigError(f"--vib-gamma must be a number >= 0, got {self.gamma!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise ConfigError(f"--vib-epochs must be an integer >= 0, got {self.epochs!r}")
        if not self.lr > 0 or not (self.gate_lr is None or self.gate_lr > 0) or self.batch_size < 1:
            raise ConfigError("VIB learning rate must be > 0 and batch size >= 1")
        if not math.isfinite(self.threshold) or not math.isfinite(self.init_log_sigma2):
            raise ConfigError("VIB threshold and initial log sigma^2 must be finite numbers")
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"--vib-optimizer must be adam or sgd, got {self.optimizer!r}")
        if not (isinstance(self.weight_decay, (int, float)) and 0 <= self.weight_decay < 1):
            raise ConfigError(f"--vib-weight-decay must be in [0, 1), got {self.weight_decay!r}")
        if self.layer_gamma is not None and any(not (g >= 0 and math.isfinite(g)) for g in self.layer_gamma):
            raise ConfigError(f"layer_gamma must hold numbers >= 0, got {self.layer_gamma!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def kl_total(model: nn.Module, layer_gamma: Sequence[float] | None = None) -> torch.Tensor:
    """sum_i layer_gamma_i * KL_i over the gates of ``model`` (without the global gamma)."""
    registry = gates_of(model)
    if registry is None:
        raise ConfigError("the model has no VIB gates")
    terms = list(registry.kl_terms().values())
    if layer_gamma is None:
        return torch.stack(terms).sum()
    if len(layer_gamma) != len(terms):
        names = ", ".join(w["layer"] + ("" if w["kind"] == "output" else ":inputs") for w in registry.where.values())
        raise ConfigError(f"--vib-layer-gamma gives {len(layer_gamma)} multipliers for {len(terms)} gated layers "
                          f"({names}); give one per layer, in that order")
    return sum(float(g) * t for g, t in zip(layer_gamma, terms))


def train_vib(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, gamma: float, lr: float = 1e-3,
              batch_size: int = 100, seed: int = 0, progress: Progress = _quiet, classes: int | None = None,
              layer_gamma: Sequence[float] | None = None, gate_inputs: bool = False,
              init_log_sigma2: float = -9.0, threshold: float = 0.0, gate_lr: float | None = None,
              optimizer: str = "adam", weight_decay: float = 0.0) -> nn.Module:
    """Train ``model`` with loss CE + gamma * sum_i layer_gamma_i * KL_i (``optimizer`` Adam or
    SGD with momentum, cosine schedule, ``weight_decay`` on weights and gates).

    For float targets (regression, reconstruction) the loss is the squared error; the KL weight is
    then taken in the same units as for classes, nats per sample: under a Gaussian likelihood
    with the model's own residual variance s^2 (its mean squared error before training), the
    per-sample negative log-likelihood is D * MSE / (2 s^2) for D output values, so gamma
    applies as gamma * 2 s^2 / D against the mean squared error (``kl_weight`` in the registry).
    Without it, a 784-wide reconstruction error of 0.02 weighs as little as a few closed gates.

    The gates get their own learning rate ``gate_lr``: Adam moves a parameter by about its
    learning rate per step whatever gamma is, and log sigma^2 starts at -9, so at the network's
    rate (1e-3) a unit needs ~9000 steps before its gate can close. ``gate_lr=None``:
    ``max(1e-2, 20 / steps)`` for the run's number of steps (1e-2 from 2000 steps on). SGD
    moves a gate by its gradient instead, so there ``gate_lr=None`` is ``lr``, the authors' setting.

    Gates are inserted first if the model has none (in place). Returns the gated model in eval
    mode; ``model.vib_gates.history`` holds per epoch the mean CE, the unweighted KL sum and
    the units kept at the threshold (epoch 0: before training).
    """
    if gates_of(model) is None:
        insert_gates(model, torch.from_numpy(x[:1]), classes, gate_inputs, init_log_sigma2, threshold)
    registry = gates_of(model)
    if layer_gamma is not None:
        kl_total(model, layer_gamma)  # a wrong count fails here, before any training
    torch.manual_seed(seed)  # the gate noise

    def snapshot(epoch: int, ce: float | None) -> None:
        with torch.no_grad():
            kl = float(kl_total(model))
            kept = {w["layer"] + ("" if w["kind"] == "output" else ":inputs"): int(registry.gates[k].mask().sum())
                    for k, w in registry.where.items()}
        registry.history.append({"epoch": epoch, "ce": ce, "kl": kl, "kept": kept})

    if not registry.history:
        snapshot(0, None)
    if epochs == 0:
        return model.eval()
    steps = (len(x) + batch_size - 1) // batch_size
    if gate_lr is None:
        gate_lr = lr if optimizer == "sgd" else max(1e-2, 20.0 / (steps * epochs))
    registry.gate_lr = gate_lr
    kl_weight = gamma * _nats_per_squared_error(model, x, y)
    registry.kl_weight = kl_weight
    start = registry.history[-1]["epoch"]
    ce = [0.0, 0]  # the epoch's summed CE and samples, for the history

    def on_batch(n: int, loss: float) -> None:
        ce[0] += loss * n
        ce[1] += n

    def on_epoch(epoch: int, _model) -> None:
        snapshot(start + epoch, ce[0] / max(ce[1], 1))
        ce[:] = [0.0, 0]

    fit(model, x, y, FinetuneConfig(epochs, lr, batch_size, optimizer, weight_decay), seed, progress, "VIB", on_epoch,
        extra_loss=lambda m: kl_weight * kl_total(m, layer_gamma), on_batch=on_batch,
        loss_name="CE" if is_class_labels(y) else "MSE",  # fit's loss follows the targets
        param_groups=[{"params": list(model.parameters()), "lr": lr},
                      {"params": list(registry.parameters()), "lr": gate_lr}])
    return model.eval()


def _nats_per_squared_error(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """1 for class labels; for float targets 2 s^2 / D (see train_vib): what one unit of the mean
    squared error is worth in nats per sample is D / (2 s^2)."""
    if is_class_labels(y):
        return 1.0
    n = min(len(x), 2048)
    pred = _outputs(model, torch.from_numpy(np.ascontiguousarray(x[:n]))).double()
    target = torch.from_numpy(np.ascontiguousarray(y[:n])).double().reshape(pred.shape)
    mse = float((pred - target).pow(2).mean())
    return 2.0 * max(mse, 1e-12) / (pred[0].numel())


def gate_stats(model: nn.Module) -> dict[str, dict]:
    """Per gate (conv/linear name, ``NAME:inputs`` for the input gate): log alpha and the mask."""
    registry = gates_of(model)
    if registry is None:
        raise ConfigError("the model has no VIB gates")
    out = {}
    with torch.no_grad():
        for key, w in registry.where.items():
            g = registry.gates[key]
            la = g.log_alpha().detach().double().numpy()
            name = w["layer"] if w["kind"] == "output" else f"{w['layer']}:inputs"
            out[name] = {"on": w["on"], "kind": w["kind"], "log_alpha": la, "mask": g.mask().bool().numpy(),
                         "mu": g.mu.detach().double().numpy()}
    return out


@torch.no_grad()
def _absorb_constant_inputs(model: nn.Module, group, x: torch.Tensor) -> None:
    """Before a removal: where a consumer conv/linear receives a *constant* on an input channel
    about to go (a closed channel passed through a BN that shifts 0, as in a pre-activation
    BN after a concat), add that constant's contribution to the consumer's bias.

    Exact for linear layers and for convs without zero padding or with 1x1 kernels; for a
    padded k x k conv the border positions, where part of the kernel sees padding, keep a small
    error (reported by :func:`vib_prune` as ``max_abs_diff``). Consumers without a bias, and
    inputs that are not constant, are left alone.
    """
    consumers = [(dep.layer, list(idxs)) for dep, idxs in group
                 if getattr(dep.pruning_fn, "__name__", "") == "prune_in_channels"
                 and isinstance(dep.layer, PRUNABLE) and dep.layer.bias is not None
                 and (isinstance(dep.layer, nn.Linear) or dep.layer.groups == 1)]
    if not consumers:
        return
    seen: dict[int, torch.Tensor] = {}

    def grab(i, layer, idxs):
        def hook(_m, args):
            a = args[0]
            seen[i] = (a[..., idxs] if isinstance(layer, nn.Linear) else a[:, idxs]).detach()
        return hook

    handles = [layer.register_forward_pre_hook(grab(i, layer, idxs)) for i, (layer, idxs) in enumerate(consumers)]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    for i, (layer, idxs) in enumerate(consumers):
        a = seen.get(i)
        if a is None:
            continue
        if isinstance(layer, nn.Linear):
            a = a.reshape(-1, len(idxs))
        else:
            a = a.transpose(0, 1).reshape(len(idxs), -1).T
        v = a.mean(0)
        if not bool(((a - v).abs() <= 1e-5 * v.abs().clamp_min(1.0)).all()) or not bool(v.abs().gt(0).any()):
            continue
        w = layer.weight[:, idxs]
        if w.ndim > 2:
            w = w.flatten(2).sum(2)  # each output position sums the kernel over the constant
        layer.bias.add_((w @ v.to(w.dtype)).to(layer.bias.dtype))


def remove_channels(model: nn.Module, example: torch.Tensor, closed: dict[str, set[int]],
                    kept: dict[str, list[int]] | None = None, score: dict[str, np.ndarray] | None = None,
                    x_check: torch.Tensor | None = None):
    """Physically remove the output channels ``closed[layer]`` (original channel ids) of each
    conv/linear with torch-pruning; returns ``kept`` (layer -> original ids that remain).

    A channel coupled to other layers (residual adds, depthwise convs) goes only when it is
    closed in every coupled conv/linear. No layer is emptied: its highest-``score`` channel
    (e.g. log alpha) stays, already zero when it was closed, so the function is unchanged.
    With ``x_check`` (a few inputs), constants that a removed channel still fed to the next
    layer are folded into that layer's bias first (:func:`_absorb_constant_inputs`).
    """
    import torch_pruning as tp

    from tinyprune.prune.groups import removes_outputs

    model.eval()
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    if kept is None:
        kept = {n: list(range(_units(m))) for n, m in modules.items() if isinstance(m, PRUNABLE)}
    kept = {k: list(v) for k, v in kept.items()}
    dg = tp.DependencyGraph().build_dependency(model, example, verbose=False)
    for name in [n for n in kept if n in closed]:
        layer = modules[name]
        ids = [c for c in kept[name] if c in closed[name]]
        if len(ids) >= len(kept[name]):  # never empty a layer
            rank = score.get(name) if score else None
            best = max(kept[name], key=lambda c: rank[c] if rank is not None else -c)
            ids = [c for c in ids if c != best]
        if not ids:
            continue
        pos = [kept[name].index(c) for c in ids]
        fn = dg.get_pruner_of_module(layer).prune_out_channels
        group = dg.get_pruning_group(layer, fn, pos)
        allowed = set(pos)
        for i, (dep, idxs) in enumerate(group):
            other = dep.layer
            if other is layer or not removes_outputs(dep) or not isinstance(other, PRUNABLE):
                continue
            oname = names.get(other)
            for root, d in zip(group[i].root_idxs, idxs):
                cid = kept[oname][d] if oname in kept and d < len(kept[oname]) else None
                if oname not in closed or cid not in closed[oname]:
                    allowed.discard(int(root))
        if not allowed:
            continue
        if len(allowed) < len(pos):
            group = dg.get_pruning_group(layer, fn, sorted(allowed))
        if not dg.check_pruning_group(group) or channel_groups(group) > 1:
            continue  # a grouped conv's channel groups: left to the MAC loop, which removes whole sets
        if x_check is not None:
            _absorb_constant_inputs(model, group, x_check)
        for dep, idxs in group:
            oname = names.get(dep.layer)
            if removes_outputs(dep) and oname in kept and isinstance(dep.layer, PRUNABLE):
                drop = set(int(i) for i in idxs)
                kept[oname] = [c for p, c in enumerate(kept[oname]) if p not in drop]
        group.prune()
    return kept


@torch.no_grad()
def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + 256]) for i in range(0, len(x), 256)])


def vib_prune(model: nn.Module, x_train: np.ndarray, y_train: np.ndarray, cfg: VibConfig, classes: int | None,
              progress: Progress | None = None, x_check: np.ndarray | None = None) -> tuple[nn.Module, dict]:
    """VIB-train a copy of ``model`` on (x_train, y_train), remove the units whose log alpha
    falls below ``cfg.threshold`` and fold the gates away. Returns (plain pruned model, report).

    Report: ``layers`` (per gated layer: channels before/after, kept original ids, log alpha
    min/median/max, whether it collapsed to the one channel that is always kept), ``inputs``
    (input gates), ``history`` (CE/KL per epoch), ``max_abs_diff`` between the pruned model and
    the gated model in eval mode on ``x_check`` (default: 256 training samples), MACs/params.
    """
    from tinyprune.measure.macs import count_torch

    progress = progress or _quiet
    model = copy.deepcopy(model).eval()
    example = torch.from_numpy(x_train[:1])
    macs0, params0 = count_torch(model, example)
    widths0 = {n: _units(m) for n, m in model.named_modules() if isinstance(m, PRUNABLE)}
    insert_gates(model, example, classes, cfg.gate_inputs, cfg.init_log_sigma2, cfg.threshold)
    train_vib(model, x_train, y_train, cfg.epochs, cfg.gamma, cfg.lr, cfg.batch_size, cfg.seed, progress,
              layer_gamma=cfg.layer_gamma, gate_lr=cfg.gate_lr, optimizer=cfg.optimizer,
              weight_decay=cfg.weight_decay)
    stats = gate_stats(model)
    history = list(gates_of(model).history)
    gate_lr = getattr(gates_of(model), "gate_lr", cfg.gate_lr)
    kl_weight = getattr(gates_of(model), "kl_weight", cfg.gamma)
    xc = torch.from_numpy(x_check if x_check is not None else x_train[:256])
    reference = _outputs(model, xc)
    remove_gates(model)
    closed = {n: set(np.flatnonzero(~s["mask"]).tolist()) for n, s in stats.items() if s["kind"] == "output"}
    scores = {n: s["log_alpha"] for n, s in stats.items() if s["kind"] == "output"}
    kept = remove_channels(model, example, closed, score=scores, x_check=xc[:64])
    diff = float((_outputs(model, xc) - reference).abs().max())
    macs1, params1 = count_torch(model, example)
    layers = []
    for name, width in widths0.items():
        s = stats.get(name)
        rec = {"name": name, "channels_before": width, "channels_after": len(kept.get(name, range(width))),
               "gated": s is not None}
        if s is not None:
            la = s["log_alpha"]
            rec.update(gate_on=s["on"], closed=int((~s["mask"]).sum()),
                       collapsed=bool(not s["mask"].any()),
                       log_alpha={"min": float(la.min()), "median": float(np.median(la)), "max": float(la.max())},
                       kept=[int(c) for c in kept.get(name, [])])
        layers.append(rec)
    inputs = None
    for name, s in stats.items():
        if s["kind"] == "input":
            la = s["log_alpha"]
            inputs = {"layer": name.split(":")[0], "inputs": int(la.size), "inputs_used": int(s["mask"].sum()),
                      "log_alpha": {"min": float(la.min()), "median": float(np.median(la)), "max": float(la.max())}}
    report = {
        "method": "vib", "config": cfg.to_dict(), "gate_lr": gate_lr, "kl_weight": kl_weight, "layers": layers,
        "inputs": inputs,
        "history": history,
        "kept": kept, "log_alpha": {n: v.tolist() for n, v in scores.items()},
        "max_abs_diff": diff, "macs_before": macs0, "macs_after": macs1, "params_before": params0,
        "params_after": params1,
    }
    return model, report


class VibImportance:
    """torch-pruning importance from a finished VIB run, used when the MAC target asks for more
    than the threshold removed. A channel's score is its gate's information bound,
    log(1 + alpha) nats (the KL term VIB trained, by channel identity through ``kept``, which
    ``prune_to_macs`` keeps up to date), divided by the MACs removing it saves (``per_mac``,
    with ``example`` one input sample to size the feature maps).

    Per MAC because the ranking is global: by log alpha alone, the MAC loop empties the cheap
    fully connected layers first (a neuron's gate is as noisy as a conv channel's but saves a
    hundredth of the MACs) and LeNet-5 lands at 6-6-4-4 at 50 % (benchmarks/RESULTS.md)."""

    def __init__(self, model: nn.Module, log_alpha: dict[str, Sequence[float]], example: torch.Tensor | None = None,
                 per_mac: bool = True):
        self.model = model
        self.log_alpha = {k: torch.as_tensor(np.asarray(v), dtype=torch.float64) for k, v in log_alpha.items()}
        self.kept: dict[str, list[int]] | None = None
        if per_mac and example is None:
            raise ConfigError("VibImportance needs an example input to rank per MAC")
        self.example, self.per_mac = example, per_mac
        self._positions: dict[nn.Module, int] | None = None

    def __call__(self, group) -> torch.Tensor | None:
        from tinyprune.prune.groups import group_channel_macs, group_mean, output_positions

        def scores_of(name):
            if name not in self.log_alpha:
                return None
            ids = self.kept.get(name) if self.kept is not None else None
            la = self.log_alpha[name]
            la = la[torch.as_tensor(ids)] if ids is not None else la
            # log alpha when not per MAC (it may be negative; the lowest go first); the bound
            # log(1 + alpha) >= 0 nats otherwise, so dividing by MACs keeps the order meaningful
            return torch.nn.functional.softplus(la) if self.per_mac else la

        score = group_mean(self.model, group, scores_of)
        if score is None or not self.per_mac:
            return score
        if self._positions is None:  # spatial sizes do not change as channels go
            self._positions = output_positions(self.model, self.example)
        return (score.double() / group_channel_macs(group, self._positions).clamp_min(1.0)).float()
