"""``tinyprune check``: size, RAM, MAC, latency, energy and accuracy budgets for CI.

Budgets live in ``tinyprune.toml`` (or ``[tool.tinyprune]`` in ``pyproject.toml``; ``--budget
FILE`` names another file), one ``[[model]]`` table per model::

    [[model]]
    path = "build/model_int8.tflite"   # relative to the budget file
    target = "cortex-m4"
    max_flash = "256KiB"     # flatbuffer (the whole firmware: + runtime code, if include_runtime = true)
    max_ram = "64KiB"        # measured TFLM arena (the whole firmware's RAM, if include_runtime = true)
    max_macs = 5_000_000
    max_latency_ms = 100     # predicted on the target: the deployed costs, as the compress report shows
    max_energy_uj = 50       # predicted cycles x the board's pJ per cycle
    # runtime = "x-cube-ai"  # the engine the latency is predicted for (default tflm; any case, any version)
    min_accuracy = 0.90      # .tflite evaluated in TFLM (LiteRT cross-check) on `data`
    data = "data/test.npz"   # x (NCHW or NHWC) and y, or x_test / y_test
    # regression / autoencoder models (the task follows the data, see tinyprune.task):
    # max_mse = 0.05         # mean squared error in TFLM (regress, reconstruct)
    # min_auc = 0.85         # ROC AUC of the reconstruction error (data with anomaly labels)
    # min_quality = 0.8      # the task's score: accuracy, R², ROC AUC or explained variance
    include_runtime = false
    input_shape = [1, 28, 28]  # PyTorch / ONNX models only: one sample's shape

Sizes are integers (bytes) or strings with a unit: B, kB/KB, MB, GB (powers of 1000) or
KiB, MiB, GiB (powers of 1024), e.g. "256KiB", "1MB", "1.5 MiB".
"""

from __future__ import annotations

import math
import re
import time
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tinyprune.errors import ConfigError, DataError

KEYS = {"path", "name", "target", "max_flash", "max_ram", "max_macs", "max_latency_ms", "max_energy_uj",
        "min_accuracy", "min_quality", "max_mse", "min_auc", "data", "include_runtime", "kernels", "input_shape",
        "runtime", "clock_mhz"}
# budgets measured by running the model in TFLM on `data`, and the task metric each one reads
QUALITY = {"min_accuracy": "accuracy", "min_quality": "score", "max_mse": "mse", "min_auc": "auc"}
BUDGETS = ("max_flash", "max_ram", "max_macs", "max_latency_ms", "max_energy_uj", *QUALITY)
_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3}


def parse_size(value, key: str = "size") -> int:
    """Bytes from an int or a string such as "256KiB", "1MB", "1.5 MiB", "4096"."""
    if isinstance(value, bool):
        raise ConfigError(f"'{key}' must be a size such as \"256KiB\", got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"'{key}' must be a size >= 0, got {value}")
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9][0-9_]*(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        if m:
            unit = m.group(2).lower()
            if unit in _UNITS:
                return int(round(float(m.group(1).replace("_", "")) * _UNITS[unit]))
    raise ConfigError(f"'{key}' must be a size such as \"256KiB\", \"1MB\" or 4096, got {value!r}")


def format_size(n: int | float | None) -> str:
    if n is None:
        return "n/a"
    if n >= 1024 * 1024:
        return f"{n / 1024 / 1024:.2f} MiB"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{int(n)} B"


@dataclass(frozen=True)
class ModelBudget:
    path: Path
    target: str
    limits: dict  # budget key -> limit (bytes for sizes)
    data: Path | None
    include_runtime: bool
    kernels: str
    input_shape: tuple[int, ...] | None
    name: str
    line: int | None = None  # line of the table's `path` in the budget file (for CI annotations)
    device: object = None  # the Target, at clock_mhz, predicting latency for runtime when given
    key_lines: dict = field(default_factory=dict)  # budget key -> its line, so an annotation points at it


@dataclass
class Outcome:
    model: str
    metric: str
    value: float | None
    limit: float | None
    ok: bool
    text: str  # "300.0 KiB > 256.0 KiB"
    detail: str = ""
    # time spent producing the value: a model's measurement is charged to its first budget and its
    # TFLM evaluation to its first quality budget; the others reuse them (0 s), so times add up
    seconds: float = 0.0


@dataclass
class CheckResult:
    config: Path
    outcomes: list = field(default_factory=list)
    unsupported: dict = field(default_factory=dict)  # model -> [ops]
    op_seconds: dict = field(default_factory=dict)  # model -> measuring time when it has no budget outcome
    measurements: dict = field(default_factory=dict)
    lines: dict = field(default_factory=dict)  # model -> {"path": line, budget key: line} in the budget file

    @property
    def exceeded(self) -> list:
        return [o for o in self.outcomes if not o.ok]

    @property
    def ok(self) -> bool:
        return not self.exceeded and not any(self.unsupported.values())

    def to_dict(self) -> dict:
        return {
            "config": str(self.config),
            "ok": self.ok,
            "results": [o.__dict__ for o in self.outcomes],
            "unsupported_ops": self.unsupported,
        }


# ------------------------------------------------------------------------------------- config

def find_config(budget: Path | None, cwd: Path) -> tuple[Path, list[dict]]:
    """(file, raw [[model]] tables) from --budget, ./tinyprune.toml or ./pyproject.toml."""
    if budget is not None:
        if not budget.is_file():
            raise ConfigError(f"budget file not found: {budget}")
        candidates = [budget]
    else:
        candidates = [p for p in (cwd / "tinyprune.toml", cwd / "pyproject.toml") if p.is_file()]
    for path in candidates:
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path.name} is not valid TOML: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path.name} is not a text file") from None
        tool = raw.get("tool")
        if "model" in raw:
            section = raw
        elif isinstance(tool, dict) and isinstance(tool.get("tinyprune"), dict):
            section = tool["tinyprune"]
        elif budget is not None:
            raise ConfigError(f"{path.name} has no [[model]] tables (nor [tool.tinyprune])")
        else:
            continue
        models = section.get("model")
        if not isinstance(models, list) or not models or not all(isinstance(m, dict) for m in models):
            raise ConfigError(f"{path.name}: expected one or more [[model]] tables"
                              f"{' under [tool.tinyprune]' if path.name == 'pyproject.toml' else ''}")
        return path, models
    raise ConfigError("no budgets: create tinyprune.toml with [[model]] tables, add [tool.tinyprune] to "
                      "pyproject.toml, or pass --budget FILE")


