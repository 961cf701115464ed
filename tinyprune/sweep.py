"""``tinyprune sweep``: a grid of ``compress`` runs as Ray tasks, local by default, a cluster when given.

Each cell is one ``compress`` with the grid's settings (criterion, sparsity, LUT bits, target,
fine-tune epochs, runtime) and the sweep's own flags for the rest. The model file, the data and
the per-model analysis (the MI scores and the flow criterion's covariances of the unpruned model,
measured once here) go into Ray's object store once; every cell reads them from there. Rows
stream into ``sweep.csv`` / ``sweep.json`` as cells finish, and ``sweep.html`` shows the Pareto
fronts (accuracy vs flash, vs predicted latency). Each cell keeps its whole output folder under
``cells/``; a finished cell (its ``report.json`` there) is not run again, so running the same
sweep with the same ``--out`` after a kill resumes it. A cell that fails is a row with its error
and exit code; the sweep goes on and exits 1 at the end. A worker lost mid-cell is retried once.

Cells run one thread each (``torch.set_num_threads(1)``): a cell's numbers equal a ``compress``
run alone with the same seed and one thread.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import socket
import tempfile
import time
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from tinyprune.errors import ConfigError, InputError, TinypruneError

GRID_KEYS = ("criterion", "sparsity", "bits", "target", "finetune_epochs", "runtime")
MAX_CELLS = 10_000  # a bigger grid needs --yes
CONNECT_TIMEOUT_S = 10.0
# Ray waits 30 s for its GCS to bind its port and 30 s (fixed in its code) for the raylet to
# register; the first start on a fresh machine, everything loaded cold from disk, took longer
# (issue 30: "timed out during startup", exit 70, and the same command passed again). The wait Ray
# lets us set is raised, and a start that still times out is tried once more.
RAY_START_WAIT_S = 120
RAY_START_TRIES = 2
COLUMNS = ["cell", "status", "exit_code", "error", "criterion", "sparsity", "bits", "target", "finetune_epochs",
           "runtime", "macs_removed", "original_accuracy", "deployed_accuracy", "accuracy_drop_points",
           "deployed_artifact", "flash_bytes", "arena_bytes", "firmware_flash_bytes", "ram_bytes", "predicted_ms",
           "predicted_uj", "fits_flash", "fits_ram", "seconds", "node", "out"]


@dataclass(frozen=True)
class Cell:
    criterion: str
    sparsity: float
    bits: int | None
    target: str
    finetune_epochs: int | None
    runtime: str | None

    @property
    def id(self) -> str:
        parts = [self.criterion, f"s{self.sparsity!r}", f"b{self.bits}" if self.bits else "b-", self.target]
        if self.finetune_epochs is not None:
            parts.append(f"e{self.finetune_epochs}")
        if self.runtime:
            parts.append(self.runtime.replace(" ", "_"))
        return "_".join(p.replace("/", "-") for p in parts)


@dataclass
class SweepResult:
    rows: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "failed"]


# ---------------------------------------------------------------------------------------- grid

def _values(key: str, text: str | list) -> list:
    """A grid axis: "v1,v2" from the command line, or a TOML list (whose items may hold commas)."""
    raw = text if isinstance(text, list) else str(text).split(",")
    items = list(dict.fromkeys(str(v).strip() for v in raw if str(v).strip()))  # each value once
    if not items:
        raise ConfigError(f"--grid {key}= has no values; give a comma-separated list, e.g. {key}=a,b")
    try:
        if key == "sparsity":
            return list(dict.fromkeys(float(v) for v in items))
        if key in ("bits", "finetune_epochs"):
            return list(dict.fromkeys(int(v) for v in items))
    except ValueError:
        raise ConfigError(f"--grid {key}: {text!r} is not a list of {'numbers' if key == 'sparsity' else 'integers'}") \
            from None
    return items


def parse_grid(specs: list[str] | None, config: Path | None = None) -> dict[str, list]:
    """``key=v1,v2`` items (and/or a sweep.toml with ``[grid]``) -> {key: values}."""
    grid: dict[str, list] = {}
    if config is not None:
        if not config.is_file():
            raise ConfigError(f"sweep config {config} not found")
        try:
            table = tomllib.loads(config.read_text()).get("grid")
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config.name} is not valid TOML: {str(exc).splitlines()[0]}") from None
        if not isinstance(table, dict):
            raise ConfigError(f"{config.name} needs a [grid] table, e.g. criterion = [\"l1\", \"flow\"]")
        for key, values in table.items():
            grid[key.replace("-", "_")] = _values(key, values if isinstance(values, list) else [values])
    for spec in specs or []:
        key, sep, text = spec.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ConfigError(f"--grid item {spec!r} is not key=v1,v2; keys: {', '.join(GRID_KEYS)}")
        grid[key] = _values(key, text)
    unknown = sorted(set(grid) - set(GRID_KEYS))
    if unknown:
        raise ConfigError(f"unknown grid key {unknown[0]!r}; known keys: {', '.join(GRID_KEYS)}")
    if not grid:
        raise ConfigError(f"an empty grid; give --grid key=v1,v2 ... (keys: {', '.join(GRID_KEYS)}) or --config sweep.toml")
    return grid


def cells(grid: dict[str, list], defaults: dict, yes: bool = False) -> list[Cell]:
    """Every combination, each checked (criterion, sparsity, target, runtime) before any runs."""
    from tinyprune import targets
    from tinyprune.config import PruneConfig
    from tinyprune.deepcompress.deploy import SharingConfig

    axes = {k: grid.get(k, [defaults.get(k)]) for k in GRID_KEYS}
    count = 1
    for values in axes.values():
        count *= len(values)
    if count > MAX_CELLS and not yes:
        raise ConfigError(f"the grid has {count:,} cells (over {MAX_CELLS:,}); pass --yes to run it")
    for criterion in axes["criterion"]:
        for s in axes["sparsity"]:
            PruneConfig(criterion=criterion, sparsity=s)  # one line naming the problem
    for b in axes["bits"]:
        if b is not None:
            SharingConfig(min_bits=b)
    for e in axes["finetune_epochs"]:
        if e is not None and e < 0:
            raise ConfigError(f"--grid finetune_epochs must be >= 0, got {e}")
    for t in axes["target"]:
        for r in axes["runtime"]:
            targets.configure(targets.load(t), r)
    return [Cell(*combo) for combo in itertools.product(*(axes[k] for k in GRID_KEYS))]


# ---------------------------------------------------------------------------------------- one cell

def cell_config(cell: Cell, base):
    """The CompressConfig of one cell: the sweep's own (``base``) with the cell's settings."""
    from tinyprune.deepcompress.deploy import SharingConfig

    # the sweep's own criterion options apply to that criterion; another one runs with its defaults
    options = base.prune.options if cell.criterion == base.prune.criterion else None
    cfg = replace(base, target=cell.target, prune=replace(base.prune, criterion=cell.criterion, sparsity=cell.sparsity,
                                                          options=options), runtime=cell.runtime)
    if cell.finetune_epochs is not None:
        cfg = replace(cfg, finetune=replace(cfg.finetune, epochs=cell.finetune_epochs))
    if cell.bits is not None and cfg.sharing is not None:
        cfg = replace(cfg, sharing=SharingConfig(min_bits=cell.bits))
    return cfg


def row_of(cell: Cell, report: dict, seconds: float, out: Path, node: str = "") -> dict:
    stages = {s["name"]: s for s in report["stages"]}
    dep = report["deployed"]
    from tinyprune.measure.deployed import of

    costs = of(stages[dep["stage"]]["details"].get("measure"))
    fits = report.get("fits_target") or {}
    return {"cell": cell.id, "status": "done", "exit_code": 0, "error": "", **_settings(cell),
            "macs_removed": 1 - stages["finetuned"]["macs"] / stages["original"]["macs"],
            "original_accuracy": stages["original"]["accuracy"], "deployed_accuracy": dep["accuracy"],
            "accuracy_drop_points": dep["accuracy_drop_points"], "deployed_artifact": dep["artifact"],
            "flash_bytes": dep["flash_bytes"], "arena_bytes": dep["arena_bytes"],
            "firmware_flash_bytes": costs.flash_bytes if costs else None, "ram_bytes": costs.ram_bytes if costs else None,
            "predicted_ms": costs.ms.value if costs else None,
            "predicted_uj": costs.energy_uj.value if costs else None,
            "fits_flash": fits.get("flash"), "fits_ram": fits.get("ram"), "seconds": seconds, "node": node,
            "out": str(out)}


def _settings(cell: Cell) -> dict:
    return {"criterion": cell.criterion, "sparsity": cell.sparsity, "bits": cell.bits, "target": cell.target,
            "finetune_epochs": cell.finetune_epochs, "runtime": cell.runtime}


def run_cell(cell: Cell, base, model_bytes: bytes, model_name: str, data_bytes: bytes | None, arch: str | None,
             trust_code: bool, analysis: dict, out: Path) -> dict:
    """One compress, in whichever process Ray gives it. Errors become rows (status failed)."""
    import torch

    from tinyprune import api

    torch.set_num_threads(1)
    node = ""
    try:
        import ray

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except ImportError:
        pass
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tinyprune-cell-") as tmp:
        model_path = Path(tmp) / model_name
        model_path.write_bytes(model_bytes)
        data_path = None
        if data_bytes is not None:
            data_path = Path(tmp) / "data.npz"
            data_path.write_bytes(data_bytes)
        cache = Path(tmp) / "cache"
        cache.mkdir()
        for name, blob in analysis.items():  # the per-model analysis, measured once by the driver
            (cache / name).write_bytes(blob)
        cfg = replace(cell_config(cell, base), cache_dir=str(cache))
        try:
            report = api.compress(api.ModelSource(model_path, arch=arch, trust_code=trust_code), cfg,
                                  data_path=data_path, out_dir=out, builtin_data=data_path is None).to_dict()
        except TinypruneError as exc:
            return {"cell": cell.id, "status": "failed", "exit_code": exc.exit_code, "error": str(exc).splitlines()[0],
                    **_settings(cell), "seconds": time.perf_counter() - t, "node": node, "out": str(out)}
        except Exception as exc:  # a bug in one cell must not stop the others
            return {"cell": cell.id, "status": "failed", "exit_code": 70,
                    "error": f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                    **_settings(cell), "seconds": time.perf_counter() - t, "node": node, "out": str(out)}
    return row_of(cell, report, time.perf_counter() - t, out, node)


# ---------------------------------------------------------------------------------------- analysis

def shared_analysis(model_path: Path, base, data_path: Path | None, arch, trust_code) -> dict[str, bytes]:
    """The unpruned model's analyses (what every cell's criterion and report measure first), as
    the cache files a cell's ``--cache-dir`` holds; computed once here, shipped to every cell."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the cells run on one thread: the same reductions, the same bits
    try:
        return _analysis_files(model_path, base, data_path, arch, trust_code)
    finally:
        torch.set_num_threads(threads)


