"""Wall time of `tinyprune compress` with the default criterion (flow + compensation) against plain
`l1` (`--criterion l1 --no-compensate`), side by side in one run, per model.

Models: every model of ``tinyprune.testing`` (on the built-in digits, or the digits as the
model's task: flattened for the autoencoder, the ink centroid for the regressor, rows as a 1-D
signal for conv1d_net), and ResNet-8, DS-CNN and the small DenseNet of benchmarks/common.py on
Fashion-MNIST (the first ``--images`` training images). Each base model is trained briefly
first (the same base for both runs). The two runs of a model alternate in order across
``--repeats`` so drift in the machine's load falls on both; each is a fresh process, so import
time counts in both.

    python -m benchmarks.speed                        # everything, one repeat
    python -m benchmarks.speed --models mlp,resnet8 --repeats 2

Writes benchmarks/out/speed.json (every run) and prints a markdown table: wall seconds of each
compress, the pruning stage's own seconds (report.json), and the ratio default / l1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import REPO, load_dataset, markdown_table

TESTING_TASKS = {"autoencoder": "flat", "regressor": "centroid", "conv1d_net": "signal"}
BENCH_MODELS = {"resnet8": "ResNet8", "ds_cnn": "ds_cnn", "densenet": "DenseNetSmall"}
PLAIN = ["--criterion", "l1", "--no-compensate"]


def _digit_data(kind: str | None):
    from tinyprune.data import builtin_digits

    d = builtin_digits()
    img = d.x_train[:, 0]
    if kind == "flat":
        return img.reshape(len(img), 64), None
    if kind == "centroid":
        mass = img.sum((1, 2)) + 1e-6
        rows = (img.sum(2) * np.arange(8)).sum(1) / mass
        cols = (img.sum(1) * np.arange(8)).sum(1) / mass
        return d.x_train, np.stack([rows, cols], 1).astype(np.float32)
    if kind == "signal":
        return img, d.y_train
    return d.x_train, d.y_train


def _base(name: str, images: int, epochs: int, folder: Path) -> tuple[Path, Path, list[str]]:
    """(model file, data file, extra flags) for one model, trained for ``epochs``."""
    from tinyprune.config import FinetuneConfig
    from tinyprune.train import fit

    torch.manual_seed(0)
    if name in BENCH_MODELS:
        import benchmarks.common as common

        x, y, _, _ = load_dataset("fashion-mnist")
        x, y = x[:images], y[:images]
        model = common.MODELS[name]()
    else:
        from tinyprune.testing import MODELS

        x, y = _digit_data(TESTING_TASKS.get(name))
        model = MODELS[name]()
    target = x if y is None else y
    model = fit(model, x, target, FinetuneConfig(epochs=epochs, lr=3e-3), seed=0).eval()
    src, data = folder / f"{name}.pt", folder / f"{name}.npz"
    torch.save(model, src)
    np.savez(data, x=x, **({} if y is None else {"y": y}))
    return src, data, ["--trust-code"]  # pickled modules of classes defined in code: the same flag for both runs


def _compress(src: Path, data: Path, out: Path, flags: list[str]) -> dict:
    cmd = [sys.executable, "-m", "tinyprune", "compress", str(src), "--data", str(data), "--out", str(out),
           "--quiet", *flags]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    pruned = stages.get("pruned", {})
    return {"wall_s": wall, "prune_s": pruned.get("seconds"), "accuracy": stages.get("finetuned", {}).get("accuracy")}


def main() -> None:
    from tinyprune.testing import MODELS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join([*MODELS, *BENCH_MODELS]))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--sparsity", default="0.5")
    ap.add_argument("--finetune-epochs", default="1")
    ap.add_argument("--images", type=int, default=12000, help="Fashion-MNIST training images for the bench models")
    ap.add_argument("--train-epochs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "speed.json")
    args = ap.parse_args()
    common = ["--sparsity", args.sparsity, "--finetune-epochs", args.finetune_epochs, "--no-deepcompress"]
    runs, rows = [], []
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models.split(","):
            src, data, extra = _base(name, args.images, args.train_epochs, folder)
            times = {"default": [], "l1": []}
            for r in range(args.repeats):
                order = [("default", []), ("l1", PLAIN)]
                for label, flags in (order if r % 2 == 0 else order[::-1]):
                    res = _compress(src, data, folder / f"{name}-{label}-{r}", [*common, *extra, *flags])
                    res |= {"model": name, "run": label, "repeat": r, "load_1min": os.getloadavg()[0]}
                    runs.append(res)
                    times[label].append(res)
                    print(json.dumps(res), flush=True)
            d = {k: float(np.mean([t["wall_s"] for t in v])) for k, v in times.items()}
            p = {k: float(np.mean([t["prune_s"] or 0 for t in v])) for k, v in times.items()}
            rows.append([name, f"{d['default']:.1f}", f"{d['l1']:.1f}", f"{d['default'] / d['l1']:.2f}",
                         f"{p['default']:.1f}", f"{p['l1']:.1f}"])
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "load_at_start": load,
                                            "runs": runs}, indent=1))
    print(markdown_table(["model", "default s", "l1 s", "default / l1", "default prune s", "l1 prune s"], rows))


if __name__ == "__main__":
    main()
