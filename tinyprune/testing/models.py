"""Small models covering the structures pruning must keep consistent.

Each factory takes no required arguments (usable as ``--arch tinyprune.testing.models:NAME``)
and works on 1x8x8 inputs with 10 classes, the shape of the built-in digits data.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def cnn_bn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
    )


def digits_cnn() -> nn.Module:
    """The built-in example's model: three conv+BN+ReLU layers and a classifier."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 2 * 2, 10),
    )


class DWResidual(nn.Module):
    """Stem, then a depthwise-separable block whose output is added back to its input."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=width), nn.BatchNorm2d(width), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(width, width, 1), nn.BatchNorm2d(width))
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.pw(self.dw(x)))
        return self.head(x.mean((2, 3)))


class ConcatNet(nn.Module):
    """Two branches concatenated on channels (a DenseNet-style unit), then a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.fuse = nn.Sequential(nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.branch(x)], dim=1)
        return self.head(torch.flatten(self.fuse(x), 1))


def dw_residual() -> nn.Module:
    return DWResidual()


def concat_net() -> nn.Module:
    return ConcatNet()


MODELS = {"mlp": mlp, "cnn_bn": cnn_bn, "digits_cnn": digits_cnn, "dw_residual": dw_residual, "concat_net": concat_net}
