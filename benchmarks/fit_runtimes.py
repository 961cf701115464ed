"""Fit one latency cost model per runtime from published MLPerf Tiny results, and check it on
boards it never saw (issue 16).

Data: ``benchmarks/data/mlperf_tiny_anchors.csv`` (every closed-division MLPerf Tiny result of
NUCLEO-L4R5ZI / Cortex-M4, NUCLEO-H7A3ZI-Q / Cortex-M7, EK-RA6M4 / Cortex-M33 and NUCLEO-G0B1RE
/ Cortex-M0+; how it was collected: ``mlperf_tiny_anchors.md``). A runtime is a published
engine at one version (``x-cube-ai 9.0``, ``bosch-hale 1.0.175``...): engines got much faster
between versions. Where one (board, runtime, benchmark) has several results (re-submissions,
max-performance / min-RAM variants), the fastest is used.

Model, per runtime r and core k, with the layer features of the four reference models' int8
TFLite graphs (built by ``benchmarks.latency_anchors``)::

    cycles = s_k * sum over layers (a_r * conv MACs + b_r * depthwise MACs + c_r * FC MACs
                                    + d_r * output elements)

``a..d`` (cycles per M4-equivalent MAC / output element) are fitted per runtime by non-negative
least squares on relative error; ``s_k`` (core cycles relative to a Cortex-M4) is shared by all
runtimes and fitted jointly (alternating), so a core is calibrated by every engine that ran on
it and on another core. ``--per-kind-core-factors`` fits one factor per core and feature
instead (the ablation in RESULTS_latency.md: no better held out). Four benchmarks give at most four coefficients per runtime: the layer
shape terms the issue lists (im2col, 1x1 and 3x3 depthwise paths) cannot be told apart with four
models, so they are folded into the per-kind rates, and the output-element term carries the
per-output requantization.

Leave-one-board-out: for every runtime on two boards or more, its results on one board are
left out of the whole fit and predicted; a core with no other result left cannot be predicted
and is reported so.

    python -m benchmarks.fit_runtimes             # tables on stdout
    python -m benchmarks.fit_runtimes --write     # also regenerate targets/runtimes.toml
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CSV = REPO / "benchmarks" / "data" / "mlperf_tiny_anchors.csv"
OUT = REPO / "targets" / "runtimes.toml"
MODELS = {"kws": "kws_dscnn", "ic": "ic_resnet8", "ad": "ad_autoencoder", "vww": "vww_mobilenet"}
FEATURES = ("conv_macs", "depthwise_macs", "fc_macs", "output_elements")
BASE_CORE = "Cortex-M4"


def runtime_key(row: dict) -> str:
    version = row["runtime_version"].strip()
    while version.endswith(".0") and version.count(".") > 1:
        version = version[:-2]  # 9.0.0 and 9.0 are one release
    if row["runtime"].startswith("microtvm") and version:
        version = version[:7]  # a commit hash
    return f"{row['runtime']} {version}" if version else f"{row['runtime']} (unversioned, {row['release']})"


def load_rows(path: Path = CSV) -> list[dict]:
    """One row per (board, runtime key, benchmark): the fastest published latency, in cycles."""
    best: dict[tuple, dict] = {}
    for row in csv.DictReader(path.open()):
        if row["benchmark"] not in MODELS or not row["latency_ms"]:
            continue
        key = (row["board"], runtime_key(row), row["benchmark"])
        cycles = float(row["latency_ms"]) * 1e-3 * float(row["mhz"]) * 1e6
        if key not in best or cycles < best[key]["cycles"]:
            best[key] = {"board": row["board"], "core": row["core"], "mhz": float(row["mhz"]), "runtime": key[1],
                         "benchmark": row["benchmark"], "cycles": cycles, "source": row["source_path"].split(";")[0],
                         "energy_uj": float(row["energy_uj"]) if row["energy_uj"] else None,
                         "submitter": row["submitter"]}
    return list(best.values())


def model_features(cache: Path) -> dict[str, np.ndarray]:
    """Summed layer features of each reference model's int8 TFLite graph."""
    from benchmarks.latency_anchors import build_tflite
    from tinyprune.measure.macs import tflite_layers
    from tinyprune.measure.runtimes import layer_features

    out = {}
    for bench, name in MODELS.items():
        layers = tflite_layers(build_tflite(name, cache))
        out[bench] = np.sum([layer_features(l) for l in layers], axis=0)
    return out


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    return nnls(a, b)[0]


