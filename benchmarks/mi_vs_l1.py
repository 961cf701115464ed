"""Issue 3 benchmark: test accuracy after pruning + the same fine-tune budget, per criterion.

For each model: train a base model once (seeded), then for every MAC reduction level, criterion
and seed: prune with tinyprune's pruning stage (torch-pruning underneath), fine-tune with the
same budget, evaluate on the official 10k test set. Prints a markdown table (mean +- std over
seeds) and writes JSON to benchmarks/out/.

    python benchmarks/mi_vs_l1.py --model lenet5 --dataset mnist
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from benchmarks.common import MODELS, REPO, load_dataset, markdown_table
from tinyprune.config import FinetuneConfig, PruneConfig
from tinyprune.errors import ConfigError
from tinyprune.prune import prune_to_macs
from tinyprune.train import accuracy, fit


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="lenet5", choices=sorted(MODELS))
    ap.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    ap.add_argument("--levels", default="0.3,0.5,0.7,0.9")
    ap.add_argument("--criteria", default="mi,l1,random")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--train-epochs", type=int, default=2)
    ap.add_argument("--train-samples", type=int, default=60000)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--finetune-samples", type=int, default=10000)
    ap.add_argument("--analysis-samples", type=int, default=600)
    args = ap.parse_args()
    torch.set_num_threads(1)  # the runs share two cores with each other

    xtr, ytr, xte, yte = load_dataset(args.dataset)
    torch.manual_seed(0)
    base = MODELS[args.model]()
    t = time.perf_counter()
    base = fit(base, xtr[:args.train_samples], ytr[:args.train_samples], FinetuneConfig(epochs=args.train_epochs, lr=2e-3, batch_size=128), seed=0)
    base_acc = accuracy(base, xte, yte)
    print(f"# {args.model} on {args.dataset}: base test accuracy {base_acc:.4f} ({time.perf_counter() - t:.0f} s training)",
          flush=True)

    results = []
    for level in [float(v) for v in args.levels.split(",")]:
        for criterion in args.criteria.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                rng = np.random.default_rng(seed)
                pick = rng.permutation(len(xtr))
                xa, ya = xtr[pick[:args.analysis_samples]], ytr[pick[:args.analysis_samples]]
                torch.manual_seed(seed)
                t = time.perf_counter()
                ft = pick[:args.finetune_samples]
                retrain = lambda m, label: fit(m, xtr[ft], ytr[ft], FinetuneConfig(epochs=1, lr=1e-3, batch_size=128), seed)
                try:
                    pruned = prune_to_macs(base, PruneConfig(criterion=criterion, sparsity=level, compensate=False), xa, ya,
                                           classes=10, retrain=retrain)
                except ConfigError as exc:  # the criterion could not reach the MAC target: say so
                    results.append({"level": level, "criterion": criterion, "seed": seed, "failed": str(exc)})
                    print(json.dumps(results[-1]), flush=True)
                    continue
                prune_s = time.perf_counter() - t
                acc0 = accuracy(pruned.model, xte, yte)
                tuned = fit(pruned.model, xtr[ft], ytr[ft],
                            FinetuneConfig(epochs=args.finetune_epochs, lr=1e-3, batch_size=128), seed)
                acc = accuracy(tuned, xte, yte)
                row = {"level": level, "criterion": criterion, "seed": seed, "macs_removed": 1 - pruned.macs_after / pruned.macs_before,
                       "acc_pruned": acc0, "acc_finetuned": acc, "prune_seconds": prune_s,
                       "widths": [l["channels_after"] for l in pruned.layers],
                       "units_removed": sum(len(u["removed"]) for u in pruned.record.get("skip_unit_stages", []))}
                results.append(row)
                print(json.dumps(row), flush=True)

    rows = []
    for level in sorted({r["level"] for r in results}):
        for criterion in args.criteria.split(","):
            rs = [r for r in results if r["level"] == level and r["criterion"] == criterion and "failed" not in r]
            if not rs:
                rows.append([f"{level:.0%}", criterion, "target not reached", "", "", ""])
                continue
            acc = np.array([r["acc_finetuned"] for r in rs])
            acc0 = np.array([r["acc_pruned"] for r in rs])
            rows.append([f"{level:.0%}", criterion, f"{np.mean([r['macs_removed'] for r in rs]):.1%}",
                         f"{100 * acc0.mean():.2f} ± {100 * acc0.std():.2f}",
                         f"{100 * acc.mean():.2f} ± {100 * acc.std():.2f}",
                         f"{np.mean([r['prune_seconds'] for r in rs]):.1f}"])
    print()
    print(markdown_table(["MACs target", "criterion", "MACs removed", "acc. after pruning %", "acc. after fine-tune %",
                          "prune s"], rows))
    out = REPO / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"mi_vs_l1_{args.model}_{args.dataset}.json").write_text(
        json.dumps({"args": vars(args), "base_accuracy": base_acc, "results": results}, indent=1))


if __name__ == "__main__":
    main()
