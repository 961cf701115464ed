"""The device cost model: instructions per operator, firmware code size, cycles per runtime and core.

    python -m benchmarks.fit_device            # the tables of RESULTS_latency.md (~2 min the first time)
    python -m benchmarks.fit_device --write    # also regenerates targets/device_model.toml

Three fits, each checked on data left out of it:

1. **Instructions per operator** (``tinyprune.measure.instructions``), per core, on the exact
   counts of ``benchmarks/data/tflm_cmsis_nn_ops.csv`` (TFLM + CMSIS-NN firmware on emulated
   Cortex-M4/M7/M33/M55). Checked two ways: 5-fold cross-validation over distinct operator shapes
   (a shape is never in its own fit), and the suite's second seed (``*_b`` models) predicted from
   the first.
2. **Firmware flash** (``tinyprune.measure.firmware``): the code bytes of each kernel and of the
   TFLM core from ``tflm_cmsis_nn_code_size.csv``; the bytes a kernel pulls in beyond its own
   objects when registered (its option parser, libm) are one constant per registered op, fitted on
   one linked image of ``firmware_images.csv`` and checked on the other.
3. **Cycles** = a core's cycles per instruction x the TFLM instructions of each op group (conv,
   depthwise, fully connected, other), with one factor per group for each vendor engine, fitted on
   the published MLPerf Tiny latencies (``mlperf_tiny_anchors.csv``; the reference models'
   instructions are predicted by fit 1). Checked by leaving each board out of every runtime
   published on two or more; the band is the 80 % quantile of those errors, and its coverage is
   checked runtime by runtime with the band computed without that runtime.
"""

from __future__ import annotations

import argparse
import csv
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from tinyprune.measure import instructions as ins
from tinyprune.measure.macs import tflite_kind

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "benchmarks" / "data"
OPS_CSV = DATA / "tflm_cmsis_nn_ops.csv"
SIZE_CSV = DATA / "tflm_cmsis_nn_code_size.csv"
IMAGES_CSV = DATA / "firmware_images.csv"
ANCHORS_CSV = DATA / "mlperf_tiny_anchors.csv"
OUT = REPO / "targets" / "device_model.toml"
MODELS = {"kws": "kws_dscnn", "ic": "ic_resnet8", "ad": "ad_autoencoder", "vww": "vww_mobilenet"}
GROUPS = ("conv", "dw", "fc", "other")
CORE_NAMES = {"Cortex-M0+": "cortex-m0plus", "Cortex-M4": "cortex-m4", "Cortex-M7": "cortex-m7",
              "Cortex-M33": "cortex-m33", "Cortex-M55": "cortex-m55"}
COVERAGE = 0.8
# The default runtime: TFLM + CMSIS-NN as the calibration built it. Its cycles per instruction come
# from the TFLM + CMSIS-NN results MLPerf Tiny has (EK-RA6M4, a Cortex-M33).
TFLM = "tflm"
TFLM_ANCHOR = "tflm-cmsis-nn (unversioned, v0.7)"
# cores with no board of their own take the factor of the nearest core with one
NEAREST = {"cortex-m33": "cortex-m4", "cortex-m55": "cortex-m33"}


# --------------------------------------------------------------------------- 1. instructions

def _dims(text: str) -> list[int]:
    return [int(v) for v in text.split("x")] if text else []


def ops_rows(path: Path = OPS_CSV) -> list[dict]:
    """The calibration rows as layer records (NHWC, as ``tflite_layers`` makes them)."""
    rows = []
    for r in csv.DictReader(path.open()):
        op = r["op"].replace("CUSTOM:", "")
        shapes = [_dims(s) for s in r["input_shapes"].split(";")] if r["input_shapes"] else []
        macs = int(r["macs"])
        kind = tflite_kind(op)
        dense = kind in ("conv", "depthwise_conv", "fully_connected")
        layer = {"op": op, "kind": kind, "input_shapes": shapes, "output_shapes": [_dims(r["output_shape"])],
                 "macs": macs if dense else 0, "elements": macs if kind == "pool" else int(r["out_elements"])}
        key = (op, r["input_shapes"], r["output_shape"], r["filter_shape"], r["stride"], r["padding"])
        rows.append({"core": r["core"], "model": r["model"], "layer": layer, "instructions": int(r["instructions"]),
                     "shape_key": key})
    return rows


