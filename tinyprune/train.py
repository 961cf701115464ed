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


def fit(model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: FinetuneConfig, seed: int,
        progress: Progress = _quiet, label: str = "fine-tune",
        on_epoch: Callable[[int, nn.Module], None] | None = None) -> nn.Module:
    """Train in place with Adam for ``cfg.epochs`` epochs; returns the model. Integer ``y`` are
    class labels (cross-entropy); float ``y`` are targets in the output's shape (mean squared
    error: regression, or an autoencoder's input, see tinyprune.task).

    ``on_epoch(epoch, model)`` is called after each epoch (1-based), e.g. to record the
    information plane; it must leave the model's weights alone."""
    if cfg.epochs == 0:
        return model
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    loss_fn = nn.CrossEntropyLoss() if y.dtype.kind in "iu" else nn.MSELoss()
    steps_per_epoch = (len(x) + cfg.batch_size - 1) // cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    done = 0
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            if len(idx) < 2 and len(x) > 1:
                continue  # a batch of one breaks batch-norm statistics
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            done += 1
            progress(done, total, f"{label} epoch {epoch + 1}/{cfg.epochs} loss {loss.item():.3f}")
        sched.step()
        if on_epoch is not None:
            on_epoch(epoch + 1, model)
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
