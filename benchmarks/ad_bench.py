"""Issue 13 benchmark: anomaly detection as one-class MNIST, and a regression head, end to end.

Anomaly detection: the MLPerf Tiny AD autoencoder's shape (Linear + BatchNorm1d + ReLU blocks,
128 x 4 -> 8 -> 128 x 4) on flattened MNIST digits (784 wide instead of the reference's 640),
trained on the digits 0-8 of the training split; the official test split is held out with the
9s as anomalies (label 1). The score is the ROC AUC of the per-sample reconstruction MSE (the
MLPerf Tiny AD metric). Every run goes through ``tinyprune.api.compress`` (the int8 model in
TFLM on the whole held-out split), with the same fine-tune for every criterion.

Regression: a small CNN predicting each MNIST digit's ink centroid (row, column, in pixels)
from the image; MSE float vs int8 in TFLM.

    python -m benchmarks.ad_bench                                    # about 25 min on 2 cores
    python -m benchmarks.ad_bench --levels 0.5 --criteria l1,flow    # a subset

Writes benchmarks/out/ad_bench<tag>.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time

import numpy as np
import torch
import torch.nn as nn

from benchmarks.common import REPO, load_dataset, markdown_table
from tinyprune.api import ModelSource, compress
from tinyprune.config import CompressConfig, FinetuneConfig, PruneConfig
from tinyprune.deepcompress.deploy import SharingConfig
from tinyprune.train import fit

OUT = REPO / "benchmarks" / "out" / "ad"


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Linear(cin, cout), nn.BatchNorm1d(cout), nn.ReLU()]


def mlperf_ad(width: int = 784) -> nn.Module:
    """MLPerf Tiny AD's autoencoder with the input width of flattened MNIST."""
    layers = _block(width, 128) + _block(128, 128) + _block(128, 128) + _block(128, 128) + _block(128, 8)
    layers += _block(8, 128) + _block(128, 128) + _block(128, 128) + _block(128, 128)
    return nn.Sequential(*layers, nn.Linear(128, width))


def centroid_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 2),
    )


def _centroids(x: np.ndarray) -> np.ndarray:
    img = x[:, 0]
    mass = img.sum((1, 2)) + 1e-6
    rows = (img.sum(2) * np.arange(img.shape[1])).sum(1) / mass
    cols = (img.sum(1) * np.arange(img.shape[2])).sum(1) / mass
    return np.stack([rows, cols], 1).astype(np.float32)


def _trained(name: str, factory, x, y, epochs: int) -> nn.Module:
    path = OUT / f"base_{name}_{epochs}ep.pt"
    torch.manual_seed(0)
    model = factory()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    model = fit(model, x, y, FinetuneConfig(epochs=epochs, lr=1e-3, batch_size=128), seed=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def run(label: str, model_path, data_path, cfg: CompressConfig) -> dict:
    out = OUT / f"run_{label}"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    report = compress(ModelSource(model_path), cfg, data_path=data_path, out_dir=out).to_dict()
    stages = {s["name"]: s for s in report["stages"]}
    dep = report["deployed"]
    row = {"label": label, "sparsity": cfg.prune.sparsity, "criterion": cfg.prune.criterion,
           "seconds": time.perf_counter() - t,
           "macs_removed": 1 - stages["finetuned"]["macs"] / stages["original"]["macs"],
           "original": stages["original"]["quality"], "finetuned": stages["finetuned"]["quality"],
           "int8": stages["int8"]["quality"], "deployed_stage": dep["stage"],
           "deployed": stages[dep["stage"]]["quality"], "flash_bytes": dep["flash_bytes"],
           "arena_bytes": dep["arena_bytes"], "widths": [layer["channels_after"] for layer in report["layers"]]}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default="0.3,0.5,0.7")
    ap.add_argument("--criteria", default="l1,random,flow,taylor")
    ap.add_argument("--train-epochs", type=int, default=10)
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--no-regression", action="store_true")
    ap.add_argument("--no-sharing", action="store_true", help="int8 only: no weight sharing (the CLI's --no-deepcompress)")
    ap.add_argument("--tag", default="", help="suffix of the JSON file name (runs side by side)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    xtr, ytr, xte, yte = load_dataset("mnist")
    flat_tr, flat_te = xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1)
    normal = ytr != 9
    ae = _trained("ad", mlperf_ad, flat_tr[normal], flat_tr[normal], args.train_epochs)
    ae_path = OUT / "ad.pt"
    torch.save(ae, ae_path)
    ad_data = OUT / "ad.npz"
    np.savez(ad_data, x_train=flat_tr[normal], x_test=flat_te, anomaly_test=(yte == 9).astype(np.int64))

    def cfg(criterion: str, sparsity: float) -> CompressConfig:
        # the accuracy budget is off: every level is measured as asked (points of AUC are reported)
        return CompressConfig(prune=PruneConfig(criterion=criterion, sparsity=sparsity, compensate=False),
                              finetune=FinetuneConfig(epochs=args.finetune_epochs), max_accuracy_drop=100.0,
                              sharing=None if args.no_sharing else SharingConfig())

    rows = [run("ad_unpruned", ae_path, ad_data, cfg("l1", 0.0))]
    for level in [float(v) for v in args.levels.split(",")]:
        for criterion in args.criteria.split(","):
            rows.append(run(f"ad_{criterion}_{level:g}", ae_path, ad_data, cfg(criterion, level)))
    if not args.no_regression:
        cx_tr, cx_te = _centroids(xtr), _centroids(xte)
        reg = _trained("centroid", centroid_cnn, xtr, cx_tr, 3)
        reg_path = OUT / "centroid.pt"
        torch.save(reg, reg_path)
        reg_data = OUT / "centroid.npz"
        np.savez(reg_data, x_train=xtr, y_train=cx_tr, x_test=xte, y_test=cx_te)
        rows.append(run("regress_unpruned", reg_path, reg_data, cfg("l1", 0.0)))
        rows.append(run("regress_l1_0.5", reg_path, reg_data, cfg("l1", 0.5)))
    (REPO / "benchmarks" / "out" / f"ad_bench{args.tag}.json").write_text(json.dumps(rows, indent=1) + "\n")

    ad = [r for r in rows if r["label"].startswith("ad_")]
    print(markdown_table(
        ["run", "MACs removed", "AUC float", "AUC int8 (TFLM)", "MSE normal float / int8", "deployed",
         "flash B", "arena B", "widths", "s"],
        [[r["label"], f"{r['macs_removed']:.1%}", f"{r['finetuned']['auc']:.4f}", f"{r['int8']['auc']:.4f}",
          f"{r['finetuned']['mse']:.5f} / {r['int8']['mse']:.5f}", r["deployed_stage"], f"{r['flash_bytes']:,}",
          f"{r['arena_bytes']:,}", "-".join(map(str, r["widths"])), f"{r['seconds']:.0f}"] for r in ad]))
    reg_rows = [r for r in rows if r["label"].startswith("regress")]
    if reg_rows:
        print(markdown_table(
            ["run", "MACs removed", "R² float", "R² int8", "MSE float / int8 (px²)", "MAE int8 px", "flash B"],
            [[r["label"], f"{r['macs_removed']:.1%}", f"{r['finetuned']['r2']:.4f}", f"{r['int8']['r2']:.4f}",
              f"{r['finetuned']['mse']:.4f} / {r['int8']['mse']:.4f}", f"{r['int8']['mae']:.3f}",
              f"{r['flash_bytes']:,}"] for r in reg_rows]))


if __name__ == "__main__":
    main()
