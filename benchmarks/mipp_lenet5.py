"""Issue 4 benchmark: MIPP on LeNet-5 / MNIST after training and at initialization.

At each fraction of conv/linear weights removed (80/90/95 %), MIPP (TERC, forced down to the
target in MI order when TERC alone is short of it, TERC-removed nodes put back when it
overshoots) against ``l1`` and ``random`` at the same weight sparsity: torch-pruning with one
channel ratio in every layer (the tool's ``--criterion l1/random``), the ratio bisected until
the weights removed reach MIPP's. ``random@mipp`` keeps MIPP's per-layer widths but picks the
channels at random (isolates MIPP's choice of nodes from its allocation across layers).

Same training budget for every method of a regime (Adam, lr 1e-3, batch 64, cosine):

* after training (PaT): dense model trained ``--train-epochs``, pruned, fine-tuned ``--finetune-epochs``;
* at initialization (PaI): the freshly initialized model (same init for all methods) pruned,
  then trained ``--train-epochs + --finetune-epochs`` from scratch.

Layer collapse: ``terc_collapse`` = layers TERC would have emptied (MIPP keeps one node and
reports it); ``dead`` = layers of the pruned model whose every kept node is constant over 500
training samples (no information path), measured after the training budget; ``untrainable`` =
test accuracy < 20 % after the budget.

    PYTHONPATH=. python benchmarks/mipp_lenet5.py --seed 0   # writes benchmarks/out/mipp_lenet5.json, prints the tables
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from benchmarks.common import REPO, lenet5, load_dataset, markdown_table
from tinyprune.config import FinetuneConfig
from tinyprune.prune.groups import reinitialize
from tinyprune.prune.mipp import apply_kept, mipp_prune, weight_count
from tinyprune.train import accuracy, fit

PRUNABLE = (nn.Conv2d, nn.Linear)


def uniform_prune(model: nn.Module, method: str, target: float, example: torch.Tensor, seed: int):
    """The same channel ratio in every hidden layer (torch-pruning), bisected to >= target weights removed."""
    import torch_pruning as tp

    from tinyprune.prune import protocol

    w0 = weight_count(model)

    def prune(ratio):
        m = copy.deepcopy(model)
        classifier = [mod for mod in m.modules() if isinstance(mod, nn.Linear)][-1]
        torch.manual_seed(seed)
        imp = protocol.build(method).importance(m, None, None)
        pruner = tp.pruner.MetaPruner(m, example, importance=imp, pruning_ratio=ratio, global_pruning=False,
                                      ignored_layers=[classifier], round_to=None, iterative_steps=1)
        pruner.step()
        return m, 1 - weight_count(m) / w0

    lo, hi = 0.0, 0.99
    for _ in range(25):
        mid = 0.5 * (lo + hi)
        if prune(mid)[1] >= target:
            hi = mid
        else:
            lo = mid
    m, sp = prune(hi)
    return m, sp, hi


def random_at_widths(model: nn.Module, report: dict, example: torch.Tensor, seed: int):
    rng = np.random.default_rng(seed)
    masks = {"layers": {name: {"kept": sorted(rng.choice(e["total"], e["n_kept"], replace=False).tolist())}
                        for name, e in report["layers"].items()}}
    m = apply_kept(copy.deepcopy(model), masks, example)
    return m, 1 - weight_count(m) / weight_count(model)


def widths(model: nn.Module) -> list[int]:
    return [m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            for m in model.modules() if isinstance(m, PRUNABLE)]


@torch.no_grad()
def dead_layers(model: nn.Module, x: np.ndarray) -> int:
    """Hidden conv/linear layers whose every output channel is constant (after the next ReLU) on ``x``."""
    outs = {}
    mods = [m for m in model.modules() if isinstance(m, PRUNABLE)][:-1]
    hooks = [m.register_forward_hook(lambda mod, i, o: outs.__setitem__(mod, torch.relu(o).flatten(2).mean(-1)
                                                                         if o.ndim > 2 else torch.relu(o)))
             for m in mods]
    model.eval()(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    return int(sum(bool((outs[m].std(0) < 1e-8).all()) for m in mods))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sparsities", default="0.8,0.9,0.95")
    ap.add_argument("--methods", default="mipp,l1,random,random@mipp")
    ap.add_argument("--regimes", default="after,init")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-samples", type=int, default=20000)
    ap.add_argument("--train-epochs", type=int, default=2)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--samples", type=int, default=300, help="MIPP analysis samples")
    ap.add_argument("--k", type=float, default=1.0, help="MIPP margin in subset standard deviations")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "mipp_lenet5.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seed = args.seed

    xtr, ytr, xte, yte = load_dataset("mnist")
    pick = np.random.default_rng(seed).permutation(len(xtr))[:args.train_samples]
    x, y = xtr[pick], ytr[pick]
    example = torch.from_numpy(x[:1])
    cfg = lambda epochs: FinetuneConfig(epochs=epochs, lr=1e-3, batch_size=64)  # noqa: E731
    total_epochs = args.train_epochs + args.finetune_epochs

    torch.manual_seed(seed)
    arch = lenet5()
    t = time.perf_counter()
    base = fit(copy.deepcopy(arch), x, y, cfg(args.train_epochs), seed)
    dense = {"base_acc": accuracy(base, xte, yte), "train_s": time.perf_counter() - t}
    dense["same_budget_acc"] = accuracy(fit(copy.deepcopy(base), x, y, cfg(args.finetune_epochs), seed), xte, yte)
    print(f"# dense LeNet-5: {dense['base_acc']:.4f} after {args.train_epochs} epochs, "
          f"{dense['same_budget_acc']:.4f} after {total_epochs}", flush=True)

    results = []
    terc_only = {}
    for regime in args.regimes.split(","):
        source = base if regime == "after" else reinitialize(base, seed)  # what mipp_prune(at_init) prunes
        epochs = args.finetune_epochs if regime == "after" else total_epochs
        # TERC alone (no target): how far MIPP prunes by itself
        t = time.perf_counter()
        _, rep = mipp_prune(base, x, y, None, at_init=(regime == "init"), seed=seed, samples=args.samples, k=args.k)
        terc_only[regime] = {"weight_sparsity": rep["weight_sparsity"], "seconds": time.perf_counter() - t,
                             "widths": {n: e["n_kept"] for n, e in rep["layers"].items()},
                             "collapsed": rep["collapsed"]}
        print(f"# {regime}: TERC alone removes {rep['weight_sparsity']:.3f} of the weights, widths "
              f"{terc_only[regime]['widths']}", flush=True)
        for target in [float(v) for v in args.sparsities.split(",")]:
            t = time.perf_counter()
            mipp_model, report = mipp_prune(base, x, y, target, at_init=(regime == "init"), seed=seed,
                                            samples=args.samples, k=args.k, fill=True)
            mipp_s = time.perf_counter() - t
            matched = max(target, report["weight_sparsity"])
            for method in args.methods.split(","):
                t = time.perf_counter()
                extra = {}
                if method == "mipp":
                    model, sp = mipp_model, report["weight_sparsity"]
                    extra = {"terc_removed": report["terc_removed"], "forced": report["forced"],
                             "terc_collapse": len(report["collapsed"]), "passes": report["passes"],
                             "restored": sum(len(e.get("restored", [])) for e in report["layers"].values())}
                    prune_s = mipp_s
                elif method == "random@mipp":
                    model, sp = random_at_widths(source, report, example, seed)
                    prune_s = time.perf_counter() - t
                else:
                    model, sp, ratio = uniform_prune(source, method, matched - 1e-9, example, seed)
                    extra = {"channel_ratio": ratio}
                    prune_s = time.perf_counter() - t
                acc0 = accuracy(model, xte, yte)
                t = time.perf_counter()
                model = fit(model, x, y, cfg(epochs), seed)
                row = {"regime": regime, "target": target, "method": method, "weight_sparsity": sp,
                       "widths": widths(model), "acc_pruned": acc0, "acc": accuracy(model, xte, yte),
                       "dead_layers": dead_layers(model, x[:500]), "prune_s": prune_s,
                       "train_s": time.perf_counter() - t, **extra}
                row["untrainable"] = row["acc"] < 0.2
                results.append(row)
                print(json.dumps(row), flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "dense": dense, "terc_only": terc_only, "results": results},
                              indent=1))
    header = ["regime", "target", "method", "weights removed", "widths", "acc pruned", "acc trained",
              "TERC / forced", "collapse (TERC / dead / untrainable)"]
    rows = []
    for r in results:
        tf = f"{r['terc_removed']} / {r['forced']}" if r["method"] == "mipp" else ""
        coll = f"{r.get('terc_collapse', '-')} / {r['dead_layers']} / {int(r['untrainable'])}"
        rows.append([r["regime"], f"{r['target']:.0%}", r["method"], f"{r['weight_sparsity']:.3f}",
                     "-".join(map(str, r["widths"])), f"{r['acc_pruned']:.4f}", f"{r['acc']:.4f}", tf, coll])
    print(markdown_table(header, rows))
    for regime in sorted({r["regime"] for r in results}):
        for method in args.methods.split(","):
            rs = [r for r in results if r["regime"] == regime and r["method"] == method]
            if rs:
                rate = np.mean([(r.get("terc_collapse", 0) > 0) or r["dead_layers"] > 0 or r["untrainable"] for r in rs])
                print(f"# collapse rate {regime} {method}: {rate:.2f} over {len(rs)} runs")


if __name__ == "__main__":
    main()