def _analysis_files(model_path: Path, base, data_path: Path | None, arch, trust_code) -> dict[str, bytes]:
    from tinyprune import api
    from tinyprune.prune.flow import _input_stats
    from tinyprune.prune.mi import model_channel_mi

    with tempfile.TemporaryDirectory(prefix="tinyprune-analysis-") as tmp:
        _, model, splits = api._load_stage(api.ModelSource(model_path, arch=arch, trust_code=trust_code), base,
                                           data_path, data_path is None)
        x, y = api.analysis_set(splits)
        if splits.task.kind == "classify":
            model_channel_mi(model, x, y, cache_dir=tmp)
        _input_stats(model.eval(), x, tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).glob("*.npz")}


# ---------------------------------------------------------------------------------------- output

def write_tables(rows: list[dict], out: Path) -> None:
    rows = sorted(rows, key=lambda r: r["cell"])
    tmp = out / ".sweep.csv.tmp"
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in COLUMNS})
    os.replace(tmp, out / "sweep.csv")
    (out / ".sweep.json.tmp").write_text(json.dumps(rows, indent=1) + "\n")
    os.replace(out / ".sweep.json.tmp", out / "sweep.json")


def pareto(rows: list[dict], x: str) -> list[dict]:
    done = [r for r in rows if r["status"] == "done" and r.get(x) is not None]
    return sorted((r for r in done if not any(o[x] <= r[x] and o["deployed_accuracy"] > r["deployed_accuracy"]
                                                for o in done)), key=lambda r: r[x])


