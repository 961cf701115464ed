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


class DWBlock(nn.Module):
    """A depthwise-separable block whose output is added back to its input."""

    def __init__(self, width: int):
        super().__init__()
        self.dw = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=width), nn.BatchNorm2d(width), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(width, width, 1), nn.BatchNorm2d(width))

    def forward(self, x):
        return torch.relu(x + self.pw(self.dw(x)))


class DWResidual(nn.Module):
    """Stem, then two residual depthwise-separable blocks (two skip-units), pooled classifier."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.block1 = DWBlock(width)
        self.block2 = DWBlock(width)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        return self.head(x.mean((2, 3)))


class ConcatNet(nn.Module):
    """A two-unit dense block (each unit's output concatenated to its input), then a classifier."""

    def __init__(self, growth: int = 12):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.unit1 = nn.Sequential(nn.Conv2d(16, growth, 3, padding=1), nn.BatchNorm2d(growth), nn.ReLU())
        self.unit2 = nn.Sequential(nn.Conv2d(16 + growth, growth, 3, padding=1), nn.BatchNorm2d(growth), nn.ReLU())
        self.fuse = nn.Sequential(nn.BatchNorm2d(16 + 2 * growth), nn.Conv2d(16 + 2 * growth, 32, 1), nn.ReLU(),
                                  nn.MaxPool2d(2))
        self.head = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.unit1(x)], dim=1)
        x = torch.cat([x, self.unit2(x)], dim=1)
        return self.head(torch.flatten(self.fuse(x), 1))


def _ds(cin: int, cout: int, stride: int, act=nn.ReLU) -> list[nn.Module]:
    return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), act(),
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), act()]


def ds_cnn() -> nn.Module:
    """The keyword-spotting DS-CNN shape (MLPerf Tiny): a conv, then depthwise-separable blocks."""
    return nn.Sequential(nn.Conv2d(1, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                         *_ds(64, 64, 1), *_ds(64, 64, 1), *_ds(64, 64, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def mobilenet() -> nn.Module:
    """The MobileNet-v1 shape (strided depthwise-separable blocks, ReLU6), scaled to 8x8 digits."""
    return nn.Sequential(nn.Conv2d(1, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
                         *_ds(32, 64, 1, nn.ReLU6), *_ds(64, 128, 2, nn.ReLU6), *_ds(128, 128, 1, nn.ReLU6),
                         *_ds(128, 256, 2, nn.ReLU6), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10))


class SEBlock(nn.Module):
    """Squeeze-excitation: the channels scaled by a sigmoid gate computed from their own means."""

    def __init__(self, width: int, squeeze: int = 4):
        super().__init__()
        self.fc1 = nn.Conv2d(width, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, width, 1)

    def forward(self, x):
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * gate


class SENet(nn.Module):
    """A small SE net: grouped conv, hardswish, a squeeze-excitation block, pooled classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Hardswish())
        self.grouped = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16), nn.Hardswish())
        self.se = SEBlock(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.se(self.grouped(self.stem(x))).mean((2, 3)))


def se_net() -> nn.Module:
    return SENet()


def dw_residual() -> nn.Module:
    return DWResidual()


def concat_net() -> nn.Module:
    return ConcatNet()


def _fc_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Linear(cin, cout), nn.BatchNorm1d(cout), nn.ReLU()]


def autoencoder() -> nn.Module:
    """The MLPerf Tiny anomaly-detection autoencoder's shape (640 -> 128x4 -> 8 -> 128x4 -> 640,
    Linear + BatchNorm1d + ReLU blocks), scaled to the flattened 8x8 digits: 64 -> 32x2 -> 8 -> 32x2 -> 64."""
    return nn.Sequential(*_fc_bn(64, 32), *_fc_bn(32, 32), *_fc_bn(32, 8), *_fc_bn(8, 32), *_fc_bn(32, 32),
                         nn.Linear(32, 64))


def conv1d_net() -> nn.Module:
    """A 1-D signal classifier (keyword spotting / IMU style) on [N, 8, 8]: 8 channels of length 8."""
    return nn.Sequential(
        nn.Conv1d(8, 32, 3, padding=1), nn.BatchNorm1d(32), nn.ReLU(),
        nn.Conv1d(32, 32, 3, padding=1), nn.BatchNorm1d(32), nn.ReLU(), nn.MaxPool1d(2),
        nn.Flatten(), nn.Linear(32 * 4, 10),
    )


def regressor() -> nn.Module:
    """A regression head on 1x8x8 images: two outputs (e.g. the ink centroid of a digit)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 2),
    )


MODELS = {"mlp": mlp, "cnn_bn": cnn_bn, "digits_cnn": digits_cnn, "dw_residual": dw_residual, "concat_net": concat_net,
          "ds_cnn": ds_cnn, "mobilenet": mobilenet, "se_net": se_net, "autoencoder": autoencoder,
          "conv1d_net": conv1d_net, "regressor": regressor}

# The shape of one sample each model takes (the digits as images, flattened, or as 8 rows of 8).
SAMPLE_SHAPES = {name: (1, 8, 8) for name in MODELS} | {"autoencoder": (64,), "conv1d_net": (8, 8)}
