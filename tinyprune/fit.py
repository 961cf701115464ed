"""``compress --fit``: the most accurate configuration whose deployed model fits the target.

The knobs are the MAC reduction of structured pruning and the LUT bits of weight sharing. The
deployed model shrinks as the MAC reduction grows (fewer channels, smaller weights and arena),
and weight sharing already picks the fewest LUT bits that pay, so the search is a bisection on
the MAC reduction:

1. no pruning: if the deployed model fits, nothing is removed (the most accurate choice);
2. ``MAX_SPARSITY``: if even that does not fit, nothing will; exit 1 with the closest result and
   by how much each budget is missed;
3. ``BISECTION_STEPS`` halvings of the interval between the largest reduction known not to fit
   and the smallest known to fit; the most accurate trial that meets every budget is deployed
   (usually the smallest fitting reduction; fine-tuning noise can favour a larger one).

At most 5 trials. Each reuses the loaded model, the data splits and the original model's
record; a trial is prune -> fine-tune -> int8 export -> weight sharing, in its own folder, and
the chosen trial's files become the output. ``--max-accuracy-drop`` is a budget like the others:
pruning does not back off within a trial (the search sets the reduction), but a deployed model
further below the original exits 1 like one that misses a device budget, so a CI job fails. Weight
sharing runs only on trials it could bring within every budget.
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


def _note(progress, text: str) -> None:
    """A line of its own in the progress output (cli_progress), where the display takes one."""
    note = getattr(progress, "note", None)
    if note is not None:
        note(text)


def _sharing_cannot_help(state, cfg: CompressConfig, limits: dict, floor: float) -> str | None:
    """Why weight sharing cannot turn this trial into one that meets every budget, if it cannot.

    A LUT model only saves flash: it adds RAM (decoded weights), time and energy (DECODE ops), and
    never adds accuracy. So a trial whose int8 model misses anything but flash, or whose flash
    the largest saving possible at the fewest bits cannot bring within budget, skips the search
    (the search trains and converts once per width: minutes on a real model)."""
    from tinyprune.deepcompress.deploy import weight_bytes_saved_at_most
    from tinyprune.measure.deployed import decode_code_bytes
    from tinyprune.measure.graph import read_graph

    int8 = next(r for r in state.records if r.name == "int8")
    if int8.accuracy < floor - 1e-12:
        return "skipped: the int8 model is already below the accuracy budget"
    misses = _misses(_costs(int8), limits)
    other = [k for k in misses if k != "flash_bytes"]
    if other:
        return f"skipped: the int8 model misses {', '.join(_name(k) for k in other)}, which LUTs only add to"
    if "flash_bytes" in misses:
        ops = [op.op for op in read_graph(state.int8["bytes"]).ops]
        most = weight_bytes_saved_at_most(state.finetuned, cfg.sharing.min_bits) - decode_code_bytes(ops, state.target)
        if misses["flash_bytes"]["over"] > most:
            return (f"skipped: LUTs save at most {max(most, 0):,} B of firmware flash, the int8 model is "
                    f"{misses['flash_bytes']['over']:,.0f} B over the flash budget")
    return None


def _trial(base, cfg: CompressConfig, sparsity: float, folder: Path, limits: dict, floor: float) -> dict:
    from tinyprune.api import prune_finetune_stage
    from tinyprune.deepcompress.deploy import Plan
    from tinyprune.device_stages import deployed, export_stage, share_stage
    from tinyprune.state import RunState

    folder.mkdir()
    state = RunState(base.source, base.target, folder, base.progress, base.data_path, base.builtin_data,
                     loaded=base.loaded, splits=base.splits, example=base.example, model=base.model,
                     records=[base.records[0]])
    cfg = replace(cfg, prune=replace(cfg.prune, sparsity=sparsity), deepcompress=None)
    # the search sets the MAC reduction: pruning must not back off it (the accuracy budget is
    # checked on the deployed model below); weight sharing keeps the user's budget
    stages = [(prune_finetune_stage, replace(cfg, max_accuracy_drop=100.0)), (export_stage, cfg)]
    for stage, stage_cfg in stages:
        state, produced = stage(state, stage_cfg)
        state.records.extend(produced if isinstance(produced, (list, tuple)) else [produced])
    skip = _sharing_cannot_help(state, cfg, limits, floor) if cfg.sharing is not None else None
    if skip:
        state.sharing = Plan([], [], None, skip)
    else:
        int8 = next(r for r in state.records if r.name == "int8")
        if cfg.prefer == "auto" and "flash_bytes" in _misses(_costs(int8), limits):
            # the flash budget is the user's: a LUT model is the only way to meet it, the RAM budget still holds
            cfg = replace(cfg, prefer="flash")
        state, produced = share_stage(state, cfg)
        state.records.extend(produced)
    dep = deployed(state, cfg)
    chosen = next(r for r in state.records if r.name == dep["stage"])
    return {"sparsity": sparsity, "state": state, "deployed": dep, "costs": _costs(chosen),
            "accuracy": dep["accuracy"]}


def _name(key: str) -> str:
    return {"flash_bytes": "flash", "ram_bytes": "RAM", "latency_ms": "latency", "energy_uj": "energy",
            "accuracy": "accuracy"}[key]


def _miss_text(key: str, m: dict) -> str:
    if m["value"] is None:
        return f"{_name(key)} (not measurable)"
    if key == "accuracy":
        return f"accuracy {m['value']:.2%} < {m['limit']:.2%}"
    return f"{_name(key)} {_fmt(key, m['value'])} > {_fmt(key, m['limit'])}"


def _result_line(trial: dict, floor: float) -> str:
    c = trial["costs"]
    measured = (f"{trial['accuracy']:.2%} in TFLM, firmware {c['flash_bytes']:,} B flash, {c['ram_bytes']:,} B RAM, "
                f"{c['latency_ms']:.3g} ms" if c["flash_bytes"] is not None else f"{trial['accuracy']:.2%} in TFLM")
    verdict = "meets every budget" if trial["fits"] else "misses " + ", ".join(
        _miss_text(k, m) for k, m in trial["misses"].items())
    return f"--fit trial {trial['index'] + 1}: {trial['deployed']['artifact']}, {measured}: {verdict}"


def search(base, cfg: CompressConfig, budgets: FitBudgets, tmp: Path) -> tuple[dict, list[dict], dict]:
    """(chosen trial, all trials, limits); BudgetExceeded (exit 1) when no trial meets every budget.

    Device budgets shrink-monotone in the MAC reduction and accuracy falls with it, so a trial
    that misses both a device budget and the accuracy budget ends the search: a smaller
    reduction misses the device budget, a larger one the accuracy."""
    limits = budgets.limits(base.target)
    original = base.records[0].accuracy
    floor = original - cfg.max_accuracy_drop / 100
    trials: list[dict] = []
    most = 2 + BISECTION_STEPS

    def run(sparsity: float) -> dict:
        _note(base.progress, f"--fit trial {len(trials) + 1} (of at most {most}): {sparsity:.0%} of the MACs "
                             f"removed, then fine-tune, int8 and weight sharing")
        trial = _trial(base, cfg, sparsity, tmp / f"_trial{len(trials)}", limits, floor)
        trial["index"] = len(trials)
        trial["device_misses"] = _misses(trial["costs"], limits)
        trial["misses"] = dict(trial["device_misses"])
        if trial["accuracy"] < floor - 1e-12:
            trial["misses"]["accuracy"] = {"value": trial["accuracy"], "limit": floor,
                                           "over": (floor - trial["accuracy"]) * 100}
        trial["fits"] = not trial["misses"]
        trials.append(trial)
        _note(base.progress, _result_line(trial, floor))
        return trial

    def hopeless(trial: dict) -> bool:
        return bool(trial["device_misses"]) and "accuracy" in trial["misses"]

    first = run(0.0)
    if first["device_misses"] and not hopeless(first):
        top = run(MAX_SPARSITY)
        if not top["device_misses"]:
            lo, hi = 0.0, MAX_SPARSITY
            for _ in range(BISECTION_STEPS):
                mid = round((lo + hi) / 2, 4)
                trial = run(mid)
                if hopeless(trial):
                    break
                if trial["device_misses"]:
                    lo = mid
                else:
                    hi = mid
    fitting = [t for t in trials if t["fits"]]
    if not fitting:
        raise BudgetExceeded(_nothing_fits(base.target.name, trials, original, cfg.max_accuracy_drop))
    best = max(fitting, key=lambda t: (t["accuracy"], -t["sparsity"]))
    return best, trials, limits


def _nothing_fits(target: str, trials: list[dict], original: float, max_drop: float) -> str:
    """One line: the closest trial (the most accurate that fits the device, else the one nearest
    the device budgets) and what every trial missed."""
    on_device = [t for t in trials if not t["device_misses"]]
    if on_device:
        closest = max(on_device, key=lambda t: t["accuracy"])
        head = (f"nothing fits {target} within the accuracy budget (at most {max_drop:g} points below the "
                f"original {original:.2%})")
    else:
        closest = min(trials, key=lambda t: sum(m["over"] / m["limit"] for m in t["device_misses"].values()))
        head = f"nothing fits {target}"
    each = "; ".join(f"{t['sparsity']:.0%}: " + ", ".join(_miss_text(k, m) for k, m in t["misses"].items())
                     for t in trials)
    return (f"{head}: the closest, {closest['sparsity']:.0%} of the MACs removed ({closest['deployed']['artifact']}), "
            f"misses " + ", ".join(_miss_text(k, m) for k, m in closest["misses"].items())
            + f"; every trial (MACs removed: misses): {each}")


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
                    100 * t["accuracy"]), fontsize=9, xytext=(4, 4), textcoords="offset points")
    ax.axvline(fit["limits"]["flash_bytes"] / 1024, color="#c44e52", linestyle=":", label="flash budget")
    ax.set_xlabel("firmware flash (KiB)")
    ax.set_ylabel("held-out accuracy in TFLM (%)")
    ax.set_title("--fit trials: MACs removed, arena")
    ax.legend(fontsize=9)
    ax.set_ylim(top=min(100.0, ax.get_ylim()[1]))  # accuracy ends at 100 %
    fig.tight_layout()
    return fig