def write_html(rows: list[dict], out: Path) -> None:
    import base64
    import html
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "done"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "firmware_flash_bytes", "firmware flash (KiB)"),
                           (axes[1], "predicted_ms", "predicted latency (ms)")):
        scale = 1024 if key == "firmware_flash_bytes" else 1
        for crit in sorted({r["criterion"] for r in done}):
            pts = [r for r in done if r["criterion"] == crit and r.get(key) is not None]
            ax.scatter([r[key] / scale for r in pts], [100 * r["deployed_accuracy"] for r in pts], label=crit, s=22)
        front = pareto(rows, key)
        ax.plot([r[key] / scale for r in front], [100 * r["deployed_accuracy"] for r in front], "-", color="#999")
        ax.set_xlabel(label)
        ax.set_ylabel("held-out score on the device (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    png = base64.b64encode(buf.getvalue()).decode()
    head = ["cell", "status", "macs_removed", "deployed_accuracy", "firmware_flash_bytes", "ram_bytes", "predicted_ms",
            "error"]
    front = {r["cell"] for r in pareto(rows, "firmware_flash_bytes")}

    def cell_text(r, k):
        v = r.get(k)
        if isinstance(v, float):
            return f"{100 * v:.2f} %" if k in ("macs_removed", "deployed_accuracy") else f"{v:.3g}"
        return "" if v is None else str(v)

    body = "".join("<tr" + (" class='front'" if r["cell"] in front else "") + ">"
                   + "".join(f"<td>{html.escape(cell_text(r, k))}</td>" for k in head) + "</tr>"
                   for r in sorted(rows, key=lambda r: r["cell"]))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>tinyprune sweep</title><style>"
            "body{font-family:sans-serif;margin:2em} td,th{padding:2px 8px;border-bottom:1px solid #ddd;font-size:13px}"
            " tr.front{background:#eef6ee}</style></head><body>"
            f"<h1>tinyprune sweep: {len(done)} of {len(rows)} cells done</h1>"
            f"<p>Pareto fronts over the finished cells (grey line); green rows are on the flash front.</p>"
            f"<img alt='accuracy vs flash and vs predicted latency' src='data:image/png;base64,{png}'>"
            "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + body + "</table></body></html>")
    tmp = out / ".sweep.html.tmp"
    tmp.write_text(page)
    os.replace(tmp, out / "sweep.html")


# ---------------------------------------------------------------------------------------- driver

def _reachable(address: str) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address!r} is not host:port (the head node's `ray start --head --port`)")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ConfigError(f"--address {address}: no Ray head node answers there ({exc.strerror or exc}); "
                          "start one with `ray start --head --port=PORT`") from None


