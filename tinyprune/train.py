"""Fine-tune and evaluate loops. Progress goes through a callback so stages print nothing."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from tinyprune.config import FinetuneConfig
from tinyprune.task import CLASSIFY, Task, metrics

# progress(done, total, message): called once per batch; the CLI draws it, tests ignore it.
Progress = Callable[[int, int, str], None]


def _quiet(done: int, total: int, message: str) -> None:
    pass


def batches(x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int, seed: int,
            step: Callable[[torch.Tensor, torch.Tensor], float], progress: Progress = _quiet,
            describe: Callable[[int, float], str] | None = None,
            on_epoch: Callable[[int], None] | None = None, model: nn.Module | None = None) -> None:
    """The one epoch/batch loop every trainer here runs (fit, VIB through fit, the centroid fine-tune).

    A seeded generator orders each epoch, a batch of one is skipped (it breaks batch-norm
    statistics), ``step(xb, yb)`` does the update and returns the loss it reports,
    ``describe(epoch, loss)`` words the progress line and ``on_epoch(epoch)`` (1-based) runs after
    each epoch. ``model`` is put in training mode at the start of every epoch.
    """
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = (len(x) + batch_size - 1) // batch_size
    total = epochs * steps_per_epoch
    done = 0
    for epoch in range(epochs):
        if model is not None:
            model.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            if len(idx) < 2 and len(x) > 1:
                continue
            loss = step(x[idx], y[idx])
            done += 1
            if describe is not None:
                progress(done, total, describe(epoch, loss))
        if on_epoch is not None:
            on_epoch(epoch + 1)


def fit(model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: FinetuneConfig, seed: int,
        progress: Progress = _quiet, label: str = "fine-tune",
        on_epoch: Callable[[int, nn.Module], None] | None = None, *,
        extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
        param_groups: list[dict] | None = None,
        on_batch: Callable[[int, float], None] | None = None, loss_name: str = "loss") -> nn.Module:
    """Train in place with Adam or SGD (``cfg.optimizer``, cosine-annealed) for ``cfg.epochs`` epochs; returns the model in
    eval mode. Integer ``y`` are class labels (cross-entropy); float ``y`` are targets in the
    output's shape (mean squared error: regression, or an autoencoder's input, see tinyprune.task).

    Hooks, so that every trainer is this loop:
    ``extra_loss(model)`` is added to the task loss (VIB's KL term); ``param_groups`` replaces
    the single group of all parameters at ``cfg.lr`` (e.g. gates at their own rate);
    ``on_batch(batch size, task loss)`` sees every batch; ``on_epoch(epoch, model)`` is called
    after each epoch (1-based), e.g. to record the information plane, and must leave the
    weights alone.
    """
    if cfg.epochs == 0:
        return model
    params = param_groups if param_groups is not None else model.parameters()
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    loss_fn = nn.CrossEntropyLoss() if y.dtype.kind in "iu" else nn.MSELoss()

    def step(xb: torch.Tensor, yb: torch.Tensor) -> float:
        opt.zero_grad()
        task = loss_fn(model(xb), yb)
        loss = task + extra_loss(model) if extra_loss is not None else task
        loss.backward()
        opt.step()
        if on_batch is not None:
            on_batch(len(xb), task.item())
        return task.item()

    def epoch_done(epoch: int) -> None:
        sched.step()
        if on_epoch is not None:
            on_epoch(epoch, model)

    batches(torch.from_numpy(x), torch.from_numpy(y), cfg.epochs, cfg.batch_size, seed, step, progress,
            lambda e, loss: f"{label} epoch {e + 1}/{cfg.epochs} {loss_name} {loss:.3f}", epoch_done, model)
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    model.eval()
    out = [model(torch.from_numpy(x[i:i + batch_size])).argmax(1) for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict(model, x) == y).mean())


@torch.no_grad()
def outputs(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """The model's float outputs for every sample of ``x``."""
    model.eval()
    return torch.cat([model(torch.from_numpy(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]).numpy()


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, task: Task = CLASSIFY,
             anomaly: np.ndarray | None = None) -> dict:
    """The task's metrics on (x, y); ``score`` is the one every stage reports (tinyprune.task)."""
    if task.kind == "classify":
        acc = accuracy(model, x, y)  # argmax per batch: the float outputs of a big split are never all held
        return {"score": acc, "accuracy": acc}
    return metrics(task, outputs(model, x), y, anomaly)


def score(model: nn.Module, x: np.ndarray, y: np.ndarray, task: Task = CLASSIFY,
          anomaly: np.ndarray | None = None) -> float:
    return evaluate(model, x, y, task, anomaly)["score"]