def fit_instructions(rows: list[dict]) -> dict[str, list[float]]:
    """Per kernel path: coefficients minimising the relative error (NNLS: no negative costs)."""
    from scipy.optimize import nnls

    by_path = defaultdict(list)
    for r in rows:
        s = ins.op_shape(r["layer"], channels_last=True)
        by_path[s.path].append((ins.features(s), r["instructions"]))
    coef = {}
    for path, items in by_path.items():
        x = np.array([f for f, _ in items], dtype=float)
        y = np.array([t for _, t in items], dtype=float)
        coef[path] = [float(v) for v in nnls(x / y[:, None], np.ones(len(y)))[0]]
    return coef


def _predict_one(coef: dict, layer: dict) -> float | None:
    s = ins.op_shape(layer, channels_last=True)
    if s.path not in coef:
        return None
    return float(np.dot(coef[s.path], ins.features(s)))


def held_out_errors(rows: list[dict], folds: int = 5, seed: int = 0) -> list[dict]:
    """Each row predicted by a fit that saw none of the rows of its shape (k-fold over shapes)."""
    keys = sorted({r["shape_key"] for r in rows})
    order = np.random.default_rng(seed).permutation(len(keys))
    fold_of = {keys[i]: n % folds for n, i in enumerate(order)}
    out = []
    for k in range(folds):
        coef = fit_instructions([r for r in rows if fold_of[r["shape_key"]] != k])
        for r in rows:
            if fold_of[r["shape_key"]] == k:
                p = _predict_one(coef, r["layer"])
                if p is not None:
                    out.append({**r, "predicted": p, "error": p / r["instructions"] - 1})
    return out


def seed_split_errors(rows: list[dict]) -> list[dict]:
    """The suite's second seed (models ``*_b``) predicted from everything else."""
    test = [r for r in rows if r["model"].endswith("_b")]
    coef = fit_instructions([r for r in rows if not r["model"].endswith("_b")])
    out = []
    for r in test:
        p = _predict_one(coef, r["layer"])
        if p is not None:
            out.append({**r, "predicted": p, "error": p / r["instructions"] - 1})
    return out


def _summary(errors: list[dict], key=lambda e: e["layer"]["op"]) -> dict:
    per = defaultdict(list)
    for e in errors:
        per[key(e)].append(abs(e["error"]))
    return {k: (len(v), float(np.median(v)), float(np.max(v))) for k, v in sorted(per.items())}


def print_instruction_tables(rows: list[dict]) -> None:
    print("## Instructions per operator, on shapes left out of the fit\n")
    print("5-fold cross-validation over distinct operator shapes (every row predicted by a fit without its shape),")
    print("and the suite's second seed (`*_b` models) predicted from the rest. |error| of the instructions.\n")
    print("| core | check | rows | median | 90th pct | worst | MAC ops (conv/dw/fc): median | MAC ops: worst |")
    print("|---|---|---|---|---|---|---|---|")
    for core in ins.CORES:
        mine = [r for r in rows if r["core"] == core]
        for name, errs in (("5-fold", held_out_errors(mine)), ("seed b", seed_split_errors(mine))):
            a = np.abs([e["error"] for e in errs])
            mac = np.abs([e["error"] for e in errs if e["layer"]["kind"] in ("conv", "depthwise_conv",
                                                                                 "fully_connected")])
            print(f"| {core} | {name} | {len(a)} | {100 * np.median(a):.1f} % | {100 * np.percentile(a, 90):.1f} % | "
                  f"{100 * a.max():.1f} % | {100 * np.median(mac):.1f} % | {100 * mac.max():.1f} % |")
    print("\nBy operator, Cortex-M4, 5-fold (rows, median, worst):\n")
    print("| op | rows | median | worst |")
    print("|---|---|---|---|")
    m4 = held_out_errors([r for r in rows if r["core"] == "cortex-m4"])
    for op, (n, med, worst) in _summary(m4).items():
        print(f"| {op} | {n} | {100 * med:.1f} % | {100 * worst:.1f} % |")
    print()


# ----------------------------------------------------------------------------- 2. code size

def code_size(path: Path = SIZE_CSV) -> dict[str, dict[str, int]]:
    """Per core: component -> bytes of the release build."""
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for r in csv.DictReader(path.open()):
        if r["build_type"] == "release" and not r["component"].startswith("TOTAL"):
            out[r["core"]][r["component"]] = int(r["bytes"])
    return dict(out)


def images(path: Path = IMAGES_CSV) -> list[dict]:
    return [{**r, **{k: int(r[k]) for k in ("model_bytes", "arena_bytes", "flash_bytes", "ram_bytes")},
             "ops": r["ops"].split()} for r in csv.DictReader(path.open())]


