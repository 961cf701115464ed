"""Issue 10 benchmark: every criterion at equal MACs, the same fine-tune, several seeds.

For each MAC reduction level, criterion and seed: prune the trained base model with tinyprune's
pruning stage (MI/flow analysis on 600 training images; `vib` trains its gates on the full
training split, as compress does), fine-tune every pruned model with the
same budget (default: 3 epochs on the full training split), and test on the official 10k test
set. Torch-Pruning's data-driven baselines run through the same MAC loop: ``taylor``
(GroupTaylorImportance, gradients of the cross-entropy on the analysis images, re-computed
before every step) and ``bnscale`` (BNScaleImportance, models with batch norm only).

    python -m benchmarks.criteria_bench --model lenet5 --dataset mnist
    python -m benchmarks.criteria_bench --model vgg_small --dataset fashion-mnist --levels 0.5,0.7

Prints one JSON line per run and a markdown table (mean ± std over seeds); writes JSON to
benchmarks/out/criteria_<model>_<dataset>.json. The base model is cached in benchmarks/out/.
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


def _parse(spec: str) -> tuple[str, str, dict]:
    """``flow:per_mac=false`` -> (label, criterion, options)."""
    name, _, opts = spec.partition(":")
    options = {}
    for kv in filter(None, opts.split("+")):
        k, _, v = kv.partition("=")
        options[k] = {"true": True, "false": False}.get(v.lower(), v)
    return spec, name, options


def base_model(args, xtr, ytr, xte, yte):
    path = REPO / "benchmarks" / "out" / f"base_{args.model}_{args.dataset}_{args.train_epochs}ep.pt"
    torch.manual_seed(0)
    model = MODELS[args.model]()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    model = fit(model, xtr, ytr, FinetuneConfig(epochs=args.train_epochs, lr=2e-3, batch_size=128), seed=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="lenet5", choices=sorted(MODELS))
    ap.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    ap.add_argument("--levels", default="0.3,0.5,0.7,0.9")
    ap.add_argument("--criteria", default="flow,mi,l1,random,taylor")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--train-epochs", type=int, default=3)
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--finetune-samples", type=int, default=0, help="0: the full training split")
    ap.add_argument("--analysis-samples", type=int, default=600)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compensate", action="store_true",
                    help="least-squares compensation of removed channels (PruneConfig.compensate) for every criterion")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    xtr, ytr, xte, yte = load_dataset(args.dataset)
    t = time.perf_counter()
    base = base_model(args, xtr, ytr, xte, yte)
    base_acc = accuracy(base, xte, yte)
    print(f"# {args.model} on {args.dataset}: base test accuracy {base_acc:.4f} ({time.perf_counter() - t:.0f} s)",
          flush=True)
    n_ft = args.finetune_samples or len(xtr)

    results = []
    out = REPO / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    dest = out / f"criteria_{args.model}_{args.dataset}{args.tag}.json"
    for level in [float(v) for v in args.levels.split(",")]:
        for label, criterion, options in map(_parse, args.criteria.split(",")):
            for seed in [int(s) for s in args.seeds.split(",")]:
                rng = np.random.default_rng(seed)
                pick = rng.permutation(len(xtr))
                xa, ya = xtr[pick[:args.analysis_samples]], ytr[pick[:args.analysis_samples]]
                ft = np.sort(pick[:n_ft])
                torch.manual_seed(seed)
                t = time.perf_counter()
                try:
                    cfg = PruneConfig(criterion=criterion, sparsity=level, options=options, compensate=args.compensate)
                    pruned = prune_to_macs(base, cfg, xa, ya, classes=10, seed=seed, train=(xtr, ytr))  # vib trains on it
                except ConfigError as exc:
                    results.append({"level": level, "criterion": label, "seed": seed, "failed": str(exc)})
                    print(json.dumps(results[-1]), flush=True)
                    continue
                prune_s = time.perf_counter() - t
                acc0 = accuracy(pruned.model, xte, yte)
                tuned = fit(pruned.model, xtr[ft], ytr[ft],
                            FinetuneConfig(epochs=args.finetune_epochs, lr=1e-3, batch_size=128), seed)
                row = {"level": level, "criterion": label, "seed": seed,
                       "macs_removed": 1 - pruned.macs_after / pruned.macs_before,
                       "acc_pruned": acc0, "acc_finetuned": accuracy(tuned, xte, yte), "prune_seconds": prune_s,
                       "widths": [lay["channels_after"] for lay in pruned.layers]}
                results.append(row)
                print(json.dumps(row), flush=True)
                dest.write_text(json.dumps({"args": vars(args), "base_accuracy": base_acc, "results": results},
                                           indent=1))
    print()
    print(summary_table(results, args.criteria.split(",")))


def summary_table(results: list[dict], criteria: list[str]) -> str:
    rows = []
    for level in sorted({r["level"] for r in results}):
        for criterion in criteria:
            rs = [r for r in results if r["level"] == level and r["criterion"] == criterion and "failed" not in r]
            if not rs:
                continue
            acc = 100 * np.array([r["acc_finetuned"] for r in rs])
            acc0 = 100 * np.array([r["acc_pruned"] for r in rs])
            widths = rs[0]["widths"][:-1]
            rows.append([f"{level:.0%}", criterion, f"{np.mean([r['macs_removed'] for r in rs]):.1%}",
                         f"{acc0.mean():.2f} ± {acc0.std():.2f}", f"{acc.mean():.2f} ± {acc.std():.2f}",
                         f"{np.mean([r['prune_seconds'] for r in rs]):.1f}", "-".join(map(str, widths)), len(rs)])
    return markdown_table(["MACs target", "criterion", "MACs removed", "acc. after pruning %", "acc. after fine-tune %",
                           "prune + analysis s", "widths (seed 0)", "seeds"], rows)


if __name__ == "__main__":
    main()