def _number(table: dict, key: str, where: str, positive: bool = True) -> float:
    v = table[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v < 0):
        raise ConfigError(f"{where}: '{key}' must be a number >= 0, got {v!r}")
    return float(v)


def parse_models(config: Path, tables: list[dict]) -> list[ModelBudget]:
    from tinyprune import targets

    text = config.read_text()
    out = []
    for i, t in enumerate(tables):
        where = f"{config.name} [[model]] #{i + 1}"
        unknown = sorted(set(t) - KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(KEYS))}")
        if not isinstance(t.get("path"), str) or not t["path"]:
            raise ConfigError(f"{where}: needs path = \"...\" (the model file)")
        target = t.get("target", "cortex-m4")
        if not isinstance(target, str):
            raise ConfigError(f"{where}: 'target' must be a string")
        runtime, clock = t.get("runtime"), t.get("clock_mhz")
        if runtime is not None and not isinstance(runtime, str):
            raise ConfigError(f"{where}: 'runtime' must be a string (see `tinyprune runtimes`)")
        # unknown target or runtime, or a runtime without a model for the core: one line naming the known ones
        device = targets.configure(targets.load(target), runtime, clock)
        limits = {}
        for key in ("max_flash", "max_ram"):
            if key in t:
                limits[key] = parse_size(t[key], key)
        if "max_macs" in t:
            limits["max_macs"] = _number(t, "max_macs", where)
        for key in ("max_latency_ms", "max_energy_uj"):
            if key in t:
                limits[key] = _number(t, key, where)
        data = None
        for key in QUALITY:
            if key not in t:
                continue
            value = _number(t, key, where, positive=key != "min_quality")
            if key != "max_mse" and value > 1:
                raise ConfigError(f"{where}: '{key}' is a fraction, at most 1, got {value}")
            limits[key] = value
            if not isinstance(t.get("data"), str):
                raise ConfigError(f"{where}: {key} needs data = \"...\" (an .npz: x and y, or x only for an "
                                  "autoencoder) in the same table")
        if "data" in t:
            if not isinstance(t["data"], str):
                raise ConfigError(f"{where}: 'data' must be a path string")
            data = (config.parent / t["data"]).resolve()
        if not limits:
            raise ConfigError(f"{where}: no budget given (one of {', '.join(BUDGETS)})")
        include_runtime = t.get("include_runtime", False)
        if not isinstance(include_runtime, bool):
            raise ConfigError(f"{where}: 'include_runtime' must be true or false")
        kernels = t.get("kernels", "optimized")
        if kernels != "optimized":
            raise ConfigError(f"{where}: 'kernels' can only be \"optimized\" (TFLM with CMSIS-NN, what the device model "
                              f"is measured on); got {kernels!r}: remove the key or pick a runtime with 'runtime'")
        shape = t.get("input_shape")
        if shape is not None and (not isinstance(shape, list) or not shape or
                                  not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
            raise ConfigError(f"{where}: 'input_shape' must be a list of positive integers, e.g. [1, 28, 28]")
        line, key_lines = _lines(text, t["path"], limits)
        out.append(ModelBudget((config.parent / t["path"]).resolve(), target, limits, data, include_runtime, kernels,
                               tuple(shape) if shape else None, t.get("name") or t["path"], line, device, key_lines))
    return out


def _lines(text: str, path: str, keys) -> tuple[int | None, dict]:
    """Line of the table's ``path = ...`` and of each budget key inside the same table (1-based)."""
    m = re.search(r"^\s*path\s*=\s*[\"']" + re.escape(path) + r"[\"']", text, re.M)
    if not m:
        return None, {}
    # the table runs from its header (the last one before `path`) to the next header
    start = max((h.end() for h in re.finditer(r"^\s*\[", text[:m.start()], re.M)), default=0)
    nxt = re.search(r"^\s*\[", text[m.end():], re.M)
    end = m.end() + nxt.start() if nxt else len(text)
    found = {}
    for key in keys:
        k = re.search(r"^\s*" + re.escape(key) + r"\s*=", text[start:end], re.M)
        if k:
            found[key] = text.count("\n", 0, start + k.start()) + 1
    return text.count("\n", 0, m.start()) + 1, found


# ------------------------------------------------------------------------------------- accuracy

def _fit_layout(x: np.ndarray, input_shape: list[int]) -> np.ndarray:
    """x in the model's PyTorch layout (what litert_predict takes): NCHW for 4-D device inputs."""
    want = tuple(input_shape[1:])  # device layout, no batch
    if x.ndim == 3 and len(want) == 2 and tuple(x.shape[1:]) in (want[::-1], want):
        # a 1-D signal: [N, C, L] as PyTorch (and compress) take it, else [N, L, C] as the device does
        return x if tuple(x.shape[1:]) == want[::-1] else np.ascontiguousarray(x.transpose(0, 2, 1))
    if x.ndim == len(want) + 1 and tuple(x.shape[1:]) == want:
        return x.transpose(0, 3, 1, 2) if x.ndim == 4 else x  # NHWC as stored: to NCHW
    if x.ndim == 4 and len(want) == 3 and tuple(x.shape[1:]) == (want[2], want[0], want[1]):
        return x  # already NCHW
    if x.ndim == 3 and len(want) == 3 and want[2] == 1 and tuple(x.shape[1:]) == want[:2]:
        return x[:, None]  # NHW, one channel
    if x.ndim >= 2 and int(np.prod(x.shape[1:])) == int(np.prod(want)) and len(want) == 1:
        return x.reshape(len(x), -1)
    raise DataError(f"data samples of shape {tuple(x.shape[1:])} do not fit the model input {tuple(input_shape)}")


def tflite_quality(model_bytes: bytes, data_path: Path, arena: int | None = None) -> dict:
    """The task's metrics (``score``, and accuracy, or mse/mae/r2, or auc/mse) of the TFLite model
    in TFLM on the .npz (its test part when it has one); the task follows the data (tinyprune.task).

    TFLM is what the device runs, and it also runs DECODE (LUT-compressed) models that LiteRT
    cannot load; LiteRT cross-checks where it can (see ``export.verify``)."""
    from tinyprune.data import load_npz
    from tinyprune.export import micro, verify
    from tinyprune.export.tflite import device_input, io_details
    from tinyprune.task import Task, check_anomaly, detect, targets_for

    raw = load_npz(data_path)
    test = raw.x_test is not None
    x, y = (raw.x_test, raw.y_test) if test else (raw.x_train, raw.y_train)
    anomaly = raw.anomaly_test if test else raw.anomaly_train
    io = io_details(model_bytes)
    x = _fit_layout(np.asarray(x, np.float32), io["input"]["shape"])
    kind = detect(None, None if y is None else np.asarray(y))
    if y is not None and len(y) != len(x):
        raise DataError(f"{data_path.name}: {len(x)} samples but {len(y)} labels")
    device_out = tuple(io["output"]["shape"][1:])
    # the output's PyTorch layout: channels first, as the targets are built
    outputs = (device_out[-1], *device_out[:-1]) if len(device_out) >= 2 else device_out
    if kind == "classify":
        y = np.asarray(y).astype(np.int64).reshape(-1)
        classes = int(np.prod(device_out))
        if len(y) and (y.min() < 0 or y.max() >= classes):
            raise DataError(f"{data_path.name}: labels span {y.min()}..{y.max()} but the model has {classes} outputs")
    else:
        y = targets_for(kind, x, None if y is None else np.asarray(y), outputs, data_path.name)
    if anomaly is not None:
        anomaly = check_anomaly(np.asarray(anomaly), len(x), data_path.name)
        if len(np.unique(anomaly)) < 2:
            raise DataError(f"{data_path.name}: the anomaly labels are all {int(anomaly[0])}; ROC AUC needs normal "
                            "and anomalous samples")
    if arena is None:
        arena = micro.smallest_arena(model_bytes, device_input(model_bytes, x[:1]))
    task = Task(kind, anomaly_labels=anomaly is not None)
    record, _ = verify.device_accuracy(model_bytes, x, y, arena, task, anomaly)
    verify.check_agreement(record)
    return {**record, "task": task.to_dict()}


# ------------------------------------------------------------------------------------- check

def check_models(budgets: list[ModelBudget], config: Path, progress=None) -> CheckResult:
    from tinyprune.measure import deployed
    from tinyprune.measure.core import measure_file

    result = CheckResult(config)
    for b in budgets:
        if progress:
            progress(f"measuring {b.name}")
        t0 = time.perf_counter()
        m = measure_file(b.path, b.device, input_shape=b.input_shape, timing=False,
                         find_arena="max_ram" in b.limits)
        unpaid = time.perf_counter() - t0  # charged to the first outcome of this model
        first = len(result.outcomes)
        result.measurements[b.name] = m
        result.lines[b.name] = {"path": b.line, **b.key_lines}
        t = m["totals"]
        costs = deployed.of(m)
        result.unsupported[b.name] = m.get("unsupported_ops") or []
        rt = " + runtime" if b.include_runtime else ""
        record = None
        for key, limit in b.limits.items():
            if key == "max_flash":
                value = costs.flash_bytes if b.include_runtime else t["flash_bytes"]
                text = f"{format_size(value)} (flash{rt}) vs {format_size(limit)}"
                detail = (f"model {costs.model_bytes:,} B + runtime code {costs.code_bytes:,} B ({costs.core})"
                          if b.include_runtime else t["flash_source"])
            elif key == "max_ram":
                if t["arena_bytes"] is None and m["format"] == "tflite":
                    result.outcomes.append(Outcome(b.name, key, None, limit, False,
                                                   "arena not measurable: TFLM cannot run the model", ""))
                    continue
                value = costs.ram_bytes if b.include_runtime else t["ram_bytes"]
                text = f"{format_size(value)} (RAM{rt}) vs {format_size(limit)}"
                detail = (f"arena {costs.arena_bytes:,} B (kTensorArenaSize) + stack and static data "
                          f"{costs.outside_arena_bytes:,} B" if b.include_runtime else t["ram_source"])
            elif key == "max_macs":
                value = t["macs"]
                text, detail = f"{value:,} MACs vs {int(limit):,}", ""
            elif key == "max_latency_ms":  # the deployed costs' figure: what the report's headline shows
                value = costs.ms.value
                text = f"{value:.2f} ms vs {limit:g} ms"
                detail = (f"predicted on {b.target} for {costs.runtime_label} ({costs.ms.low:.2f}-{costs.ms.high:.2f}, "
                          f"{int(100 * costs.coverage)} % interval)")
            elif key == "max_energy_uj":
                value = costs.energy_uj.value
                text = f"{value:.2f} uJ vs {limit:g} uJ"
                detail = (f"{costs.pj_per_cycle.value:g} pJ/cycle x {costs.cycles.value:,.0f} predicted cycles "
                          f"({costs.energy_uj.low:.2f}-{costs.energy_uj.high:.2f})")
            else:  # a quality budget: the model run in TFLM on its data, once for all of them
                if m["format"] != "tflite":
                    raise ConfigError(f"{b.name}: {key} is checked on .tflite models only")
                spent = 0.0
                if record is None:
                    if progress:
                        progress(f"evaluating {b.name} on {b.data.name}")
                    t0 = time.perf_counter()
                    record = tflite_quality(b.path.read_bytes(), b.data, t.get("arena_bytes"))
                    spent = time.perf_counter() - t0
                metric = QUALITY[key]
                if metric not in record:
                    raise ConfigError(f"{b.name}: {key} does not apply to a {record['task']['kind']} model "
                                      f"(its data gives {', '.join(k for k in QUALITY.values() if k in record)})")
                value = record[metric]
                ok = value <= limit if key == "max_mse" else value >= limit
                shown = f"{value:.4g} vs <= {limit:.4g}" if key == "max_mse" else f"{value:.2%} vs >= {limit:.2%}"
                cross = (f", LiteRT agrees on {record['agreement_with_litert']:.1%}" if "agreement_with_litert" in record
                         else ", no LiteRT cross-check (TFLM-only ops)")
                result.outcomes.append(Outcome(b.name, key, value, limit, ok, shown,
                                               f"TFLM on {record['samples']} samples of {b.data.name}{cross}", spent))
                continue
            result.outcomes.append(Outcome(b.name, key, value, limit, value <= limit, text, detail))
        if len(result.outcomes) > first:
            result.outcomes[first].seconds += unpaid
        else:
            result.op_seconds[b.name] = unpaid
    return result


def run_check(models: list[Path], budget: Path | None, cwd: Path | None = None, progress=None) -> CheckResult:
    cwd = cwd or Path.cwd()
    config, tables = find_config(budget, cwd)
    budgets = parse_models(config, tables)
    if models:
        wanted = {Path(m).resolve() for m in models}
        missing = [str(m) for m in models if Path(m).resolve() not in {b.path for b in budgets}]
        if missing:
            raise ConfigError(f"no [[model]] budget for {', '.join(missing)} in {config.name}")
        budgets = [b for b in budgets if b.path in wanted]
    return check_models(budgets, config, progress)


# ------------------------------------------------------------------------------------- outputs

def _classname(model: str) -> str:
    """``tinyprune.check.<model>`` with the model's path as one identifier: reporters split
    class names at dots, and ``model_int8.tflite`` is one model, not a package ``tflite``."""
    return "tinyprune.check." + (re.sub(r"[^A-Za-z0-9_]+", "_", model).strip("_") or "model")


def to_junit(result: CheckResult) -> str:
    """JUnit XML: one test case per (model, budget), plus one per model for the op check."""
    suite = ET.Element("testsuite", name="tinyprune.check")
    cases = failures = 0
    for o in result.outcomes:
        case = ET.SubElement(suite, "testcase", classname=_classname(o.model), name=o.metric, time=f"{o.seconds:.3f}")
        cases += 1
        if not o.ok:
            failures += 1
            f = ET.SubElement(case, "failure", message=f"{o.metric} exceeded: {o.text}", type="BudgetExceeded")
            f.text = f"{o.model}: {o.metric} exceeded: {o.text}. {o.detail}".strip()
        elif o.detail:
            ET.SubElement(case, "system-out").text = f"{o.text}. {o.detail}"
    for model, ops in result.unsupported.items():
        case = ET.SubElement(suite, "testcase", classname=_classname(model), name="tflm_ops",
                             time=f"{result.op_seconds.get(model, 0.0):.3f}")
        cases += 1
        if ops:
            failures += 1
            f = ET.SubElement(case, "failure", message=f"ops the target runtime lacks: {', '.join(ops)}",
                              type="UnsupportedOp")
            f.text = f"{model}: the target's TFLM runtime has no kernel for {', '.join(ops)}"
    total = f"{sum(o.seconds for o in result.outcomes) + sum(result.op_seconds.values()):.3f}"
    suite.set("tests", str(cases))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    suite.set("time", total)
    root = ET.Element("testsuites", name="tinyprune check", tests=str(cases), failures=str(failures), errors="0",
                      time=total)
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _gh_escape(text: str, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if prop else text


def annotations(result: CheckResult) -> list[str]:
    """GitHub Actions workflow commands (``::error ...::``) for every budget exceeded / bad op."""
    lines = []
    try:  # annotations attach to files by their path in the repository (the job's working directory)
        shown = Path(result.config).resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        shown = Path(result.config)
    where = _gh_escape(str(shown), True)
    for o in result.exceeded:
        where_in = result.lines.get(o.model) or {}
        line = where_in.get(o.metric, where_in.get("path"))
        loc = f"file={where}" + (f",line={line}" if line else "")
        lines.append(f"::error {loc},title={_gh_escape('tinyprune budget ' + o.metric, True)}::"
                     + _gh_escape(f"{o.model}: {o.metric} exceeded: {o.text}"))
    for model, ops in result.unsupported.items():
        if ops:
            line = (result.lines.get(model) or {}).get("path")
            loc = f"file={where}" + (f",line={line}" if line else "")
            lines.append(f"::error {loc},title=tinyprune unsupported op::"
                         + _gh_escape(f"{model}: the target's TFLM runtime lacks {', '.join(ops)}"))
    return lines
