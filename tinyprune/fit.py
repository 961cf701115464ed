"""``compress --fit``: the most accurate configuration whose deployed model fits the target.

The knobs are the MAC reduction of structured pruning and the LUT bits of weight sharing. The
deployed model shrinks as the MAC reduction grows (fewer channels, smaller weights and arena),
and weight sharing already picks the fewest LUT bits that pay, so the search is a bisection on
the MAC reduction:

1. no pruning: if the deployed model fits, nothing is removed (the most accurate choice);
2. ``MAX_SPARSITY``: if even that does not fit, nothing will; exit 1 with the closest result and
   by how much each budget is missed;
3. ``BISECTION_STEPS`` halvings of the interval between the largest reduction known not to fit
   and the smallest known to fit; the most accurate fitting trial is deployed (usually the
   smallest fitting reduction; fine-tuning noise can favour a larger one).

At most 5 trials. Each reuses the loaded model, the data splits and the original model's
record; a trial is prune -> fine-tune -> int8 export -> weight sharing, in its own folder, and
the chosen trial's files become the output. The accuracy budget does not apply: the search
maximizes accuracy subject to the size budgets instead.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from tinyprune.config import CompressConfig
from tinyprune.errors import BudgetExceeded, ConfigError

MAX_SPARSITY = 0.9
BISECTION_STEPS = 3


@dataclass(frozen=True)
class FitBudgets:
    """What the deployed model must fit in. None: not constrained (flash and RAM default to the target's)."""

    # all four are the deployed costs' (tinyprune.measure.deployed), what the headline shows
    max_flash: int | None = None  # firmware flash (model + runtime code); default: the target's flash
    max_ram: int | None = None  # firmware RAM (arena + stack and static data); default: the target's RAM
    max_latency_ms: float | None = None  # predicted on the target
    max_energy_uj: float | None = None  # predicted cycles x the board's pJ per cycle

    def __post_init__(self):
        for name in ("max_flash", "max_ram", "max_latency_ms", "max_energy_uj"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                                  or v <= 0):
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive number, got {v!r}")

    def limits(self, target) -> dict:
        flash, ram = target.flash_bytes, target.ram_bytes
        out = {"flash_bytes": min(flash, self.max_flash or flash), "ram_bytes": min(ram, self.max_ram or ram)}
        if self.max_latency_ms is not None:
            out["latency_ms"] = self.max_latency_ms
        if self.max_energy_uj is not None:
            out["energy_uj"] = self.max_energy_uj
        return out


def _costs(stage) -> dict:
    """The deployed stage's deployed costs (``tinyprune.measure.deployed``), as the budgets name them."""
    from tinyprune.measure.deployed import of

    c = of(stage.details.get("measure"))
    if c is None:
        return {"flash_bytes": None, "ram_bytes": None, "latency_ms": None, "energy_uj": None}
    return {"flash_bytes": c.flash_bytes, "ram_bytes": c.ram_bytes, "latency_ms": c.ms.value,
            "energy_uj": c.energy_uj.value}


def _misses(costs: dict, limits: dict) -> dict:
    """Budgets the trial misses; a budget that could not be measured counts as missed."""
    out = {}
    for k, v in limits.items():
        if costs.get(k) is None:
            out[k] = {"value": None, "limit": v, "over": float("inf")}
        elif costs[k] > v:
            out[k] = {"value": costs[k], "limit": v, "over": costs[k] - v}
    return out


def _trial(base, cfg: CompressConfig, sparsity: float, folder: Path) -> dict:
    from tinyprune.device_stages import deployed, export_stage, share_stage
    from tinyprune.api import prune_finetune_stage
    from tinyprune.state import RunState

    folder.mkdir()
    state = RunState(base.source, base.target, folder, base.progress, base.data_path, base.builtin_data,
                     loaded=base.loaded, splits=base.splits, example=base.example, model=base.model,
                     records=[base.records[0]])
    trial_cfg = replace(cfg, prune=replace(cfg.prune, sparsity=sparsity), max_accuracy_drop=100.0, deepcompress=None)
    for stage in (prune_finetune_stage, export_stage, share_stage):
        state, produced = stage(state, trial_cfg)
        state.records.extend(produced if isinstance(produced, (list, tuple)) else [produced])
    dep = deployed(state, trial_cfg)
    chosen = next(r for r in state.records if r.name == dep["stage"])
    return {"sparsity": sparsity, "state": state, "deployed": dep, "costs": _costs(chosen),
            "accuracy": dep["accuracy"]}


def search(base, cfg: CompressConfig, budgets: FitBudgets, tmp: Path) -> tuple[dict, list[dict], dict]:
    """(chosen trial, all trials, limits); BudgetExceeded (exit 1) when nothing fits."""
    limits = budgets.limits(base.target)
    trials: list[dict] = []

    def run(sparsity: float) -> dict:
        trial = _trial(base, cfg, sparsity, tmp / f"_trial{len(trials)}")
        trial["misses"] = _misses(trial["costs"], limits)
        trial["fits"] = not trial["misses"]
        trials.append(trial)
        return trial

    if run(0.0)["fits"]:
        return trials[0], trials, limits
    top = run(MAX_SPARSITY)
    if not top["fits"]:
        closest = min(trials, key=lambda t: sum(m["over"] / m["limit"] for m in t["misses"].values()))
        raise BudgetExceeded(f"nothing fits {base.target.name}: the closest, {closest['sparsity']:.0%} of the MACs "
                             f"removed ({closest['deployed']['artifact']}), misses " + ", ".join(
                                 f"{k.replace('_', ' ')} {_fmt(k, m['value'])} > {_fmt(k, m['limit'])}"
                                 if m["value"] is not None else f"{k.replace('_', ' ')} (not measurable)"
                                 for k, m in closest["misses"].items()))
    lo, hi = 0.0, MAX_SPARSITY
    for _ in range(BISECTION_STEPS):
        mid = round((lo + hi) / 2, 4)
        if run(mid)["fits"]:
            hi = mid
        else:
            lo = mid
    fitting = [t for t in trials if t["fits"]]
    best = max(fitting, key=lambda t: (t["accuracy"], -t["sparsity"]))
    return best, trials, limits


def _fmt(key: str, value: float) -> str:
    if key.endswith("bytes"):
        return f"{value:,.0f} B"
    return f"{value:.3g} {'ms' if key == 'latency_ms' else 'uJ'}"


def adopt(chosen: dict, trials: list[dict], tmp: Path) -> None:
    """Move the chosen trial's files to the output folder; drop the other trials' folders."""
    folder = chosen["state"].tmp
    for path in folder.iterdir():
        shutil.move(str(path), str(tmp / path.name))
    for t in trials:
        shutil.rmtree(t["state"].tmp, ignore_errors=True)
    chosen["state"].tmp = tmp


def summary(chosen: dict, trials: list[dict], limits: dict) -> dict:
    return {"limits": limits, "search": f"bisection on the MAC reduction (0, then {MAX_SPARSITY:.0%}, then "
                                        f"{BISECTION_STEPS} halvings); weight sharing picks the fewest LUT bits",
            "chosen": trials.index(chosen),
            "trials": [{"sparsity": t["sparsity"], "artifact": t["deployed"]["artifact"], "accuracy": t["accuracy"],
                        **t["costs"], "fits": t["fits"], "misses": t["misses"]} for t in trials]}


def pareto_png(fit: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = pareto_figure(fit)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pareto_figure(fit: dict):
    """Accuracy vs firmware flash of every trial, the Pareto front joined, RAM in the labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = fit["trials"]
    fig, ax = plt.subplots(figsize=(6, 4))
    front = sorted((t for t in trials if not any(o["flash_bytes"] <= t["flash_bytes"] and o["accuracy"] > t["accuracy"]
                                                  for o in trials)), key=lambda t: t["flash_bytes"])
    ax.plot([t["flash_bytes"] / 1024 for t in front], [100 * t["accuracy"] for t in front], "-", color="#999999",
            label="Pareto front")
    for i, t in enumerate(trials):
        marker = "*" if i == fit["chosen"] else ("o" if t["fits"] else "x")
        ax.plot(t["flash_bytes"] / 1024, 100 * t["accuracy"], marker, color="#4c72b0" if t["fits"] else "#c44e52",
                markersize=12 if i == fit["chosen"] else 7)
        ax.annotate(f"{t['sparsity']:.0%}, {t['ram_bytes'] / 1024:.0f} KiB RAM", (t["flash_bytes"] / 1024,
                    100 * t["accuracy"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.axvline(fit["limits"]["flash_bytes"] / 1024, color="#c44e52", linestyle=":", label="flash budget")
    ax.set_xlabel("firmware flash (KiB)")
    ax.set_ylabel("held-out accuracy in TFLM (%)")
    ax.set_title("--fit trials: MACs removed, arena")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
