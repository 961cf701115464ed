"""Per-channel activation summaries from forward hooks, with an on-disk cache.

The information criteria need, for each layer, one value per (sample, channel). A conv output
``[N, C, *spatial]`` is summarized over its spatial positions: ``"mean"`` (the channel's
average response, default), ``"max"`` (its peak), or ``"flat"`` (no summary, ``[N, C, H*W]``).
A Linear output ``[N, F]`` is already one value per channel (``"flat"`` gives ``[N, F, 1]``).

:func:`run_hooks` is the one place a model is run with hooks over analysis samples: the
information criteria, flow's and compensation's statistics (``tinyprune.prune.statistics``)
and MIPP's captures all go through it, so eval mode, no-grad and hook removal are handled once.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn as nn

from tinyprune.errors import ConfigError, DataError

SUMMARIES = ("mean", "max", "flat")
DEFAULT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)


def run_hooks(model: nn.Module, batches, hooks=(), pre_hooks=()) -> None:
    """Run ``batches`` (tensors) through ``model`` in eval mode without gradients, with
    ``hooks``, (module, fn(module, inputs, output)) pairs, as forward hooks and ``pre_hooks``,
    (module, fn(module, inputs)) pairs, as forward pre-hooks (a module may appear more than once);
    the hooks are removed and the model's mode restored afterwards."""
    handles = [m.register_forward_hook(fn) for m, fn in hooks]
    handles += [m.register_forward_pre_hook(fn) for m, fn in pre_hooks]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def _summarize(out: torch.Tensor, module: nn.Module, summary: str) -> torch.Tensor:
    if isinstance(module, nn.Linear) and out.ndim > 2:
        out = out.movedim(-1, 1)  # Linear on [N, ..., F]: features are the channels
    if out.ndim < 2:
        raise DataError(f"layer output of shape {tuple(out.shape)} has no channel axis")
    flat = out.reshape(out.shape[0], out.shape[1], -1)
    if summary == "mean":
        return flat.mean(-1)
    if summary == "max":
        return flat.amax(-1)
    return flat


def _select_layers(model: nn.Module, layers: Iterable[str] | None) -> dict[str, nn.Module]:
    named = dict(model.named_modules())
    if layers is None:
        chosen = {name: m for name, m in named.items() if isinstance(m, DEFAULT_TYPES)}
        if not chosen:
            raise ConfigError("the model has no Conv1d/Conv2d/Linear layer; name the layers to capture")
        return chosen
    chosen = {}
    for name in layers:
        if name not in named:
            raise ConfigError(f"no module named '{name}' in the model")
        chosen[name] = named[name]
    return chosen


def capture_activations(
    model: nn.Module,
    x,
    layers: Iterable[str] | None = None,
    batch_size: int = 256,
    summary: str = "mean",
) -> dict[str, torch.Tensor]:
    """Run ``x`` (numpy or torch, e.g. NCHW float32) through ``model`` once, in eval mode.

    Returns ``{layer name: float32 CPU tensor}``: ``[N, C]`` per-channel summaries (``"mean"``
    or ``"max"``), or ``[N, C, H*W]`` (``"flat"``), for every Conv1d/Conv2d/Linear module, or
    for the modules named in ``layers`` (any module whose output has channels on axis 1), in
    that order. The model's train/eval mode is restored afterwards.
    """
    if summary not in SUMMARIES:
        raise ConfigError(f"unknown summary '{summary}'; choose one of {', '.join(SUMMARIES)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    chosen = _select_layers(model, layers)
    data = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if data.ndim < 1 or data.shape[0] == 0:
        raise DataError("x holds no samples")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.dtype.is_floating_point else torch.float32

    parts: dict[str, list[torch.Tensor]] = {name: [] for name in chosen}

    def hook_for(name: str, module: nn.Module):
        def hook(_mod, _inp, out):
            if isinstance(out, (tuple, list)):
                out = out[0]
            parts[name].append(_summarize(out.detach(), module, summary).to("cpu", torch.float32))

        return hook

    batches = (data[start : start + batch_size].to(device, dtype) for start in range(0, data.shape[0], batch_size))
    run_hooks(model, batches, [(m, hook_for(name, m)) for name, m in chosen.items()])
    result = {}
    for name, chunks in parts.items():
        if not chunks:
            raise DataError(f"layer '{name}' was never called in the forward pass")
        # A module called twice per forward (shared weights) appears once per call: keep the last.
        per_batch = len(chunks) // -(-data.shape[0] // batch_size)
        result[name] = torch.cat(chunks[per_batch - 1 :: per_batch], dim=0)
    return result


def _settings(layers, summary: str) -> dict:
    return {"summary": summary, "layers": repr(layers)}


def activation_key(model: nn.Module, x, layers=None, summary: str = "mean") -> str:
    """Hex SHA-256 of the model (structure and state_dict bytes), the data bytes and the options.

    Any change to a weight, a mask or a shape (a new sparsity) gives a new key; ``batch_size``
    does not enter because it does not change the result.
    """
    from tinyprune.information.cache import analysis_key

    return analysis_key("acts", model, {"x": x}, _settings(list(layers) if layers is not None else None, summary))


def cached_activations(
    model: nn.Module,
    x,
    cache_dir,
    layers: Iterable[str] | None = None,
    batch_size: int = 256,
    summary: str = "mean",
) -> dict[str, torch.Tensor]:
    """:func:`capture_activations`, stored in ``cache_dir`` as ``acts-<key>.npz`` (see
    :func:`activation_key`); a second call with the same model, data and options loads the file
    and does not run the model."""
    from tinyprune.information.cache import cached

    layers = list(layers) if layers is not None else None

    def compute():
        acts = capture_activations(model, x, layers=layers, batch_size=batch_size, summary=summary)
        return {"names": np.array(list(acts), dtype=str), **{f"a{i}": t.numpy() for i, t in enumerate(acts.values())}}

    stored = cached("acts", model, {"x": x}, _settings(layers, summary), compute, cache_dir)
    return {str(name): torch.from_numpy(stored[f"a{i}"]) for i, name in enumerate(stored["names"])}