class RayStartError(InputError):
    """Ray's own processes did not start on this machine (exit 2: nothing of the sweep ran)."""


def _timed_out(exc: BaseException) -> bool:
    # Ray reports a slow start as a bare Exception, a TimeoutError or a RuntimeError, by its words
    text = str(exc).lower()
    return isinstance(exc, TimeoutError) or "timed out" in text or "timeout" in text


def start_ray(ray, init: dict) -> None:
    """``ray.init(**init)`` with the longer wait and one more try for a start that times out; then
    one line (exit 2) naming what to try. Any other failure of ``ray.init`` is raised as it is."""
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(RAY_START_WAIT_S))
    for attempt in range(1, RAY_START_TRIES + 1):
        try:
            ray.init(**init, include_dashboard=False, log_to_driver=False, configure_logging=False)
            return
        except Exception as exc:
            if not _timed_out(exc):
                raise
            ray.shutdown()  # what the failed start left running goes before the next try
            if attempt == RAY_START_TRIES:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise RayStartError(f"Ray did not start on this machine ({RAY_START_TRIES} tries, the GCS given "
                                    f"{RAY_START_WAIT_S} s): {first}; run the sweep again, or start Ray first with "
                                    "`ray start --head --port=6379` and pass --address 127.0.0.1:6379") from None


