"""Issue 12 benchmark: held-out accuracy (TFLM) vs deployed flash and arena, five configurations.

Per model (trained and cached by benchmarks/fidelity_bench.py: 20k training images, 3 epochs,
the first 2,000 official test images held out), every run through ``tinyprune.api.compress``
with the same fine-tune budget:

(a) int8 only (no pruning, no weight sharing);
(b) l1 structured pruning with plain removal + int8, at the given MAC reductions (Torch-Pruning's
    magnitude default);
(c) the flow criterion with compensation (tinyprune's default pruning) + int8, same reductions;
(d) the tinyprune default: flow with compensation at 50 %, weight sharing where it pays, accuracy
    budget 1 point (before issue 10's default change: l1 with plain removal; RESULTS.md's table
    predates it);
(e) ``--fit`` at fractions of (a)'s flash.

    python -m benchmarks.pareto --models lenet5,ds_cnn        # about 20 min per model on 2 cores
    python -m benchmarks.pareto --models resnet8 --levels 0.5 --fit-fractions 0.35

Writes benchmarks/out/pareto.json, benchmarks/out/pareto_<model>.png and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.common import REPO, markdown_table
from benchmarks.fidelity_bench import OUT, trained
from tinyprune.api import ModelSource, compress
from tinyprune.config import CompressConfig, FinetuneConfig, PruneConfig
from tinyprune.deepcompress.deploy import SharingConfig
from tinyprune.errors import BudgetExceeded
from tinyprune.fit import FitBudgets


def one(name: str, label: str, cfg: CompressConfig, fit: FitBudgets | None = None) -> dict:
    model_path, data_path = trained(name, 3)
    out = OUT / f"pareto_{name}_{label.replace(' ', '_').replace('%', '')}"
    t = time.perf_counter()
    try:
        report = compress(ModelSource(model_path), cfg, data_path=data_path, out_dir=out, fit=fit).to_dict()
    except BudgetExceeded as exc:
        return {"model": name, "config": label, "error": str(exc), "seconds": round(time.perf_counter() - t, 1)}
    dep = report["deployed"]
    stages = {s["name"]: s for s in report["stages"]}
    row = {"model": name, "config": label, "accuracy": dep["accuracy"], "flash_bytes": dep["flash_bytes"],
           "arena_bytes": dep["arena_bytes"], "artifact": dep["artifact"], "original": stages["original"]["accuracy"],
           "macs_removed": 1 - stages["int8"]["macs"] / stages["original"]["macs"],
           "within_budget": dep["within_accuracy_budget"], "seconds": round(time.perf_counter() - t, 1),
           "lut_bits": (dep.get("weight_sharing") or {}).get("bits")}
    if report.get("fit"):
        row["fit_trials"] = len(report["fit"]["trials"])
        row["fit_limit"] = report["fit"]["limits"]["flash_bytes"]
    shutil.rmtree(out, ignore_errors=True)
    return row


def runs(name: str, levels: list[float], fractions: list[float], epochs: int) -> list[dict]:
    ft = FinetuneConfig(epochs=epochs)
    plain = dict(finetune=ft, sharing=None, max_accuracy_drop=100.0)
    rows = [one(name, "(a) int8 only", CompressConfig(prune=PruneConfig(sparsity=0.0), **plain))]
    base_flash = rows[0]["flash_bytes"]
    for level in levels:
        rows.append(one(name, f"(b) l1 {level:.0%} + int8", CompressConfig(prune=PruneConfig("l1", level, compensate=False), **plain)))
        rows.append(one(name, f"(c) flow {level:.0%} + int8", CompressConfig(prune=PruneConfig("flow", level), **plain)))
    rows.append(one(name, "(d) default", CompressConfig(finetune=ft, sharing=SharingConfig())))
    for frac in fractions:
        budget = FitBudgets(max_flash=int(base_flash * frac))
        rows.append(one(name, f"(e) --fit {frac:.0%} of (a)", CompressConfig(finetune=ft, sharing=SharingConfig()),
                        fit=budget))
    return rows


def plot(name: str, rows: list[dict]) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = {"(a)": "#333333", "(b)": "#c44e52", "(c)": "#55a868", "(d)": "#4c72b0", "(e)": "#8172b2"}
    for r in rows:
        if "error" in r:
            continue
        key = r["config"][:3]
        ax.plot(r["flash_bytes"] / 1024, 100 * r["accuracy"], "o", color=colors[key])
        ax.annotate(f"{r['config']}, {r['arena_bytes'] / 1024:.0f} KiB RAM", (r["flash_bytes"] / 1024, 100 * r["accuracy"]),
                    fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("deployed flash (KiB)")
    ax.set_ylabel("held-out accuracy, TFLM (%)")
    ax.set_title(f"{name}: accuracy vs deployed flash")
    fig.tight_layout()
    fig.savefig(REPO / "benchmarks" / "out" / f"pareto_{name}.png", dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="lenet5,ds_cnn,resnet8")
    ap.add_argument("--levels", default="0.5,0.7")
    ap.add_argument("--fit-fractions", default="0.6,0.35,0.2")
    ap.add_argument("--finetune-epochs", type=int, default=2)
    args = ap.parse_args()
    levels = [float(v) for v in args.levels.split(",")]
    fractions = [float(v) for v in args.fit_fractions.split(",")]
    path = REPO / "benchmarks" / "out" / "pareto.json"
    results = json.loads(path.read_text()) if path.exists() else []
    for name in args.models.split(","):
        results = [r for r in results if r["model"] != name]
        rows = runs(name, levels, fractions, args.finetune_epochs)
        for r in rows:
            print(json.dumps(r), flush=True)
        results += rows
        path.write_text(json.dumps(results, indent=1))
        plot(name, rows)
    table = [[r["model"], r["config"], "-" if "error" in r else f"{100 * r['accuracy']:.2f}",
              "-" if "error" in r else f"{r['flash_bytes']:,}", "-" if "error" in r else f"{r['arena_bytes']:,}",
              "-" if "error" in r else f"{r['macs_removed']:.0%}", r.get("lut_bits") or "-",
              r.get("error", "").split(":")[0] or r.get("artifact", ""), r["seconds"]] for r in results]
    print(markdown_table(["model", "config", "accuracy % (TFLM)", "flash B", "arena B", "MACs removed", "LUT bits",
                          "deployed", "s"], table))


if __name__ == "__main__":
    main()
