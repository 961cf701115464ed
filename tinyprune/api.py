"""The library behind the CLI: ``compress()`` and ``demo()``.

Data flows one way: load -> prune -> fine-tune -> export (ONNX, int8 TFLite) -> verify (LiteRT,
TFLM) -> report. Each stage returns a record; the report is assembled from the records only.
Everything is written to a temporary folder beside the output and moved into place at the end,
so a failed run leaves no half-written output and never touches an earlier result.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tinyprune import __version__, targets
from tinyprune.config import CompressConfig
from tinyprune.errors import ConfigError, ExportError, UnsupportedOp
from tinyprune.report import Report, StageRecord, to_markdown
from tinyprune.train import Progress, _quiet

TIMING_REPEATS = 10
# float -> int8 accuracy change (points) beyond which the console names the layer that lost most SQNR
FIDELITY_TOLERANCE_POINTS = 0.5


@dataclass(frozen=True)
class ModelSource:
    path: Path
    arch: str | None = None
    trust_pickle: bool = False


def default_out_dir(model_path: Path) -> Path:
    return Path("tinyprune-out") / model_path.stem


def _prepare_out_dir(out: Path) -> Path:
    """A fresh temp dir next to ``out`` (same filesystem, so the final move is a rename)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "report.json").exists():
        raise ConfigError(f"--out {out} exists and holds files that are not a tinyprune result; choose another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))


def _publish(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{time.time_ns()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_output(out: Path):
    """Yield a temp folder beside ``out``; it replaces ``out`` only if the block succeeds."""
    tmp = _prepare_out_dir(out)
    try:
        yield tmp
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def compress(source: ModelSource, cfg: CompressConfig, *, data_path: Path | None = None,
             out_dir: Path | None = None, progress: Progress = _quiet, builtin_data: bool = False) -> Report:
    """Run the whole pipeline; return the report (also written to ``out_dir``)."""
    target = targets.load(cfg.target)  # fail on a bad target before any slow work
    out = Path(out_dir) if out_dir else default_out_dir(source.path)
    with staged_output(out) as tmp:
        report = _run(source, cfg, target, data_path, builtin_data, tmp, out, progress)
    return report


def _load_stage(source, cfg, data_path, builtin_data):
    import torch

    from tinyprune import data as data_mod
    from tinyprune.lift import to_module
    from tinyprune.load import load_model

    torch.manual_seed(cfg.seed)
    loaded = load_model(source.path, arch=source.arch, trust_pickle=source.trust_pickle)
    if data_path is not None:
        raw = data_mod.load_npz(data_path)
    elif builtin_data:
        raw = data_mod.builtin_digits()
    else:
        raise ConfigError("no data: pass --data DATA.npz (x/y arrays); the built-in digits are only for the demo")
    splits = data_mod.prepare(raw, loaded.callable(), cfg.data, cfg.seed)
    model = to_module(loaded, torch.from_numpy(splits.x_train[:1]))
    return loaded, model, splits


@dataclass
class RunState:
    """What the stages pass along. Each stage reads what earlier stages set and adds its own."""

    source: ModelSource
    target: object
    tmp: Path  # the staging folder; published to ``out`` when every stage succeeded
    progress: Progress
    data_path: Path | None = None
    builtin_data: bool = False
    loaded: object = None
    splits: object = None
    example: object = None
    model: object = None  # the current float model
    pruned: object = None  # PruneResult
    layers: list = field(default_factory=list)
    deep: object = None  # Deep Compression result
    int8: dict = field(default_factory=dict)  # int8 flatbuffer and what verifying it produced
    records: list = field(default_factory=list)
    artifacts: list = field(default_factory=list)  # files written, in stage order

    def write(self, name: str, content: bytes | str) -> None:
        """Write an artifact into the staging folder and declare it."""
        path = self.tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        self.declare(name)

    def declare(self, *names: str) -> None:
        self.artifacts.extend(n for n in names if n not in self.artifacts)


def torch_example(splits):
    import torch

    return torch.from_numpy(splits.x_train[:1])


def _measure(model, state: RunState, **kw) -> dict:
    from tinyprune.measure.core import measure_stage

    return measure_stage(model, state.target, repeats=TIMING_REPEATS, **kw)


def load_stage(state: RunState, cfg: CompressConfig):
    from tinyprune.measure.macs import count_torch
    from tinyprune.train import accuracy

    t = time.perf_counter()
    state.loaded, state.model, state.splits = _load_stage(state.source, cfg, state.data_path, state.builtin_data)
    state.example = torch_example(state.splits)
    macs, params = count_torch(state.model, state.example)
    return state, StageRecord("original", params, macs,
                              accuracy(state.model, state.splits.x_eval, state.splits.y_eval),
                              time.perf_counter() - t,
                              details={"format": state.loaded.format,
                                       "measure": _measure(state.model, state, example=state.example)})


def prune_stage(state: RunState, cfg: CompressConfig):
    from tinyprune.prune import prune_to_macs
    from tinyprune.train import accuracy, fit

    t = time.perf_counter()
    splits = state.splits
    x_info, y_info = analysis_set(splits)
    pruned = prune_to_macs(state.model, cfg.prune, x_info, y_info, splits.classes,
                           retrain=lambda m, label: fit(m, splits.x_train, splits.y_train, cfg.finetune, cfg.seed,
                                                        state.progress, label),
                           train=(splits.x_train, splits.y_train), progress=state.progress, seed=cfg.seed)
    state.pruned, state.model = pruned, pruned.model
    state.layers = _layer_records(pruned.source, pruned, x_info, y_info, cfg.prune.criterion)
    return state, StageRecord("pruned", pruned.params_after, pruned.macs_after,
                              accuracy(pruned.model, splits.x_eval, splits.y_eval), time.perf_counter() - t,
                              details={"criterion": cfg.prune.criterion, "steps": pruned.steps,
                                       "macs_removed": 1 - pruned.macs_after / pruned.macs_before,
                                       "at_init": cfg.prune.at_init, **pruned.record})


def finetune_stage(state: RunState, cfg: CompressConfig):
    from tinyprune.train import accuracy, fit

    t = time.perf_counter()
    splits, plane = state.splits, None
    if cfg.plane:
        from tinyprune.information.plane import plane_summary, record_during_finetune, write_plane

        x_plane, y_plane = plane_set(splits)
        # one fit call with a per-epoch callback: the same training as without --plane
        tuned, plane = record_during_finetune(state.model, splits.x_train, splits.y_train, x_plane, y_plane,
                                              cfg.finetune.epochs, lr=cfg.finetune.lr, noise_var="median",
                                              batch_size=cfg.finetune.batch_size, seed=cfg.seed,
                                              progress=state.progress)
        write_plane(plane, state.tmp)
        state.declare("plane.json", "plane.png")
    else:
        tuned = fit(state.model, splits.x_train, splits.y_train, cfg.finetune, cfg.seed, state.progress)
    state.model = tuned
    return state, StageRecord("finetuned", state.pruned.params_after, state.pruned.macs_after,
                              accuracy(tuned, splits.x_eval, splits.y_eval), time.perf_counter() - t,
                              details={"epochs": cfg.finetune.epochs,
                                       **({"plane": {"json": "plane.json", "png": "plane.png",
                                                     **plane_summary(plane)}} if plane else {}),
                                       "measure": _measure(tuned, state, example=state.example)})


def deepcompress_stage(state: RunState, cfg: CompressConfig):
    if cfg.deepcompress is None:
        return state, []
    from tinyprune.deepcompress.stage import run_deepcompress

    s = state.splits
    state.deep = run_deepcompress(state.model, s.x_train, s.y_train, s.x_eval, s.y_eval, cfg.deepcompress,
                                  cfg.seed, state.progress)
    state.write("model.tpz", state.deep.archive)
    state.model = state.deep.model
    return state, state.deep.records


def _last_float_accuracy(state: RunState) -> float:
    return next(r.accuracy for r in reversed(state.records) if r.accuracy is not None)


def export_stage(state: RunState, cfg: CompressConfig):
    import torch

    from tinyprune.export import micro, rewrite, tflite, verify
    from tinyprune.export.fidelity import compare_layers
    from tinyprune.export.onnx import export_onnx
    from tinyprune.measure.core import unsupported_tflite_ops
    from tinyprune.measure.macs import count_tflite

    t = time.perf_counter()
    tmp, splits, target = state.tmp, state.splits, state.target
    tuned = state.model.eval()
    try:
        program = torch.export.export(tuned, (state.example,))
        torch.export.save(program, str(tmp / "model_pruned.pt2"))
    except Exception as exc:
        raise ExportError(f"saving the pruned model with torch.export failed: {str(exc).splitlines()[0][:200]}") from None
    state.declare("model_pruned.pt2")
    # exact in float; what the int8 graph is built from and compared with
    int8_source, equalized = tuned, []
    if cfg.export.equalize_concats:
        int8_source, equalized = rewrite.equalize_concats(tuned, torch.from_numpy(splits.x_calib))
    rewritten = []
    if cfg.export.bn_as_depthwise:
        int8_source, rewritten = rewrite.for_int8(int8_source, state.example)
    onnx_diff = export_onnx(int8_source, splits.x_train[:1], tmp / "model.onnx", cfg.export.opset)
    state.declare("model.onnx")
    int8_bytes = tflite.to_int8_tflite(tmp / "model.onnx", splits.x_calib, tmp / "_work")
    shutil.rmtree(tmp / "_work")
    io = tflite.io_details(int8_bytes)
    missing = unsupported_tflite_ops(int8_bytes, target)
    if missing:
        raise UnsupportedOp(f"the int8 model uses op(s) that {target.name}'s TFLM runtime lacks: {', '.join(missing)}")
    xq = tflite.device_input(int8_bytes, splits.x_eval)
    arena = micro.smallest_arena(int8_bytes, xq[:1])
    layers = compare_layers(int8_source, int8_bytes, splits.x_calib)
    device, tflm_out = verify.device_accuracy(int8_bytes, splits.x_eval, splits.y_eval, arena)
    if verify.collapsed(tflm_out):
        where = next((e for e in layers["layers"] if e["constant_over_samples"]), layers["blame"])
        raise ExportError("the int8 model gives the same output for every input"
                          + (f"; its activations stop depending on the input at {where['layer']} ({where['op']})"
                             if where else "") + "; check the calibration data and the layer's value range")
    verify.check_agreement(device)
    float_acc = _last_float_accuracy(state)
    moved = (device["accuracy"] - float_acc) * 100
    fidelity = {"float_accuracy": float_acc, "moved_points": moved, "batchnorms_as_depthwise": rewritten,
                "concat_inputs_equalized": equalized,
                "moved_beyond_tolerance": abs(moved) > FIDELITY_TOLERANCE_POINTS, **layers}
    state.write("model_int8.tflite", int8_bytes)
    counted = count_tflite(int8_bytes)
    source_cc, header = micro.c_array(int8_bytes)
    state.write("model_data.cc", source_cc)
    state.write("model_data.h", header)
    state.int8 = {"bytes": int8_bytes, "xq": xq, "y": splits.y_eval, "tflm_out": tflm_out, "arena": arena}
    return state, StageRecord(
        "int8", counted["params"], counted["macs"], device["accuracy"], time.perf_counter() - t,
        flash_bytes=len(int8_bytes), arena_bytes=arena,
        details={
            "onnx_max_abs_diff": onnx_diff,
            "io": io,
            "tflm": device,
            "fidelity": fidelity,
            "ops": counted["layers"],
            "measure": _measure(int8_bytes, state, arena_bytes=arena, onnx_model=tmp / "model.onnx"),
        },
    )


def lut_stage(state: RunState, cfg: CompressConfig):
    """TFLM LUT compression of the clustered int8 model (DECODE ops), checked bit-exact in TFLM."""
    if state.deep is None:
        return state, []
    int8_bytes, xq, y = (state.int8[k] for k in ("bytes", "xq", "y"))
    from tinyprune.export import micro
    from tinyprune.export.lut import lut_compress, verify_bit_exact
    from tinyprune.measure.macs import count_tflite

    t = time.perf_counter()
    lut = lut_compress(int8_bytes, max_bits=cfg.deepcompress.bits)
    check, lut_out = verify_bit_exact(int8_bytes, lut.model, xq, want=state.int8["tflm_out"],
                                      arena_before=state.int8["arena"])
    if not check["bit_exact"]:
        raise ExportError(f"the LUT-compressed model differs from the int8 model in TFLM on "
                          f"{check['samples_differing']} of {check['samples']} samples; please report this model")
    state.write("model_int8_lut.tflite", lut.model)
    source_cc, header = micro.c_array(lut.model, "g_model_lut_data", "model_lut_data.h")
    state.write("model_lut_data.cc", source_cc)
    state.write("model_lut_data.h", header)
    counted = count_tflite(int8_bytes)  # the DECODE graph computes the same layers
    return state, StageRecord(
        "int8_lut", counted["params"], counted["macs"],
        float((lut_out.reshape(len(lut_out), -1).argmax(1) == y).mean()), time.perf_counter() - t,
        flash_bytes=len(lut.model), arena_bytes=check["arena_after"],
        details={"lut": lut.to_dict(), "tflm_check": check,
                 "measure": _measure(lut.model, state, arena_bytes=check["arena_after"]),
                 "accuracy_measured_on": f"all {check['samples']} held-out samples in TFLM"},
    )


ANALYSIS_SAMPLES = 600  # MI needs more samples than int8 calibration; KDE cost grows as N^2



# The pipeline: each stage is (state, cfg) -> (state, StageRecord or list of them).
STAGES = (load_stage, prune_stage, finetune_stage, deepcompress_stage, export_stage, lut_stage)
REPORT_FILES = ("report.json", "report.md", "report.html")


def _run(source, cfg, target, data_path, builtin_data, tmp: Path, out: Path, progress) -> Report:
    from tinyprune.report.html import write_html

    state = RunState(source, target, tmp, progress, data_path, builtin_data)
    for stage in STAGES:
        state, produced = stage(state, cfg)
        state.records.extend(produced if isinstance(produced, (list, tuple)) else [produced])
    state.declare(*REPORT_FILES)
    splits = state.splits
    report = Report(
        tool_version=__version__,
        model={"path": str(source.path), "format": state.loaded.format, "input_shape": [1, *splits.sample_shape],
               "classes": splits.classes},
        data=splits.summary(),
        target=target.to_dict(),
        config=cfg.to_dict(),
        stages=state.records,
        layers=state.layers,
        artifacts=[str(out / a) for a in state.artifacts],
        compression=state.deep.to_dict() if state.deep is not None else None,
    )
    (tmp / "report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    (tmp / "report.md").write_text(to_markdown(report))
    write_html(report.to_dict(), tmp / "report.html")
    return report


def analysis_set(splits) -> tuple[np.ndarray, np.ndarray]:
    """Training samples the criteria and MI analysis look at (never the held-out part)."""
    n = min(ANALYSIS_SAMPLES, len(splits.x_train))
    return splits.x_train[:n], splits.y_train[:n]


PLANE_SAMPLES = 1000  # the fixed sample the information plane is measured on (KDE cost grows as N^2)


def plane_set(splits) -> tuple[np.ndarray, np.ndarray]:
    """Training samples the information plane is measured on."""
    n = min(PLANE_SAMPLES, len(splits.x_train))
    return splits.x_train[:n], splits.y_train[:n]


def plane(source: ModelSource, cfg: CompressConfig, data_path: Path | None, out_dir: Path | None, epochs: int,
          methods: tuple[str, ...] = ("binning", "kde"), bins: int = 30, noise_var: float | str = "median",
          builtin_data: bool = False, progress: Progress = _quiet) -> dict:
    """Train the model for ``epochs`` epochs (cfg.finetune's lr and batch size) while recording
    I(X;T) and I(T;Y) per layer per epoch; writes plane.json and plane.png to ``out_dir``."""
    from tinyprune.information.plane import record_during_finetune, write_plane

    t = time.perf_counter()
    loaded, model, splits = _load_stage(source, cfg, data_path, builtin_data)
    x, y = plane_set(splits)
    _, data = record_during_finetune(model, splits.x_train, splits.y_train, x, y, epochs, methods=methods,
                                     bins=bins, noise_var=noise_var, lr=cfg.finetune.lr,
                                     batch_size=cfg.finetune.batch_size, seed=cfg.seed, progress=progress,
                                     label="train")
    data = {**data, "tool_version": __version__, "model": str(source.path), "format": loaded.format,
            "seconds": time.perf_counter() - t}
    out = Path(out_dir) if out_dir else Path("tinyprune-out") / f"{source.path.stem}-plane"
    with staged_output(out) as tmp:
        write_plane(data, tmp)
        (tmp / "report.json").write_text(json.dumps({"kind": "plane", "plane": "plane.json"}) + "\n")
    data["out"] = str(out)
    return data


def _layer_records(model, pruned, x, y, criterion: str) -> list[dict]:
    """Per layer: widths, and the MI of what was kept and removed (measured on the original model)."""
    from tinyprune.prune.mi import model_channel_mi

    mi = model_channel_mi(model, x, y)
    out = []
    for layer in pruned.layers:
        rel = mi.get(layer["name"], {}).get("relevance")
        kept = pruned.kept.get(layer["name"], [])  # a layer of a removed skip-unit keeps nothing
        removed = sorted(set(range(layer["channels_before"])) - set(kept))
        reason = "kept whole"
        if not kept:
            reason = f"removed with its whole skip-unit ({criterion})"
        elif removed:
            reason = f"lowest {criterion} importance"
        record = dict(layer, removed_channels=removed, reason=reason)
        if rel is not None:
            record.update(mi_kept=float(rel[kept].sum()), mi_removed=float(rel[removed].sum()),
                          mi_per_channel=[round(float(v), 5) for v in rel])
        out.append(record)
    return out


def analyze(source: ModelSource, cfg: CompressConfig, data_path: Path | None, out_dir: Path | None,
            builtin_data: bool = False) -> dict:
    """Per-layer and per-channel MI with the labels; writes mi.json and mi.png to ``out_dir``."""
    from tinyprune.prune.mi import model_channel_mi
    from tinyprune.report.plots import plot_channel_mi

    t = time.perf_counter()
    loaded, model, splits = _load_stage(source, cfg, data_path, builtin_data)
    x, y = analysis_set(splits)
    mi = model_channel_mi(model, x, y)
    layers = []
    for name, v in mi.items():
        order = np.argsort(-v["relevance"])
        layers.append({
            "name": name, "channels": int(len(order)),
            "mean": float(v["relevance"].mean()), "max": float(v["relevance"].max()), "min": float(v["relevance"].min()),
            "top": [[int(c), float(v["relevance"][c])] for c in order[:5]],
            "bottom": [[int(c), float(v["relevance"][c])] for c in order[::-1][:5]],
            "relevance": [float(r) for r in v["relevance"]],
            "score": [float(r) for r in v["score"]],
        })
    result = {
        "schema_version": 1, "tool_version": __version__, "model": str(source.path), "format": loaded.format,
        "estimator": "kde-binned (Kolchinsky-Tracey upper bound, binned FFT kernel sums), spatial mean per channel, nats",
        "label_entropy": float(_label_entropy(y)), "samples": int(len(x)),
        "seconds": time.perf_counter() - t, "layers": layers,
    }
    out = Path(out_dir) if out_dir else Path("tinyprune-out") / f"{source.path.stem}-mi"
    with staged_output(out) as tmp:
        (tmp / "mi.json").write_text(json.dumps(result, indent=2) + "\n")
        plot_channel_mi(layers, result["label_entropy"], tmp / "mi.png")
        (tmp / "report.json").write_text(json.dumps({"kind": "analyze", "mi": "mi.json"}) + "\n")
    result["out"] = str(out)
    return result


def _label_entropy(y: np.ndarray) -> float:
    p = np.bincount(y) / len(y)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def train_demo_model(seed: int = 0, epochs: int = 15, progress: Progress = _quiet):
    """The built-in example: the digits CNN trained on the training part of ``load_digits``."""
    import torch

    from tinyprune.config import DataConfig, FinetuneConfig
    from tinyprune.data import builtin_digits, prepare
    from tinyprune.testing import digits_cnn
    from tinyprune.train import fit

    torch.manual_seed(seed)
    model = digits_cnn()
    splits = prepare(builtin_digits(), model.eval(), DataConfig(), seed)
    # Same seed, same split: the demo's held-out digits are never trained on.
    return fit(model, splits.x_train, splits.y_train, FinetuneConfig(epochs=epochs, lr=3e-3), seed, progress, "train")


def demo(cfg: CompressConfig, out_dir: Path | None = None, progress: Progress = _quiet) -> Report:
    import torch

    out = Path(out_dir) if out_dir else Path("tinyprune-out") / "demo"
    targets.load(cfg.target)  # a bad target fails before the training
    model = train_demo_model(cfg.seed, progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Kept beside the results so `tinyprune compress` can be tried on it by hand. Only
    # torch.nn classes: it loads through the safe (weights_only) path like a user's file.
    path = out.parent / "digits_cnn.pt"
    torch.save(model, path)
    return compress(ModelSource(path), cfg, out_dir=out, progress=progress, builtin_data=True)