def fit(rows: list[dict], feats: dict[str, np.ndarray], iterations: int = 50, per_kind: bool = False) -> dict:
    """Joint fit: per-runtime coefficients and per-core factors (see the module doc)."""
    runtimes = sorted({r["runtime"] for r in rows})
    cores = sorted({r["core"] for r in rows})
    scale = {c: np.ones(len(FEATURES)) for c in cores}
    # A core is identifiable only through a runtime that also ran on another core.
    boards_of = defaultdict(set)
    for r in rows:
        boards_of[r["runtime"]].add(r["core"])
    identifiable = {BASE_CORE} | {c for c in cores for rt, cs in boards_of.items() if c in cs and len(cs) > 1}
    coef = {}
    for _ in range(iterations):
        for rt in runtimes:
            mine = [r for r in rows if r["runtime"] == rt and r["core"] in identifiable]
            if not mine:
                mine = [r for r in rows if r["runtime"] == rt]
            a = np.array([feats[r["benchmark"]] * scale[r["core"]] for r in mine])
            b = np.array([r["cycles"] for r in mine])
            w = 1.0 / b  # relative error
            coef[rt] = _nnls(a * w[:, None], b * w)
        for core in cores:
            if core == BASE_CORE or core not in identifiable:
                continue
            mine = [r for r in rows if r["core"] == core and len(boards_of[r["runtime"]]) > 1]
            if per_kind:  # one factor per feature: a core speeds convolutions up more than dense layers
                a = np.array([feats[r["benchmark"]] * coef[r["runtime"]] for r in mine])
                b = np.array([r["cycles"] for r in mine])
                used = a.sum(0) > 0
                factors = np.ones(len(FEATURES))
                factors[used] = _nnls((a / b[:, None])[:, used], np.ones(len(b)))
                scale[core] = factors
            else:
                ratios = [r["cycles"] / max(float(feats[r["benchmark"]] @ coef[r["runtime"]]), 1.0) for r in mine]
                scale[core] = np.full(len(FEATURES), float(np.exp(np.mean(np.log(ratios)))))
    return {"coef": coef, "scale": scale, "identifiable": identifiable, "boards_of": dict(boards_of)}


def predict(model: dict, feats: np.ndarray, runtime: str, core: str) -> float:
    return float((feats * model["scale"][core]) @ model["coef"][runtime])


def leave_one_board_out(rows: list[dict], feats: dict, per_kind: bool = False) -> list[dict]:
    out = []
    boards = defaultdict(set)
    for r in rows:
        boards[r["runtime"]].add(r["board"])
    for rt, bs in sorted(boards.items()):
        if len(bs) < 2:
            continue
        for board in sorted(bs):
            train = [r for r in rows if not (r["runtime"] == rt and r["board"] == board)]
            held = [r for r in rows if r["runtime"] == rt and r["board"] == board]
            m = fit(train, feats, per_kind=per_kind)
            for r in held:
                if r["core"] not in m["identifiable"]:
                    out.append({**r, "predicted": None, "error": None})
                    continue
                p = predict(m, feats[r["benchmark"]], rt, r["core"])
                out.append({**r, "predicted": p, "error": p / r["cycles"] - 1})
    return out


def energy_per_cycle(rows: list[dict]) -> dict[str, dict]:
    """Per core: the median whole-board energy per cycle (pJ) of its MLPerf Tiny board, over the
    results with published energy, and its spread."""
    out = {}
    for core in sorted({r["core"] for r in rows}):
        pj = [r["energy_uj"] * 1e6 / r["cycles"] for r in rows if r["core"] == core and r["energy_uj"]]
        if pj:
            board = next(r["board"] for r in rows if r["core"] == core)
            out[core] = {"pj_per_cycle": float(np.median(pj)), "low": float(np.min(pj)), "high": float(np.max(pj)),
                         "results": len(pj), "board": board}
    return out


def energy_check(rows: list[dict], feats: dict) -> list[dict]:
    """Energy predicted as (leave-one-board-out cycles) x (the board's pJ/cycle from the other
    engines' results) against the published energy."""
    out = []
    for e in leave_one_board_out(rows, feats):
        if e["predicted"] is None or not e["energy_uj"]:
            continue
        others = [r for r in rows if r["board"] == e["board"] and r["runtime"] != e["runtime"] and r["energy_uj"]]
        if not others:
            continue
        pj = float(np.median([r["energy_uj"] * 1e6 / r["cycles"] for r in others]))
        predicted = e["predicted"] * pj * 1e-6
        out.append({**e, "energy_predicted": predicted, "energy_error": predicted / e["energy_uj"] - 1})
    return out


