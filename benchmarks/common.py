"""Shared benchmark helpers: the real datasets in ../shared/datasets and the benchmark models."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("TINYPRUNE_DATASETS", REPO.parent / "shared" / "datasets"))


def load_idx(path: Path) -> np.ndarray:
    data = gzip.open(path, "rb").read()
    nd = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * nd).reshape(dims)


def load_dataset(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): NCHW float32 in [0, 1], int64 labels."""
    root = DATASETS / name
    if not root.exists():
        raise SystemExit(f"dataset folder not found: {root} (set TINYPRUNE_DATASETS)")
    xs = [load_idx(root / f"{p}-images-idx3-ubyte.gz").astype(np.float32)[:, None] / 255.0 for p in ("train", "t10k")]
    ys = [load_idx(root / f"{p}-labels-idx1-ubyte.gz").astype(np.int64) for p in ("train", "t10k")]
    return xs[0], ys[0], xs[1], ys[1]


def lenet5() -> nn.Module:
    """LeNet-5 (LeCun 1998) on 28x28: padding 2 on the first conv gives the classic 32x32 geometry."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )


def lenet5_caffe() -> nn.Module:
    """Caffe's LeNet-5 (20-50-800-500, 431k weights), the model of Han et al. 2016's Table 3.

    Caffe's prototxt has no ReLU after the convolutions; this one has, as most ports do (the
    weights and MACs are the same, only the nonlinearity after each pooling differs).
    """
    return nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(50 * 4 * 4, 500), nn.ReLU(), nn.Linear(500, 10),
    )


def lenet_300_100() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet8(nn.Module):
    """MLPerf Tiny image-classification ResNet-8 shape (16-32-64), here on 1x28x28 inputs."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = BasicBlock(16, 16, 1)
        self.layer2 = BasicBlock(16, 32, 2)
        self.layer3 = BasicBlock(32, 64, 2)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(x.mean((2, 3)))


class ResNetCifar(nn.Module):
    """He et al. 2016's CIFAR ResNet (6n+2 layers, 16-32-64 channels, n units per stage), 1-channel input.

    The downsampling units use a 1x1 projection shortcut (option B), so every unit, downsampling
    or not, can lose its branch and still pass its input on.
    """

    def __init__(self, units=(3, 3, 3), classes: int = 10, stem_stride: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        blocks, cin = [], 16
        for stage, (n, cout) in enumerate(zip(units, (16, 32, 64))):
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def resnet20() -> nn.Module:
    return ResNetCifar((3, 3, 3))


def resnet56() -> nn.Module:
    return ResNetCifar((9, 9, 9))


def resnet56_s2() -> nn.Module:
    """ResNet-56 with a stride-2 stem: the same 27 units and parameters, a quarter of the MACs
    (stages at 14x14, 7x7, 4x4), so that it trains in this machine's CPU budget."""
    return ResNetCifar((9, 9, 9), stem_stride=2)


def vgg_small() -> nn.Module:
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(1, 32), *block(32, 32), nn.MaxPool2d(2),
        *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
        *block(64, 128), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(128 * 3 * 3, 128), nn.ReLU(), nn.Linear(128, 10),
    )


def ds_cnn() -> nn.Module:
    """A depthwise-separable CNN (MobileNet-v1 / MLPerf Tiny DS-CNN family) on 1x28x28."""
    def ds(cin, cout, stride):
        return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        *ds(32, 64, 1), *ds(64, 128, 2), *ds(128, 128, 1), *ds(128, 128, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    )


class DenseUnit(nn.Module):
    """DenseNet's pre-activation unit (BN-ReLU-conv on the concatenated input); output appended."""

    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv(torch.relu(self.bn(x)))], dim=1)


class DenseNetSmall(nn.Module):
    """A DenseNet-style net (Huang et al. 2017): two dense blocks of three concatenation units."""

    def __init__(self, growth: int = 12, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        c = 16
        units = []
        for _ in range(3):
            units.append(DenseUnit(c, growth))
            c += growth
        self.block1 = nn.Sequential(*units)
        self.trans = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2))
        c //= 2
        units = []
        for _ in range(3):
            units.append(DenseUnit(c, growth))
            c += growth
        self.block2 = nn.Sequential(*units)
        self.norm = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = self.block2(self.trans(self.block1(self.stem(x))))
        return self.fc(torch.relu(self.norm(x)).mean((2, 3)))


MODELS = {"lenet5": lenet5, "lenet5_caffe": lenet5_caffe, "ds_cnn": ds_cnn, "lenet_300_100": lenet_300_100, "resnet8": ResNet8, "resnet20": resnet20, "resnet56": resnet56, "resnet56_s2": resnet56_s2, "vgg_small": vgg_small,
          "densenet": DenseNetSmall}


def cached_fit(name: str, x: np.ndarray, y: np.ndarray, cfg, seed: int, path: Path) -> tuple[nn.Module, float]:
    """``MODELS[name]`` trained with ``tinyprune.train.fit`` (torch seeded first), kept at ``path``
    so a rerun skips the training; returns (model in eval mode, training seconds, 0 when loaded)."""
    import time

    from tinyprune.train import fit

    model = MODELS[name]()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), 0.0
    torch.manual_seed(seed)
    t = time.perf_counter()
    fit(model, x, y, cfg, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval(), time.perf_counter() - t


def markdown_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)