def fit_firmware(sizes: dict, image: dict) -> dict:
    """The per-registered-op bytes beyond the kernels' own objects, and the RAM outside the arena,
    from one linked image."""
    from tinyprune.measure import firmware

    attributed = firmware.code_bytes(image["ops"], image["core"], sizes=sizes[image["core"]], per_op=0)
    registered = len(firmware.registered(image["ops"]))
    linked_code = image["flash_bytes"] - image["model_bytes"]
    everything = len(firmware.ALL_REGISTERED)
    # the calibration's build registers every op; a build with fewer links less than their sum
    per_op = (attributed["total"] - linked_code) / (everything - registered)
    return {"per_op_bytes": per_op, "ram_outside_arena": image["ram_bytes"] - image["arena_bytes"]}


def print_firmware_table(sizes: dict, fitted: dict, imgs: list[dict]) -> None:
    from tinyprune.measure import firmware

    print("## Firmware flash and RAM against linked images\n")
    print(f"Fitted on `{imgs[0]['model']}`: {fitted['per_op_bytes']:.0f} B less per op the build does not "
          f"register, {fitted['ram_outside_arena']:,} B of RAM outside the arena.\n")
    print("| image | core | role | linked flash | predicted | error | linked RAM | predicted | error |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i, img in enumerate(imgs):
        code = firmware.code_bytes(img["ops"], img["core"], sizes=sizes[img["core"]],
                                   per_op=fitted["per_op_bytes"])
        flash = img["model_bytes"] + code["total"]
        ram = img["arena_bytes"] + fitted["ram_outside_arena"]
        print(f"| {img['model']} | {img['core']} | {'fit' if i == 0 else 'check'} | {img['flash_bytes']:,} | "
              f"{flash:,.0f} | {100 * (flash / img['flash_bytes'] - 1):+.2f} % | {img['ram_bytes']:,} | {ram:,} | "
              f"{100 * (ram / img['ram_bytes'] - 1):+.2f} % |")
    print()


# ------------------------------------------------------------------------------ 3. cycles

def runtime_key(row: dict) -> str:
    version = row["runtime_version"].strip()
    while version.endswith(".0") and version.count(".") > 1:
        version = version[:-2]  # 9.0.0 and 9.0 are one release
    if row["runtime"].startswith("microtvm") and version:
        version = version[:7]  # a commit hash
    return f"{row['runtime']} {version}" if version else f"{row['runtime']} (unversioned, {row['release']})"


def anchor_rows(path: Path = ANCHORS_CSV) -> list[dict]:
    """One row per (board, runtime, benchmark): the fastest published latency, in cycles."""
    best: dict[tuple, dict] = {}
    for row in csv.DictReader(path.open()):
        if row["benchmark"] not in MODELS or not row["latency_ms"]:
            continue
        key = (row["board"], runtime_key(row), row["benchmark"])
        cycles = float(row["latency_ms"]) * 1e-3 * float(row["mhz"]) * 1e6
        if key not in best or cycles < best[key]["cycles"]:
            best[key] = {"board": row["board"], "core": CORE_NAMES[row["core"]], "mhz": float(row["mhz"]),
                         "runtime": key[1], "benchmark": row["benchmark"], "cycles": cycles,
                         "energy_uj": float(row["energy_uj"]) if row["energy_uj"] else None}
    return list(best.values())


def reference_instructions(cache: Path, coef_by_core: dict) -> dict[tuple[str, str], np.ndarray]:
    """(benchmark, core) -> predicted TFLM instructions per op group of the reference model."""
    from benchmarks.latency_anchors import build_tflite
    from tinyprune.measure.macs import tflite_layers

    out = {}
    for bench, name in MODELS.items():
        layers = tflite_layers(build_tflite(name, cache))
        for core in ins.CORES:
            per, _ = ins.predict_layers(layers, core, channels_last=True, coef=coef_by_core[core])
            g = np.zeros(len(GROUPS))
            for layer, n in zip(layers, per):
                g[GROUPS.index(ins.group(layer))] += n
            out[(bench, core)] = g
    return out


def _feat(feats: dict, bench: str, core: str) -> np.ndarray:
    # a core without calibration rows (Cortex-M0+) is priced on the Cortex-M4's instructions
    return feats[(bench, core if core in ins.CORES else "cortex-m4")]


def family(runtime: str) -> str:
    """The engine without its version: its versions share how much faster one core runs it."""
    return runtime.split(" ")[0]


def fit_cycles(rows: list[dict], feats: dict, iterations: int = 40) -> dict:
    """Per core: cycles per instruction relative to the Cortex-M4, fitted through the engines
    published on several cores (one factor per engine family where the family has such results,
    else the factor of all engines); per vendor runtime: cycles per M4 instruction of each op group.
    Cores no runtime links to the M4 take their NEAREST core's factor."""
    from scipy.optimize import nnls

    runtimes = sorted({r["runtime"] for r in rows})
    cores_of = defaultdict(set)
    for r in rows:
        cores_of[r["runtime"]].add(r["core"])
    linked = {"cortex-m4"} | {c for cs in cores_of.values() if len(cs) > 1 for c in cs}
    scale: dict = {}
    coef: dict[str, np.ndarray] = {}
    model = {"scale": scale, "linked": linked}
    for _ in range(iterations):
        for rt in runtimes:
            mine = [r for r in rows if r["runtime"] == rt]
            a = np.array([_feat(feats, r["benchmark"], r["core"]) * core_factor(model, r["core"], rt) for r in mine])
            b = np.array([r["cycles"] for r in mine])
            coef[rt] = nnls(a / b[:, None], np.ones(len(b)))[0]
        for core in linked - {"cortex-m4"}:
            multi = [r for r in rows if r["core"] == core and len(cores_of[r["runtime"]]) > 1]

            def ratio(rs):
                return float(np.exp(np.mean(np.log([r["cycles"] / max(float(_feat(feats, r["benchmark"], core)
                                                                            @ coef[r["runtime"]]), 1.0) for r in rs]))))
            scale[core] = ratio(multi)
            for fam in {family(r["runtime"]) for r in multi}:
                scale[(fam, core)] = ratio([r for r in multi if family(r["runtime"]) == fam])
    # the default runtime: one cycles-per-instruction factor (TFLM's own instructions), from the
    # TFLM + CMSIS-NN board, on that board's core
    anchor = [r for r in rows if r["runtime"] == TFLM_ANCHOR]
    cpi = [r["cycles"] / float(_feat(feats, r["benchmark"], r["core"]).sum()) for r in anchor]
    return {**model, "coef": coef, "cores_of": dict(cores_of), "tflm_cpi": float(np.exp(np.mean(np.log(cpi)))),
            "tflm_core": anchor[0]["core"], "tflm_cpis": cpi}


def core_factor(model: dict, core: str, runtime: str) -> float:
    while core not in model["linked"] and core in NEAREST:
        core = NEAREST[core]
    if core == "cortex-m4" or core not in model["linked"]:
        return 1.0
    return model["scale"].get((family(runtime), core), model["scale"].get(core, 1.0))


def _pooled(model: dict) -> dict:
    return {k: v for k, v in model["scale"].items() if isinstance(k, str)}


def _by_family(model: dict) -> dict:
    return {k: v for k, v in model["scale"].items() if isinstance(k, tuple)}


def predict_cycles(model: dict, feats: dict, bench: str, runtime: str, core: str) -> float:
    f = _feat(feats, bench, core)
    if runtime == TFLM:
        rel = core_factor(model, core, runtime) / core_factor(model, model["tflm_core"], runtime)
        return model["tflm_cpi"] * rel * float(f.sum())
    return core_factor(model, core, runtime) * float(f @ model["coef"][runtime])


def leave_one_board_out(rows: list[dict], feats: dict) -> list[dict]:
    boards = defaultdict(set)
    for r in rows:
        boards[r["runtime"]].add(r["board"])
    out = []
    for rt, bs in sorted(boards.items()):
        if len(bs) < 2:
            continue
        for board in sorted(bs):
            train = [r for r in rows if not (r["runtime"] == rt and r["board"] == board)]
            model = fit_cycles(train, feats)
            for r in rows:
                if r["runtime"] == rt and r["board"] == board:
                    p = predict_cycles(model, feats, r["benchmark"], rt, r["core"])
                    out.append({**r, "predicted": p, "error": p / r["cycles"] - 1})
    return out


def band_and_coverage(loo: list[dict]) -> tuple[float, dict[str, tuple[int, int]]]:
    """The COVERAGE quantile of |error| over every held-out prediction, and per runtime how many of
    its held-out predictions fall inside the band computed from the other runtimes alone."""
    errs = np.abs([e["error"] for e in loo])
    band = float(np.quantile(errs, COVERAGE))
    cover = {}
    for rt in sorted({e["runtime"] for e in loo}):
        others = np.abs([e["error"] for e in loo if e["runtime"] != rt])
        b = float(np.quantile(others, COVERAGE))
        mine = [abs(e["error"]) for e in loo if e["runtime"] == rt]
        cover[rt] = (sum(m <= b for m in mine), len(mine))
    return band, cover


def energy_per_cycle(rows: list[dict]) -> dict[str, dict]:
    """Per core: the median whole-board pJ per cycle of its MLPerf Tiny board, and the spread."""
    out = {}
    for core in sorted({r["core"] for r in rows}):
        pj = [r["energy_uj"] * 1e6 / r["cycles"] for r in rows if r["core"] == core and r["energy_uj"]]
        if pj:
            board = next(r["board"] for r in rows if r["core"] == core)
            out[core] = {"pj_per_cycle": float(np.median(pj)), "low": float(np.quantile(pj, 0.1)),
                         "high": float(np.quantile(pj, 0.9)), "results": len(pj), "board": board}
    return out


def print_cycle_tables(feats, model, loo, band, cover, measured_models) -> None:
    print("## Latency on MLPerf Tiny boards left out of the fit\n")
    print("Reference models' TFLM instructions (predicted by the per-operator model), against the whole-model")
    print("counts measured in the calibration where it has the model:\n")
    print("| model | core | predicted instructions | measured | error |")
    print("|---|---|---|---|---|")
    for (bench, core), measured in sorted(measured_models.items()):
        p = float(feats[(bench, core)].sum())
        print(f"| {bench} | {core} | {p:,.0f} | {measured:,} | {100 * (p / measured - 1):+.1f} % |")
    print(f"\nDefault runtime `{TFLM}` (TFLM + CMSIS-NN as calibrated): {model['tflm_cpi']:.3f} cycles per instruction "
          f"on {model['tflm_core']}, from {TFLM_ANCHOR} on EK-RA6M4 (per benchmark: "
          + ", ".join(f"{c:.2f}" for c in model["tflm_cpis"]) + ").")
    print("Core factors (cycles per instruction relative to Cortex-M4): " + "; ".join(
        f"{c} {v:.3f}" for c, v in sorted(_pooled(model).items())) + "; by engine: " + "; ".join(
        f"{f} on {c} {v:.3f}" for (f, c), v in sorted(_by_family(model).items())) + "; "
        + "; ".join(f"{c} = {n} (no board links it)" for c, n in NEAREST.items()) + "\n")
    print("| runtime | held-out board | benchmark | published ms | predicted ms | error |")
    print("|---|---|---|---|---|---|")
    for e in loo:
        print(f"| {e['runtime']} | {e['board']} | {e['benchmark']} | {e['cycles'] / e['mhz'] / 1e3:.2f} | "
              f"{e['predicted'] / e['mhz'] / 1e3:.2f} | {100 * e['error']:+.1f} % |")
    print(f"\nBand: {100 * band:.1f} % = the {int(100 * COVERAGE)} % quantile of |error| over the held-out predictions. "
          "Coverage: per runtime, its held-out predictions inside the band computed without it.\n")
    print("| runtime | boards | held-out | median abs error | worst | goal (<= 10 % / <= 25 %) | inside the band |")
    print("|---|---|---|---|---|---|---|")
    per = defaultdict(list)
    for e in loo:
        per[e["runtime"]].append(abs(e["error"]))
    for rt, errs in sorted(per.items()):
        n_in, n = cover[rt]
        ok = np.median(errs) <= 0.10 and max(errs) <= 0.25
        print(f"| {rt} | {len(model['cores_of'].get(rt, ()))} | {len(errs)} | {100 * np.median(errs):.1f} % | "
              f"{100 * max(errs):.1f} % | {'met' if ok else 'missed'} | {n_in} of {n} |")
    total_in = sum(v[0] for v in cover.values())
    total = sum(v[1] for v in cover.values())
    print(f"\nAll held-out predictions inside their band: {total_in} of {total} ({100 * total_in / total:.0f} %, "
          f"stated coverage {int(100 * COVERAGE)} %).\n")


# ---------------------------------------------------------------------------------- output

def _toml_list(values) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in values) + "]"


