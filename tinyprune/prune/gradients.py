"""Gradient-based torch-pruning importances need gradients of the *current* model."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn


class FreshGradients:
    """Wraps a gradient-based importance: before scoring, whenever the model's shapes changed
    since the last gradients, recompute d(loss)/d(parameters) on the analysis samples (cross-entropy
    for class labels, squared error for float targets)."""

    def __init__(self, inner, model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 200):
        self.inner, self.model = inner, model
        self.x, self.y = torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(y))
        self.batch_size = batch_size
        self._shapes = None

    def __call__(self, group):
        shapes = tuple(p.shape for p in self.model.parameters())
        if shapes != self._shapes:
            self.model.zero_grad()
            was = self.model.training
            self.model.eval()
            with torch.enable_grad():  # torch-pruning scores groups under no_grad
                for i in range(0, len(self.x), self.batch_size):
                    out = self.model(self.x[i:i + self.batch_size])
                    target = self.y[i:i + self.batch_size]
                    loss = nn.functional.cross_entropy(out, target, reduction="sum") if not target.is_floating_point() \
                        else nn.functional.mse_loss(out, target, reduction="sum")  # regression, reconstruction
                    (loss / len(self.x)).backward()
            self.model.train(was)
            self._shapes = shapes
        return self.inner(group)
