"""The gates of VIBNet (Dai et al. 2018; see ``tinyprune.prune.vib`` for the method): a
``Gate`` per prunable layer's output units, attached by forward hooks (``insert_gates``) so the
model's own code is untouched, and taken off again (``remove_gates``)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tinyprune.errors import ConfigError
from tinyprune.prune.groups import PRUNABLE, classifier_layers

GATES = "vib_gates"  # attribute of a gated model holding its VibGates
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_EPS = 1e-8


class Gate(nn.Module):
    """``z = mu + sigma * eps`` per unit (training) or ``mu * mask`` (eval) on one axis of a tensor."""

    def __init__(self, units: int, axis: int, init_log_sigma2: float = -9.0, threshold: float = 0.0):
        super().__init__()
        self.mu = nn.Parameter(torch.ones(units))
        self.log_sigma2 = nn.Parameter(torch.full((units,), float(init_log_sigma2)))
        self.axis = axis  # 1: channels of [N, C, ...]; -1: features of a Linear's [N, ..., F]
        self.threshold = float(threshold)

    def log_alpha(self) -> torch.Tensor:
        """log(mu^2 / sigma^2) per unit (the authors' code's ``get_logalpha`` is its negative)."""
        return torch.log(self.mu.pow(2) + _EPS) - self.log_sigma2

    def kl(self) -> torch.Tensor:
        """sum over units of log(1 + mu^2 / sigma^2), the layer's KL bound (paper's form)."""
        return F.softplus(self.log_alpha()).sum()

    def mask(self) -> torch.Tensor:
        """1 for units kept (log alpha >= threshold), 0 for units removed."""
        return (self.log_alpha() >= self.threshold).to(self.mu.dtype)

    def scale(self) -> torch.Tensor:
        """The deterministic eval-time factor mu * mask, per unit."""
        return self.mu * self.mask()

    def _view(self, z: torch.Tensor, x: torch.Tensor, batched: bool) -> torch.Tensor:
        if self.axis == 1:
            shape = [x.shape[0] if batched else 1, x.shape[1]] + [1] * (x.ndim - 2)
        else:
            shape = [x.shape[0] if batched else 1] + [1] * (x.ndim - 2) + [x.shape[-1]]
        return z.reshape(shape)

    def forward(self, x: torch.Tensor, sample: bool | None = None) -> torch.Tensor:
        """``sample``: draw z (training) or use mu * mask (eval); None: this module's own mode.
        The hooks pass the hooked layer's mode, so ``model.train()``/``model.eval()`` decide."""
        sample = self.training if sample is None else sample
        if x.ndim < 2:
            return x * self.scale()  # an unbatched vector: nothing to sample per sample
        if sample:
            eps = torch.randn(x.shape[0], self.mu.numel(), dtype=x.dtype, device=x.device)
            z = self.mu + eps * torch.exp(0.5 * self.log_sigma2)
            return x * self._view(z, x, batched=True)
        return x * self._view(self.scale(), x, batched=False)


class _OutHook:
    """Forward hook: the module's output times its gate."""

    def __init__(self, gate: Gate):
        self.gate = gate

    def __call__(self, module, inputs, output):
        return self.gate(output, module.training)


class _InHook:
    """Forward pre-hook: the module's first input times its gate."""

    def __init__(self, gate: Gate):
        self.gate = gate

    def __call__(self, module, args):
        return (self.gate(args[0], module.training),) + tuple(args[1:])


class VibGates(nn.Module):
    """The gate parameters of a gated model, and what each gate is attached to."""

    def __init__(self):
        super().__init__()
        self.gates = nn.ModuleDict()
        # key -> {"layer": conv/linear name, "on": module the hook sits on, "kind": "output"|"input"}
        self.where: dict[str, dict] = {}
        self.history: list[dict] = []  # per epoch of train_vib: mean CE, KL (sum over gates), kept units

    def kl_terms(self) -> dict[str, torch.Tensor]:
        return {k: g.kl() for k, g in self.gates.items()}

    def output_gates(self) -> dict[str, Gate]:
        """conv/linear name -> its output gate."""
        return {w["layer"]: self.gates[k] for k, w in self.where.items() if w["kind"] == "output"}

    def input_gate(self) -> tuple[str, Gate] | None:
        for k, w in self.where.items():
            if w["kind"] == "input":
                return w["layer"], self.gates[k]
        return None


def gates_of(model: nn.Module) -> VibGates | None:
    g = getattr(model, GATES, None)
    return g if isinstance(g, VibGates) else None


def _units(m: nn.Module) -> int:
    if isinstance(m, nn.Linear):
        return m.out_features
    if isinstance(m, _BN):
        return m.num_features
    return m.out_channels


