"""The information plane of LeNet-5 / MNIST before and after pruning at several levels (seed 004).

Train LeNet-5 from scratch while recording the plane (the original), then prune the trained
model at each level of ``--sparsity`` (default 50, 70 and 90 % of its MACs) with the ``l1``
criterion and record the plane while fine-tuning each pruned copy. Both on the same fixed sample of training images, both estimators (binning,
seed 004 / Shwartz-Ziv & Tishby; KDE, Saxe et al., here with the median-heuristic noise).
Writes benchmarks/plane_lenet5.png (one column per model, one row per estimator) and
benchmarks/out/plane_lenet5.json.

    nice python -m benchmarks.plane_lenet5 --epochs 5 --samples 1000 --sparsity 0.5,0.7,0.9
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from benchmarks.common import REPO, lenet5, load_dataset, markdown_table
from tinyprune.config import PruneConfig
from tinyprune.information.plane import plot_plane, record_during_finetune
from tinyprune.prune import prune_to_macs
from tinyprune.train import accuracy


def _summary(data: dict, method: str) -> list[list]:
    rows = []
    vals = data["methods"][method]
    for layer in data["layers"]:
        n = layer["name"]
        rows.append([n, layer["dim"], *(f"{vals['ixt'][n][e]:.2f} / {vals['ity'][n][e]:.2f}"
                                        for e in (0, len(data["epochs"]) // 2, -1))])
    return rows


def _plot(original: dict, acc0: float, pruned: list[tuple[float, dict, float]], samples: int):
    png = REPO / "benchmarks" / "plane_lenet5.png"
    panels = [(f"original (test acc {acc0:.3f})", original)]
    panels += [(f"{s:.0%} MACs pruned, l1 (test acc {acc:.3f})", data) for s, data, acc in pruned]
    plot_plane(panels, png, title=f"LeNet-5 / MNIST information plane, N={samples} training images, nats")
    return png


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5, help="training epochs of the original, fine-tune of the pruned")
    ap.add_argument("--train-samples", type=int, default=60000)
    ap.add_argument("--samples", type=int, default=1000, help="the fixed sample the plane is measured on")
    ap.add_argument("--sparsity", default="0.5,0.7,0.9", help="fractions of MACs removed, one pruned model each")
    ap.add_argument("--bins", type=int, default=30)
    # The library default (0.1, Saxe et al.'s fixed-variance style) puts every trained LeNet-5
    # layer at ln N: the activations spread far beyond sqrt(0.1). The median heuristic scales
    # the noise to each layer's typical distance between samples, so the figure shows movement.
    ap.add_argument("--noise-var", default="median", help="KDE noise variance, or 'median' (default)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--replot", action="store_true", help="only redraw the PNG from benchmarks/out/plane_lenet5.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.replot:
        saved = json.loads((REPO / "benchmarks" / "out" / "plane_lenet5.json").read_text())
        _plot(saved["original"], saved["test_accuracy"]["original"],
              [(p["sparsity"], p["plane"], p["test_accuracy"]) for p in saved["pruned"]], saved["args"]["samples"])
        return
    noise = args.noise_var if args.noise_var == "median" else float(args.noise_var)

    xtr, ytr, xte, yte = load_dataset("mnist")
    pick = np.random.default_rng(0).permutation(len(xtr))
    xs, ys = xtr[pick[:args.samples]], ytr[pick[:args.samples]]
    xt, yt = xtr[:args.train_samples], ytr[:args.train_samples]
    opts = dict(methods=("binning", "kde"), bins=args.bins, noise_var=noise, lr=args.lr, batch_size=128)

    torch.manual_seed(0)
    t = time.perf_counter()
    model, original = record_during_finetune(lenet5(), xt, yt, xs, ys, args.epochs, seed=0, **opts)
    acc0 = accuracy(model, xte, yte)
    print(f"# original: test accuracy {acc0:.4f} after {args.epochs} epochs ({time.perf_counter() - t:.0f} s)",
          flush=True)

    levels, runs = [float(v) for v in args.sparsity.split(",")], []
    for level in levels:
        t = time.perf_counter()
        result = prune_to_macs(model, PruneConfig(criterion="l1", sparsity=level, compensate=False), xs[:600], ys[:600], 10)
        acc_p = accuracy(result.model, xte, yte)
        widths = {l["name"]: (l["channels_before"], l["channels_after"]) for l in result.layers}
        print(f"# pruned ({level:.0%} of MACs, l1): {result.macs_before:,} -> {result.macs_after:,} MACs, "
              f"widths {widths}, test accuracy before fine-tune {acc_p:.4f}", flush=True)
        pruned, after = record_during_finetune(result.model, xt, yt, xs, ys, args.epochs, seed=100, **opts)
        acc1 = accuracy(pruned, xte, yte)
        print(f"# pruned after {args.epochs} fine-tune epochs: test accuracy {acc1:.4f} "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
        runs.append({"sparsity": level, "plane": after, "test_accuracy_before_finetune": acc_p, "test_accuracy": acc1,
                     "macs": [result.macs_before, result.macs_after], "widths": widths,
                     "seconds": time.perf_counter() - t})

    png = _plot(original, acc0, [(r["sparsity"], r["plane"], r["test_accuracy"]) for r in runs], args.samples)
    out = REPO / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "plane_lenet5.json").write_text(json.dumps(
        {"original": original, "pruned": runs, "test_accuracy": {"original": acc0}, "args": vars(args)}, indent=2) + "\n")
    for name, data in [("original", original)] + [(f"pruned {r['sparsity']:.0%}", r["plane"]) for r in runs]:
        for method in ("binning", "kde"):
            print(f"\n{name}, {method}: I(X;T) / I(T;Y) at epochs 0, {data['epochs'][len(data['epochs']) // 2]}, "
                  f"{data['epochs'][-1]} (ln N = {data['ln_samples']:.2f}, H(Y) = {data['label_entropy']:.2f})")
            print(markdown_table(["layer", "dim", "first", "middle", "last"], _summary(data, method)))
    print(f"\nfigure: {png.relative_to(REPO)}")


if __name__ == "__main__":
    main()
