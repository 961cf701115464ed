"""Unstructured magnitude pruning per layer (Deep Compression, stage 1; Han et al. 2015).

Each Conv/Linear weight loses its smallest-magnitude entries. The masks are kept as boolean
tensors keyed by parameter name (``"<module>.weight"``, the ``state_dict`` key), so later stages
and the archive can find them without the module objects.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.nn as nn

from tinyprune.errors import ConfigError, InputError

Masks = dict[str, torch.Tensor]


def layer_kind(module: nn.Module) -> str | None:
    """``"conv"`` for any convolution, ``"fc"`` for a linear layer, ``None`` otherwise."""
    # _ConvNd covers Conv1d/2d/3d and the transposed convolutions.
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.Linear):
        return "fc"
    return None


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """``(parameter name, module, kind)`` for every Conv/Linear weight, in module order."""
    found = []
    for name, module in model.named_modules():
        kind = layer_kind(module)
        if kind is not None and isinstance(getattr(module, "weight", None), torch.Tensor):
            found.append((f"{name}.weight" if name else "weight", module, kind))
    return found


def _check_sparsity(value: float, what: str) -> float:
    value = float(value)
    # 1.0 would remove a whole layer and disconnect the network: refuse it up front.
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{what} sparsity must be in [0, 1), got {value}")
    return value


def _resolve_overrides(layers, overrides: Mapping[str, float] | None) -> dict[str, float]:
    """Map override keys (module name or parameter name) to parameter names."""
    if not overrides:
        return {}
    by_key = {}
    for pname, _, _ in layers:
        by_key[pname] = pname
        by_key[pname[: -len(".weight")] if pname.endswith(".weight") else pname] = pname
    resolved = {}
    for key, value in overrides.items():
        if key not in by_key:
            known = ", ".join(p for p, _, _ in layers) or "none"
            raise ConfigError(f"sparsity override for unknown layer '{key}'; prunable layers: {known}")
        resolved[by_key[key]] = _check_sparsity(value, f"layer '{key}'")
    return resolved


def check_overrides(model: nn.Module, overrides: Mapping[str, float] | None) -> None:
    """ConfigError naming the prunable layers when an override names none of them (before any training)."""
    _resolve_overrides(weight_layers(model), overrides)


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean keep-mask removing the ``round(sparsity * n)`` smallest |w| (at least one weight stays)."""
    n = weight.numel()
    n_prune = min(int(round(_check_sparsity(sparsity, "layer") * n)), max(n - 1, 0))
    flat = weight.detach().abs().reshape(-1)
    # A stable sort makes ties (e.g. weights already zero) resolve the same way on every run.
    order = torch.argsort(flat, stable=True)
    keep = torch.ones(n, dtype=torch.bool)
    keep[order[:n_prune]] = False
    return keep.reshape(weight.shape)


def magnitude_masks(model: nn.Module, sparsity: float,
                    overrides: Mapping[str, float] | None = None) -> Masks:
    """Per-layer magnitude masks for every Conv/Linear weight.

    ``sparsity`` is the fraction of weights removed in each layer; ``overrides`` maps a module
    name (``"features.0"``) or parameter name (``"features.0.weight"``) to its own fraction.
    The model is not changed; see :func:`apply_masks`.
    """
    layers = weight_layers(model)
    default = _check_sparsity(sparsity, "the")
    per_layer = _resolve_overrides(layers, overrides)
    return {pname: magnitude_mask(module.weight, per_layer.get(pname, default))
            for pname, module, _ in layers}


def _params(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, nn.Parameter]:
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise InputError(f"mask for '{name}' but the model has no such parameter")
        if tuple(mask.shape) != tuple(params[name].shape):
            raise InputError(f"mask for '{name}' has shape {tuple(mask.shape)}, "
                             f"the weight has {tuple(params[name].shape)}")
    return {name: params[name] for name in masks}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned weights in place (``+0.0``, never ``-0.0``, so archives compare bit-exact)."""
    for name, param in _params(model, masks).items():
        param.masked_fill_(~masks[name].to(param.device), 0.0)


class MaskKeeper:
    """Keeps pruned weights at zero while the model trains; use as a context manager.

    Two hooks, because either alone can leak: the gradient hook stops plain SGD/Adam from
    moving a pruned weight, and the forward pre-hook re-zeroes weights that an optimizer with
    momentum or decoupled weight decay moved anyway before they are used.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]):
        params = _params(model, masks)
        self._handles = []
        for name, param in params.items():
            keep = masks[name].to(param.device)
            self._handles.append(param.register_hook(lambda g, keep=keep: g * keep))
        self._handles.append(model.register_forward_pre_hook(lambda m, args: apply_masks(m, masks)))
        apply_masks(model, masks)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "MaskKeeper":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def keep_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> MaskKeeper:
    """Apply ``masks`` now and keep them applied until ``.remove()`` (or the ``with`` block ends)."""
    return MaskKeeper(model, masks)


def finetune_pruned(model: nn.Module, masks: Mapping[str, torch.Tensor], x: np.ndarray, y: np.ndarray,
                    epochs: int = 3, lr: float = 1e-3, batch_size: int = 64, seed: int = 0) -> nn.Module:
    """Retrain the surviving weights (Adam + cross-entropy, :func:`tinyprune.train.fit`) with masks kept."""
    from tinyprune.config import FinetuneConfig
    from tinyprune.train import fit

    with keep_masks(model, masks):
        fit(model, x, y, FinetuneConfig(epochs=epochs, lr=lr, batch_size=batch_size), seed)
    apply_masks(model, masks)  # the last optimizer step ran after the last forward
    return model


def sparsity(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Fraction of weights removed, per layer."""
    return {name: 1.0 - float(m.sum()) / max(m.numel(), 1) for name, m in masks.items()}
