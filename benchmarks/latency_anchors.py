"""The MLPerf Tiny reference models, built in code and converted to int8 TFLite by tinyprune's own
export (random calibration data: sizes, MACs and instructions do not depend on it).

``benchmarks.fit_device`` predicts their TFLM instructions per operator and fits each runtime's
cycles per instruction to their published latencies. The TFLite files are cached in ``cache``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

def _bn_relu(c: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(c), nn.ReLU()]


def kws_dscnn() -> nn.Module:
    """DS-CNN (small) of MLPerf Tiny KWS: 49x10x1 MFCC, conv 10x4/2 x64, 4 x (dw 3x3 + pw 64), avg pool, FC 12."""
    layers: list[nn.Module] = [nn.ZeroPad2d((1, 1, 4, 5)), nn.Conv2d(1, 64, (10, 4), stride=2), *_bn_relu(64)]
    for _ in range(4):
        layers += [nn.Conv2d(64, 64, 3, padding=1, groups=64), *_bn_relu(64), nn.Conv2d(64, 64, 1), *_bn_relu(64)]
    layers += [nn.AvgPool2d((25, 5)), nn.Flatten(), nn.Linear(64, 12), nn.Softmax(dim=1)]
    return nn.Sequential(*layers)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), *_bn_relu(cout), nn.Conv2d(cout, cout, 3, 1, 1),
                                  nn.BatchNorm2d(cout))
        self.short = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return torch.relu(self.body(x) + self.short(x))


def ic_resnet8() -> nn.Module:
    """ResNet-8 of MLPerf Tiny IC (resnet_v1_eembc): 32x32x3, conv 16, stacks 16/32/64, avg pool, FC 10."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), *_bn_relu(16), _Block(16, 16, 1), _Block(16, 32, 2),
                         _Block(32, 64, 2), nn.AvgPool2d(8), nn.Flatten(), nn.Linear(64, 10), nn.Softmax(dim=1))


def ad_autoencoder() -> nn.Module:
    """FC autoencoder of MLPerf Tiny AD: 640 -> 128 x4 -> 8 -> 128 x4 -> 640, BN + ReLU after each hidden layer."""
    widths = [640, 128, 128, 128, 128, 8, 128, 128, 128, 128]
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
    layers.append(nn.Linear(128, 640))
    return nn.Sequential(*layers)


def vww_mobilenet() -> nn.Module:
    """MobileNetV1 alpha 0.25 of MLPerf Tiny VWW: 96x96x3, 13 depthwise-separable blocks, 2 classes."""
    cfg = [(16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (128, 1), (128, 1), (128, 1), (128, 1),
           (256, 2), (256, 1)]
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, 2, 1), *_bn_relu(8)]
    cin = 8
    for cout, stride in cfg:
        layers += [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin), *_bn_relu(cin), nn.Conv2d(cin, cout, 1), *_bn_relu(cout)]
        cin = cout
    layers += [nn.AvgPool2d(3), nn.Flatten(), nn.Linear(256, 2), nn.Softmax(dim=1)]
    return nn.Sequential(*layers)


MODELS = {
    "kws_dscnn": (kws_dscnn, (1, 49, 10)),
    "ic_resnet8": (ic_resnet8, (3, 32, 32)),
    "ad_autoencoder": (ad_autoencoder, (640,)),
    "vww_mobilenet": (vww_mobilenet, (3, 96, 96)),
}


def build_tflite(name: str, cache: Path) -> bytes:
    from tinyprune.export.onnx import export_onnx
    from tinyprune.export.tflite import to_int8_tflite

    path = cache / f"{name}_int8.tflite"
    if path.exists():
        return path.read_bytes()
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    model = factory().eval()
    calib = np.random.default_rng(0).standard_normal((32, *shape)).astype(np.float32)
    work = cache / f"{name}_work"
    work.mkdir(parents=True, exist_ok=True)
    export_onnx(model, calib[:1], work / "model.onnx")
    data = to_int8_tflite(work / "model.onnx", calib, work / "tflite")
    path.write_bytes(data)
    return data