def write_toml(model: dict, loo: list[dict], rows: list[dict], path: Path = OUT) -> None:
    errors = defaultdict(list)
    for e in loo:
        if e["error"] is not None:
            errors[e["runtime"]].append(abs(e["error"]))
    lines = ["# Generated by `python -m benchmarks.fit_runtimes --write` from benchmarks/data/mlperf_tiny_anchors.csv;",
             "# do not edit. Cycles = core factor x sum over layers of (coefficients . features), features:",
             f"# {', '.join(FEATURES)} (see tinyprune/measure/runtimes.py).", ""]
    lines.append("[cores]  # cycles relative to a Cortex-M4 per feature; a core absent here has no calibrated runtime")
    for core, s in sorted(model["scale"].items()):
        if core in model["identifiable"]:
            lines.append(f'"{core}" = [' + ", ".join(f"{v:.4f}" for v in s) + "]")
    lines.append("")
    lines.append("[energy]  # median whole-board pJ per cycle of the core's MLPerf Tiny board (published energy / cycles)")
    for core, e in energy_per_cycle(rows).items():
        lines.append(f'"{core}" = {{ pj_per_cycle = {e["pj_per_cycle"]:.1f}, low = {e["low"]:.1f}, high = {e["high"]:.1f}, '
                     f'results = {e["results"]}, board = "{e["board"]}" }}')
    lines.append("")
    for rt in sorted(model["coef"]):
        cores = sorted({r["core"] for r in rows if r["runtime"] == rt})
        band = float(np.median(errors[rt])) if errors[rt] else None
        worst = float(np.max(errors[rt])) if errors[rt] else None
        lines += [f'[runtime."{rt}"]',
                  "coefficients = [" + ", ".join(f"{c:.6g}" for c in model["coef"][rt]) + "]",
                  "cores = [" + ", ".join(f'"{c}"' for c in cores) + "]",
                  f"extrapolated = {'true' if len(cores) < 2 else 'false'}  # validated on a board it never saw: "
                  + ("no" if len(cores) < 2 else "yes"),
                  f"band = {band:.4f}  # median |error| leaving one board out" if band is not None else
                  "band = 0.25  # not validated (one board): a nominal +-25 %",
                  *([f"worst = {worst:.4f}"] if worst is not None else []), ""]
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path("tinyprune-out/anchors"))
    ap.add_argument("--write", action="store_true", help="regenerate targets/runtimes.toml")
    ap.add_argument("--per-kind-core-factors", action="store_true",
                    help="one cycles factor per core and feature instead of one per core (ablation)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args.cache.mkdir(parents=True, exist_ok=True)
    rows = load_rows()
    feats = model_features(args.cache)
    per_kind = args.per_kind_core_factors
    model = fit(rows, feats, per_kind=per_kind)
    print("Core factors (cycles relative to Cortex-M4, per " + ", ".join(FEATURES) + "): " + "; ".join(
        f"{c} " + "/".join(f"{v:.3f}" for v in s) + ("" if c in model["identifiable"] else " (not identifiable)")
        for c, s in sorted(model["scale"].items())) + "\n")
    print("| runtime | boards | cycles per conv MAC | per depthwise MAC | per FC MAC | per output element | "
          "in-sample median error |")
    print("|---|---|---|---|---|---|---|")
    for rt, c in sorted(model["coef"].items()):
        mine = [r for r in rows if r["runtime"] == rt]
        err = [abs(predict(model, feats[r["benchmark"]], rt, r["core"]) / r["cycles"] - 1) for r in mine]
        boards = ", ".join(sorted({r["board"] for r in mine}))
        print(f"| {rt} | {boards} | {c[0]:.2f} | {c[1]:.2f} | {c[2]:.2f} | {c[3]:.2f} | {100 * np.median(err):.1f} % |")
    loo = leave_one_board_out(rows, feats, per_kind)
    print("\nLeave one board out (the runtime's results on that board left out of the whole fit):\n")
    print("| runtime | held-out board | benchmark | published ms | predicted ms | error |")
    print("|---|---|---|---|---|---|")
    for e in loo:
        pred = "n/a (core not calibrated without it)" if e["predicted"] is None else \
            f"{e['predicted'] / e['mhz'] / 1e3:.2f}"
        err = "" if e["error"] is None else f"{100 * e['error']:+.1f} %"
        print(f"| {e['runtime']} | {e['board']} | {e['benchmark']} | {e['cycles'] / e['mhz'] / 1e3:.2f} | {pred} | {err} |")
    print("\n| runtime | boards | held-out predictions | median abs error | worst | goal (<= 10 % / <= 25 %) |")
    print("|---|---|---|---|---|---|")
    per = defaultdict(list)
    for e in loo:
        per[e["runtime"]].append(e)
    for rt, es in sorted(per.items()):
        errs = [abs(e["error"]) for e in es if e["error"] is not None]
        boards = len({e["board"] for e in es})
        if not errs:
            print(f"| {rt} | {boards} | 0 of {len(es)} | n/a | n/a | not testable |")
            continue
        med, worst = float(np.median(errs)), float(np.max(errs))
        ok = "met" if med <= 0.10 and worst <= 0.25 else "missed"
        print(f"| {rt} | {boards} | {len(errs)} of {len(es)} | {100 * med:.1f} % | {100 * worst:.1f} % | {ok} |")
    print("\nEnergy per cycle of each core's MLPerf Tiny board (published energy / published cycles):\n")
    print("| core | board | results | median pJ/cycle | range |")
    print("|---|---|---|---|---|")
    for core, e in energy_per_cycle(rows).items():
        print(f"| {core} | {e['board']} | {e['results']} | {e['pj_per_cycle']:.0f} | {e['low']:.0f}-{e['high']:.0f} |")
    checked = energy_check(rows, feats)
    if checked:
        errs = [abs(e["energy_error"]) for e in checked]
        print(f"\nEnergy predicted for a board left out (its cycles left out of the fit, the board's pJ/cycle from "
              f"the other engines' results): {len(errs)} results, median |error| {100 * np.median(errs):.1f} %, "
              f"worst {100 * np.max(errs):.1f} %")
    if args.write:
        write_toml(model, loo, rows)
        print(f"\nwrote {OUT.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
