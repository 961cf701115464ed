"""MSPIC (seed 001, Soltani et al.) on a residual net deep enough to have redundant units.

ResNet-20 (3 units per stage) or ResNet-56 (9) on Fashion-MNIST. MSPIC's multi-stage
clustering removes whole residual units: per stage, I(U_l; Y) for every unit on the analysis
samples, units clustered by that MI at every resolution, the policy removing the most units
within the error threshold kept, then a fine-tune before the next stage. Against it, at the same
number of units removed in every stage and the same fine-tunes: units removed at random (two
seeds) and by the L1 norm of the unit's branch output (smallest mean |T_l| first).

    python -m benchmarks.mspic_resnet --model resnet20

Prints which units each method removes, parameters and MACs before/after and test accuracy, and
writes benchmarks/out/mspic_<model>.json.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch
import torch.fx as fx

from benchmarks.common import REPO, cached_fit, load_dataset, markdown_table
from tinyprune.config import FinetuneConfig
from tinyprune.measure.macs import count_torch
from tinyprune.prune.skip_units import as_graph, find_units, mspic, recalibrate_bn, remove_units
from tinyprune.train import accuracy, fit

OUT = REPO / "benchmarks" / "out"


def base_model(name: str, xtr, ytr, epochs: int, seed: int):
    cfg = FinetuneConfig(epochs=epochs, lr=2e-3, batch_size=128)
    return cached_fit(name, xtr, ytr, cfg, seed, OUT / f"mspic_base_{name}_{epochs}ep_s{seed}.pt")


@torch.no_grad()
def branch_l1(gm: fx.GraphModule, units, x: np.ndarray) -> dict[str, float]:
    """Mean |T_l| of each unit's branch output over ``x`` (the L1 baseline's score)."""
    wanted = {u.branch: u.node for u in units}
    sums = {u.node: 0.0 for u in units}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name in wanted:
                sums[wanted[n.name]] += float(out.abs().mean()) * len(out)
            return out

    gm.eval()
    for i in range(0, len(x), 256):
        Recorder(gm).run(torch.from_numpy(x[i:i + 256]))
    return {k: v / len(x) for k, v in sums.items()}


def size(gm, x1) -> tuple[int, int]:
    macs, params = count_torch(gm, torch.from_numpy(x1))
    return params, macs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet20", choices=["resnet20", "resnet56", "resnet56_s2"])
    ap.add_argument("--train-epochs", type=int, default=8)
    ap.add_argument("--stages", type=int, default=4)
    ap.add_argument("--max-error-increase", type=float, default=0.03,
                    help="error a stage's policy may add on the analysis samples before its fine-tune")
    ap.add_argument("--stage-epochs", type=int, default=1, help="fine-tune after each stage")
    ap.add_argument("--final-epochs", type=int, default=2, help="fine-tune after the last stage")
    ap.add_argument("--analysis", type=int, default=2000, help="analysis samples (MI and the policy check)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--random-seeds", type=int, default=1, help="random-removal baselines")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.export's pytree notice, per graph copy
    t_all = time.perf_counter()
    xtr, ytr, xte, yte = load_dataset("fashion-mnist")
    base, train_s = base_model(args.model, xtr, ytr, args.train_epochs, args.seed)
    rng = np.random.default_rng(args.seed)
    pick = rng.choice(len(xtr), args.analysis, replace=False)
    xa, ya = xtr[pick], ytr[pick]
    base_acc = accuracy(base, xte, yte)
    gm0 = as_graph(base, torch.from_numpy(xtr[:1]))
    params0, macs0 = size(gm0, xtr[:1])
    units0 = [u.node for u in find_units(gm0)]
    print(f"# {args.model} on Fashion-MNIST: {len(units0)} units, base test accuracy {100 * base_acc:.2f} %, "
          f"{params0:,} params, {macs0:,} MACs (training {train_s:.0f} s)", flush=True)

    def retrain(epochs):
        def run(gm):
            return fit(gm, xtr, ytr, FinetuneConfig(epochs=epochs, lr=5e-4, batch_size=128), args.seed)
        return run

    t = time.perf_counter()
    gm, records = mspic(base, xa, ya, stages=args.stages, max_error_increase=args.max_error_increase,
                        retrain=retrain(args.stage_epochs))
    fit(gm, xtr, ytr, FinetuneConfig(epochs=args.final_epochs, lr=5e-4, batch_size=128), args.seed)
    mspic_s = time.perf_counter() - t
    per_stage = [len(r["removed"]) for r in records]
    results = {"mspic": {"removed": [r["removed"] for r in records], "model": gm, "seconds": mspic_s}}
    for r in records:
        print(f"stage {r['stage']}: MI per unit {dict(zip(r['units'], r['mi']))}; resolution {r['resolution']}, "
              f"removed {r['removed']} (analysis error {r['base_error']:.3f} -> {r['error']:.3f}); policies "
              + "; ".join(f"r={p['resolution']}: {len(p['removed'])} units {p['error']:.3f}" for p in r["policies"]),
              flush=True)

    def by_rule(name: str, choose):
        t = time.perf_counter()
        g = as_graph(base, torch.from_numpy(xtr[:1]))
        removed = []
        for stage, k in enumerate(per_stage):
            if k == 0:
                continue
            names = choose(g, find_units(g), k, stage)
            removed.append(sorted(names))
            # the same mechanics as MSPIC's: branch removed, batch-norm statistics re-estimated, fine-tune
            g = retrain(args.stage_epochs)(recalibrate_bn(remove_units(g, set(names)), xa))
        fit(g, xtr, ytr, FinetuneConfig(epochs=args.final_epochs, lr=5e-4, batch_size=128), args.seed)
        results[name] = {"removed": removed, "model": g, "seconds": time.perf_counter() - t}
        print(f"{name}: removed {removed}", flush=True)

    for s in range(1, args.random_seeds + 1):
        gen = np.random.default_rng(1000 + s)
        by_rule(f"random (seed {s})", lambda g, units, k, stage, gen=gen:
                [units[i].node for i in gen.choice(len(units), k, replace=False)])

    def smallest_l1(g, units, k, stage):
        score = branch_l1(g, units, xa)
        return sorted(score, key=score.get)[:k]

    by_rule("L1 of unit output", smallest_l1)

    rows = [["base", f"{len(units0)}", "-", f"{params0:,}", f"{macs0:,}", f"{100 * base_acc:.2f}", "-", "-"]]
    summary = {}
    for name, res in results.items():
        g = res["model"]
        params, macs = size(g, xtr[:1])
        acc = accuracy(g, xte, yte)
        removed = [u for stage in res["removed"] for u in stage]
        rows.append([name, f"{len(units0) - len(removed)}", ", ".join(removed) or "none", f"{params:,}", f"{macs:,}",
                     f"{100 * acc:.2f}", f"{100 * (1 - params / params0):.1f}", f"{res['seconds']:.0f}"])
        summary[name] = {"removed": res["removed"], "params": params, "macs": macs, "test_accuracy": acc,
                         "params_removed": 1 - params / params0, "seconds": res["seconds"]}
    wall = time.perf_counter() - t_all
    print()
    print(f"stages {args.stages}, max error increase {args.max_error_increase}, {args.stage_epochs} fine-tune "
          f"epoch(s) per stage, {args.final_epochs} final; wall {wall:.0f} s")
    print(markdown_table(["method", "units left", "units removed", "params", "MACs", "test acc %",
                          "params removed %", "s"], rows))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"mspic_{args.model}.json").write_text(json.dumps(
        {"args": vars(args), "base_accuracy": base_acc, "params": params0, "macs": macs0, "units": units0,
         "stages": records, "results": summary, "wall_seconds": wall, "train_seconds": train_s}, indent=1))


if __name__ == "__main__":
    main()