def run_key(cell: Cell, base, model_path: Path, data_path: Path | None, arch, trust_code) -> str:
    """What a finished cell was computed from: the model and data bytes, every setting. A cell
    folder whose key differs (another model, seed or flag) is run again, not reused."""
    import hashlib

    h = hashlib.sha256(model_path.read_bytes())
    h.update(data_path.read_bytes() if data_path is not None else b"builtin digits")
    h.update(json.dumps([cell_config(cell, base).to_dict(), arch, trust_code], sort_keys=True, default=str).encode())
    return h.hexdigest()


def _finished(out: Path, key: str) -> dict | None:
    report = out / "report.json"
    stamp = out.with_name(out.name + ".key")
    if not report.is_file() or not stamp.is_file() or stamp.read_text().strip() != key:
        return None
    try:
        return json.loads(report.read_text())
    except (OSError, ValueError):
        return None


def run(model_path: Path, base, grid_cells: list[Cell], out: Path, data_path: Path | None = None,
        arch: str | None = None, trust_code: bool = False, address: str | None = None, workers: int | None = None,
        progress=None) -> SweepResult:
    """Run every cell not finished yet under ``out``; returns every row (finished ones included)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("tinyprune sweep needs Ray: pip install 'tinyprune[sweep]'") from None
    if address:
        _reachable(address)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cells").mkdir(exist_ok=True)
    rows: dict[str, dict] = {}
    todo, keys = [], {}
    for cell in grid_cells:
        keys[cell.id] = run_key(cell, base, model_path, data_path, arch, trust_code)
        report = _finished(out / "cells" / cell.id, keys[cell.id])
        if report is not None:
            rows[cell.id] = {**row_of(cell, report, 0.0, out / "cells" / cell.id), "status": "done"}
        else:
            shutil.rmtree(out / "cells" / cell.id, ignore_errors=True)  # cut short, or from other settings
            todo.append(cell)
    write_tables(list(rows.values()), out)
    if not todo:
        write_html(list(rows.values()), out)
        return SweepResult(sorted(rows.values(), key=lambda r: r["cell"]))
    started_here = not ray.is_initialized()
    if started_here:  # before the analysis: a Ray that cannot start fails the sweep before the slow work
        # address "local": a Ray of our own, even when a cluster started with `ray start` runs here
        init = {"address": address} if address else {"address": "local", "num_cpus": workers or os.cpu_count() or 1}
        start_ray(ray, init)
    try:
        analysis = shared_analysis(model_path, base, data_path, arch, trust_code)
        model_ref = ray.put(model_path.read_bytes())
        data_ref = ray.put(data_path.read_bytes() if data_path is not None else None)
        analysis_ref = ray.put(analysis)
        task = ray.remote(num_cpus=1, max_retries=1)(run_cell)  # one retry: a worker lost mid-cell
        pending = {task.remote(c, base, model_ref, model_path.name, data_ref, arch, trust_code, analysis_ref,
                               (out / "cells" / c.id).resolve()): c for c in todo}
        total, failed = len(grid_cells), 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                cell = pending.pop(ref)
                try:
                    row = ray.get(ref)
                except Exception as exc:  # the worker died twice
                    row = {"cell": cell.id, "status": "failed", "exit_code": 70, **_settings(cell),
                           "error": f"worker lost: {type(exc).__name__}"}
                rows[cell.id] = row
                if row["status"] == "done":  # this folder holds this cell's result: resumable
                    (out / "cells" / f"{cell.id}.key").write_text(keys[cell.id] + "\n")
                failed += row["status"] == "failed"
                write_tables(list(rows.values()), out)
                if progress:
                    progress(len(rows), total, len(pending), failed)
    finally:
        if started_here:
            ray.shutdown()
    result = SweepResult(sorted(rows.values(), key=lambda r: r["cell"]))
    write_html(result.rows, out)
    return result