def _bn_consumers(model: nn.Module, example: torch.Tensor | None) -> dict[str, str]:
    """conv/linear name -> name of the affine BatchNorm that is its output's only consumer."""
    names = {m: n for n, m in model.named_modules()}
    out: dict[str, str] = {}
    if example is not None:
        import torch_pruning as tp

        dg = tp.DependencyGraph().build_dependency(model, example, verbose=False)
        for m, node in dg.module2node.items():
            if isinstance(m, PRUNABLE) and len(node.outputs) == 1:
                nxt = node.outputs[0].module
                if isinstance(nxt, _BN) and nxt.affine and m in names and nxt in names:
                    out[names[m]] = names[nxt]
        return out
    try:  # no example: a symbolic trace sees call_module nodes (Sequential, lifted GraphModules)
        import torch.fx as fx

        gm = model if isinstance(model, fx.GraphModule) else fx.symbolic_trace(model)
    except Exception:
        return out
    mods = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(mods.get(node.target), PRUNABLE) and len(node.users) == 1:
            (user,) = node.users
            bn = mods.get(user.target) if user.op == "call_module" else None
            if isinstance(bn, _BN) and bn.affine:
                out[node.target] = user.target
    return out


def _key(name: str, kind: str) -> str:
    return f"{kind}__{name.replace('.', '__') or 'root'}"


def insert_gates(model: nn.Module, example: torch.Tensor | np.ndarray | None = None, classes: int | None = None,
                 gate_inputs: bool = False, init_log_sigma2: float = -9.0, threshold: float = 0.0) -> nn.Module:
    """Attach a VIB gate to every prunable layer of ``model`` (in place; returns ``model``).

    ``example``: one input batch; with it, torch-pruning's dependency graph finds which layers
    feed a BatchNorm directly (the gate then goes after the BN). Without it a symbolic trace
    is tried, and failing that every gate goes on the layer output. ``classes``: number of
    outputs, to find the classifier layer (never gated); None: the last conv/linear.
    """
    if gates_of(model) is not None:
        raise ConfigError("the model already has VIB gates")
    if isinstance(example, np.ndarray):
        example = torch.from_numpy(example)
    skip = set(classifier_layers(model, classes))
    bn_after = _bn_consumers(model, example)
    modules = dict(model.named_modules())
    registry = VibGates()
    prunable = [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE)]
    if gate_inputs and prunable:
        first_name, first = prunable[0]
        if isinstance(first, nn.Linear):
            units, axis = first.in_features, -1
        elif first.groups == 1:
            units, axis = first.in_channels, 1
        else:
            raise ConfigError("input gates need a first layer that is a Linear or an ungrouped conv")
        if example is not None:
            _check_reads_input(model, first, example)
        key = _key(first_name, "input")
        registry.gates[key] = Gate(units, axis, init_log_sigma2, threshold)
        registry.where[key] = {"layer": first_name, "on": first_name, "kind": "input"}
    for name, m in prunable:
        if name in skip:
            continue
        on = bn_after.get(name, name)
        axis = -1 if isinstance(m, nn.Linear) and on == name else 1
        key = _key(name, "output")
        registry.gates[key] = Gate(_units(m), axis, init_log_sigma2, threshold)
        registry.where[key] = {"layer": name, "on": on, "kind": "output"}
    if not registry.where:
        raise ConfigError("the model has no prunable layer besides its classifier; nothing to gate")
    for key, w in registry.where.items():
        target = modules[w["on"]]
        if w["kind"] == "input":
            target.register_forward_pre_hook(_InHook(registry.gates[key]))
        else:
            target.register_forward_hook(_OutHook(registry.gates[key]))
    # A plain attribute, not a submodule: a Sequential would run a submodule as a layer, and
    # the model's state_dict and parameters() stay those of the original model.
    object.__setattr__(model, GATES, registry)
    return model


def _check_reads_input(model: nn.Module, first: nn.Module, example: torch.Tensor) -> None:
    seen = {}

    def grab(_m, args):
        seen["x"] = args[0].detach()

    h = first.register_forward_pre_hook(grab)
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        h.remove()
        model.train(was)
    x = seen.get("x")
    if x is None or x.numel() != example.numel() or not torch.equal(x.reshape(-1), example.reshape(-1)):
        raise ConfigError("input gates need the first layer to read the model input (possibly flattened)")


def _strip_hooks(model: nn.Module) -> None:
    for m in model.modules():
        for store in (m._forward_hooks, m._forward_pre_hooks):
            for hid in [h for h, fn in store.items() if isinstance(fn, (_OutHook, _InHook))]:
                del store[hid]


@torch.no_grad()
def remove_gates(model: nn.Module) -> nn.Module:
    """Fold each gate's eval scale ``mu * mask`` into the parameters before it; delete the hooks
    and the gate attribute (in place; returns ``model``). The result computes exactly what
    the gated model computes in eval mode, with the original module structure."""
    registry = gates_of(model)
    if registry is None:
        _strip_hooks(model)
        return model
    modules = dict(model.named_modules())
    for key, w in registry.where.items():
        z = registry.gates[key].scale().detach()
        target = modules[w["on"]]
        if w["kind"] == "input":
            weight = target.weight
            shape = [1, -1] + [1] * (weight.ndim - 2)
            weight.mul_(z.to(weight.dtype).reshape(shape))
            continue
        if isinstance(target, _BN) or isinstance(target, PRUNABLE):
            shape = [-1] + [1] * (target.weight.ndim - 1)
            target.weight.mul_(z.to(target.weight.dtype).reshape(shape))
            if target.bias is not None:
                target.bias.mul_(z.to(target.bias.dtype))
    _strip_hooks(model)
    object.__delattr__(model, GATES)
    return model