def write_toml(coef_by_core, sizes, fitted, model, band, energy, path: Path = OUT) -> None:
    lines = ["# Generated by `python -m benchmarks.fit_device --write`; do not edit. See tinyprune/measure/deployed.py.",
             "# Sources: benchmarks/data/tflm_cmsis_nn_ops.csv, tflm_cmsis_nn_code_size.csv, firmware_images.csv,",
             "# mlperf_tiny_anchors.csv.", "",
             "[calibration]",
             'tflm = "tflite-micro 90b983c (2026-08-20), CMSIS-NN 4ab83cc3, arm-none-eabi-gcc 12.2.1, release build"',
             'label = "TFLM 90b983c + CMSIS-NN 4ab83cc3"',
             f"coverage = {COVERAGE}  # the bands below are {int(100 * COVERAGE)} % intervals", "",
             "[firmware]",
             f"per_unregistered_op_bytes = {fitted['per_op_bytes']:.1f}  # code the all-op build links per op beyond "
             "its kernel's objects",
             f"ram_outside_arena_bytes = {fitted['ram_outside_arena']}  # stack, TFLM and libc static data "
             "(reference firmware)", ""]
    for core in sorted(sizes):
        lines.append(f'[code_size."{core}"]')
        lines += [f'"{k}" = {v}' for k, v in sorted(sizes[core].items())]
        lines.append("")
    for core in ins.CORES:
        lines.append(f'[instructions."{core}"]')
        lines += [f"{p} = {_toml_list(c)}" for p, c in sorted(coef_by_core[core].items())]
        lines.append("")
    lines.append("[cycles]")
    lines.append(f'tflm_cpi = {model["tflm_cpi"]:.6g}  # cycles per TFLM instruction on {model["tflm_core"]} '
                 f'({TFLM_ANCHOR}, EK-RA6M4)')
    lines.append(f'tflm_core = "{model["tflm_core"]}"')
    lines.append(f"band = {band:.4f}  # {int(100 * COVERAGE)} % quantile of |error| leaving one board out")
    lines.append("")
    lines.append("[cycles.core_factor]  # cycles per instruction relative to Cortex-M4, from engines on several cores")
    lines += [f'"{c}" = {v:.6g}' for c, v in sorted(_pooled(model).items())]
    lines.append("")
    lines.append("[cycles.family_core_factor]  # the same, from one engine's versions, where they ran on several cores")
    fams = defaultdict(dict)
    for (f, c), v in _by_family(model).items():
        fams[f][c] = v
    lines += [f'"{f}" = {{ ' + ", ".join(f'"{c}" = {v:.6g}' for c, v in sorted(cs.items())) + " }"
              for f, cs in sorted(fams.items())]
    lines.append("")
    lines.append("[cycles.nearest]  # cores no board links: the nearest core's factor, a wider band")
    lines += [f'"{c}" = "{n}"' for c, n in NEAREST.items()]
    lines.append("")
    lines.append("[energy]  # whole-board pJ per cycle of the core's MLPerf Tiny board (median; low/high: 10-90 %)")
    for core, e in energy.items():
        lines.append(f'"{core}" = {{ pj_per_cycle = {e["pj_per_cycle"]:.1f}, low = {e["low"]:.1f}, '
                     f'high = {e["high"]:.1f}, results = {e["results"]}, board = "{e["board"]}" }}')
    lines.append("")
    for rt in sorted(model["coef"]):
        cores = sorted(model["cores_of"][rt])
        lines += [f'[runtime."{rt}"]', f"coefficients = {_toml_list(model['coef'][rt])}  # conv, dw, fc, other",
                  "cores = [" + ", ".join(f'"{c}"' for c in cores) + "]", ""]
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path("tinyprune-out/anchors"))
    ap.add_argument("--write", action="store_true", help="regenerate targets/device_model.toml")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args.cache.mkdir(parents=True, exist_ok=True)

    rows = ops_rows()
    coef_by_core = {core: fit_instructions([r for r in rows if r["core"] == core]) for core in ins.CORES}
    print_instruction_tables(rows)

    sizes = code_size()
    imgs = images()
    fitted = fit_firmware(sizes, imgs[0])
    print_firmware_table(sizes, fitted, imgs)

    anchors = anchor_rows()
    feats = reference_instructions(args.cache, coef_by_core)
    model = fit_cycles(anchors, feats)
    loo = leave_one_board_out(anchors, feats)
    band, cover = band_and_coverage(loo)
    measured = defaultdict(int)
    for r in rows:
        bench = {"kws_ref_model": "kws", "ad01_int8": "ad"}.get(r["model"])
        if bench:
            measured[(bench, r["core"])] += r["instructions"]
    print_cycle_tables(feats, model, loo, band, cover, dict(measured))
    if args.write:
        write_toml(coef_by_core, sizes, fitted, model, band, energy_per_cycle(anchors))
        print(f"wrote {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
