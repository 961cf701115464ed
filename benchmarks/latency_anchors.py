"""Predicted vs published latency of the MLPerf Tiny models (calibration of the cortex-m4 target).

Builds PyTorch models with the layer shapes of the MLPerf Tiny v0.5 reference models, exports
them to full-int8 TFLite through tinyprune's own pipeline (``export_onnx`` -> ``to_int8_tflite``,
random calibration data: sizes, MACs and latency do not depend on it), counts MACs on the
TFLite graph and predicts latency with the cortex-m4 cost model at the anchor board's clock
(NUCLEO-L4R5ZI, Cortex-M4F, 120 MHz). Published latencies (MLPerf Tiny v0.5, closed division):
TFLM reference kernels and ST X-CUBE-AI 7.3.

    python -m benchmarks.latency_anchors            # table (markdown) on stdout
    python -m benchmarks.latency_anchors --fit      # also fit the cortex-m4 MAC rates to KWS/IC/AD

The fit solves, per kernel set, for the cycles per MAC of conv, depthwise conv and fully
connected ops from the three anchors KWS, IC and AD (op overhead and per-element costs fixed
to the target file's values); VWW (MobileNetV1-0.25) is held out to test the fitted model.
TFLite files are cached in --cache (default tinyprune-out/anchors).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

ANCHOR_CLOCK_HZ = 120_000_000
# name: (input shape (NCHW / features), MACs published, TFLM ms, X-CUBE-AI ms, used for the fit)
PUBLISHED = {
    "kws_dscnn": ("KWS DS-CNN", 2.66e6, 181.9, 75.1, True),
    "ic_resnet8": ("IC ResNet-8", 12.5e6, 704.0, 226.8, True),
    "ad_autoencoder": ("AD FC autoencoder", 0.26e6, 10.05, 7.57, True),
    "vww_mobilenet": ("VWW MobileNetV1-0.25", 7.49e6, 603.0, 225.9, False),
}


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


def fit_rates(layers_by_model: dict, target, kernels: str) -> dict:
    """Cycles per MAC of conv / depthwise / fully connected that reproduce the fit anchors exactly."""
    from tinyprune.measure.latency import layer_cycles
    from tinyprune.targets import MAC_KINDS

    names = [n for n in layers_by_model if PUBLISHED[n][4]]
    a = np.zeros((len(names), len(MAC_KINDS)))
    b = np.zeros(len(names))
    for i, n in enumerate(names):
        for l in layers_by_model[n]:
            if l["macs"]:
                a[i, MAC_KINDS.index(l["kind"])] += l["macs"]
                b[i] += target.op_overhead_cycles
            else:
                b[i] += layer_cycles(l, target, kernels)
        published_ms = PUBLISHED[n][2] if kernels == "reference" else PUBLISHED[n][3]
        b[i] = published_ms * 1e-3 * ANCHOR_CLOCK_HZ - b[i]
    cpm = np.linalg.lstsq(a, b, rcond=None)[0]
    return {k: float(1.0 / c) if c > 0 else float("nan") for k, c in zip(MAC_KINDS, cpm)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("tinyprune-out/anchors"))
    parser.add_argument("--fit", action="store_true", help="fit the cortex-m4 MAC rates to KWS/IC/AD and print them")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import warnings

    warnings.filterwarnings("ignore")
    from tinyprune import targets
    from tinyprune.measure.latency import predict
    from tinyprune.measure.macs import tflite_layers

    args.cache.mkdir(parents=True, exist_ok=True)
    target = dataclasses.replace(targets.load("cortex-m4"), clock_hz=ANCHOR_CLOCK_HZ)
    layers_by_model = {}
    for name in MODELS:
        t = time.perf_counter()
        data = build_tflite(name, args.cache)
        layers_by_model[name] = tflite_layers(data)
        print(f"[{name}: {len(data):,} B flatbuffer, {time.perf_counter() - t:.1f} s]", file=sys.stderr)

    if args.fit:
        for kernels in ("reference", "optimized"):
            rates = fit_rates(layers_by_model, target, kernels)
            print(f"fitted macs_per_cycle ({kernels}): " + ", ".join(f"{k} = {v:.4g}" for k, v in rates.items()))
        print()

    print(f"cortex-m4 cost model at {ANCHOR_CLOCK_HZ / 1e6:g} MHz vs MLPerf Tiny v0.5 on NUCLEO-L4R5ZI "
          "(TFLM reference kernels / ST X-CUBE-AI 7.3)\n")
    print("| model | MACs (TFLite graph) | MACs published | ops | predicted ref. ms | TFLM ms | error | "
          "predicted opt. ms | X-CUBE-AI ms | error | used for |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, layers in layers_by_model.items():
        label, macs_pub, ref_ms, opt_ms, fitted = PUBLISHED[name]
        macs = sum(l["macs"] for l in layers)
        p_ref = predict(layers, target, "reference")["ms"]
        p_opt = predict(layers, target, "optimized")["ms"]
        print(f"| {label} | {macs / 1e6:.3f} M | {macs_pub / 1e6:.2f} M | {len(layers)} | {p_ref:.1f} | {ref_ms:g} | "
              f"{100 * (p_ref / ref_ms - 1):+.1f} % | {p_opt:.1f} | {opt_ms:g} | {100 * (p_opt / opt_ms - 1):+.1f} % | "
              f"{'fit' if fitted else 'held out'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
