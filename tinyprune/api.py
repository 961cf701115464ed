"""The library behind the CLI: ``compress()`` and ``demo()``.

Data flows one way: load -> prune -> fine-tune -> export (ONNX, int8 TFLite) -> verify (LiteRT,
TFLM) -> report. Each stage returns a record; the report is assembled from the records only.
Everything is written to a temporary folder beside the output and moved into place at the end,
so a failed run leaves no half-written output and never touches an earlier result.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tinyprune import __version__, targets
from tinyprune.config import CompressConfig
from tinyprune.errors import ConfigError, DataError
from tinyprune.report import Report, StageRecord, to_markdown
from tinyprune.device_stages import archive_stage, deployed, export_stage, share_stage
from tinyprune.state import RunState, measure
from tinyprune.train import Progress, _quiet



@dataclass(frozen=True)
class ModelSource:
    path: Path
    arch: str | None = None
    trust_code: bool = False


def default_out_dir(model_path: Path) -> Path:
    return Path("tinyprune-out") / model_path.stem


MANIFEST = ".tinyprune-manifest.json"  # written last into every result folder: the files tinyprune wrote
STAGING = ".tinyprune-staging"  # in a staging folder while a run writes it: the writer's process id


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_staging(out: Path) -> None:
    """Staging folders of ``out`` left by a run that was killed (its process is gone)."""
    for folder in out.parent.glob(f".{out.name}.tmp-*"):
        try:
            pid = int((folder / STAGING).read_text())
        except (OSError, ValueError):
            continue  # not ours, or not readable: leave it
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(folder, ignore_errors=True)


def _foreign_files(out: Path) -> list[str]:
    """Entries of ``out`` that tinyprune did not write (all of them when it has no manifest)."""
    entries = sorted(p.name for p in out.iterdir())
    try:
        written = set(json.loads((out / MANIFEST).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return entries
    return [e for e in entries if e != MANIFEST and e not in written]


def _prepare_out_dir(out: Path) -> Path:
    """A fresh temp dir next to ``out`` (same filesystem, so the final move is a rename).

    An existing ``out`` is replaced only when it holds nothing but what an earlier tinyprune
    run wrote there (its manifest says which files): a user's folder is never touched."""
    try:
        return _fresh_staging(out)
    except OSError as exc:  # an unreadable --out folder, or one tinyprune cannot write beside
        raise ConfigError(f"--out {out}: cannot write there ({exc.strerror or exc}); choose another folder") from None


def _fresh_staging(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    if out.is_dir() and os.path.ismount(out):
        # the result replaces the folder by a rename, which a mount point refuses (EBUSY)
        raise ConfigError(f"--out {out} is a mount point; give a folder inside it, e.g. {out / 'tinyprune-out'}")
    if out.is_dir() and any(out.iterdir()):
        foreign = _foreign_files(out)
        if foreign:
            raise ConfigError(f"--out {out} holds files tinyprune did not write ({', '.join(foreign[:3])}"
                              f"{', ...' if len(foreign) > 3 else ''}); choose another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    (tmp / STAGING).write_text(str(os.getpid()))
    return tmp


def _publish(tmp: Path, out: Path) -> None:
    (tmp / STAGING).unlink(missing_ok=True)
    files = sorted(p.name for p in tmp.iterdir())
    (tmp / MANIFEST).write_text(json.dumps({"tool": "tinyprune", "version": __version__, "files": files}) + "\n")
    old = None
    if out.exists():
        foreign = _foreign_files(out) if out.is_dir() else [out.name]
        if foreign:  # written there while this run worked: still the user's
            raise ConfigError(f"--out {out} now holds files tinyprune did not write ({', '.join(foreign[:3])}); "
                              "nothing was replaced")
        old = out.with_name(f".{out.name}.old-{time.time_ns()}")
        try:
            out.rename(old)
        except OSError as exc:  # a read-only folder: the previous result stays, this one is dropped
            raise ConfigError(f"--out {out}: cannot replace the previous result ({exc.strerror or exc}); "
                              "choose another folder") from None
    try:
        tmp.rename(out)
    except OSError as exc:
        if old is not None:
            old.rename(out)  # put the previous result back
        raise ConfigError(f"--out {out}: cannot write the result there ({exc.strerror or exc}); "
                          "choose another folder") from None
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
             out_dir: Path | None = None, progress: Progress = _quiet, builtin_data: bool = False,
             fit=None, keep_source_as: str | None = None) -> Report:
    """Run the whole pipeline; return the report (also written to ``out_dir``).

    ``fit``: a ``tinyprune.fit.FitBudgets``; the MAC reduction is then searched for the most
    accurate deployed model within those budgets (``cfg.prune.sparsity`` is not used).
    ``keep_source_as``: also publish the model file itself under this name in ``out_dir`` (the
    demo's trained model), and name it there in the report."""
    target = targets.configure(targets.load(cfg.target), cfg.runtime, cfg.clock_mhz)  # fail on a bad target before any slow work
    if fit is not None:
        fit.limits(target)  # a target with no room for a model fails before any slow work
    out = Path(out_dir) if out_dir else default_out_dir(source.path)
    with staged_output(out) as tmp:
        report = _run(source, cfg, target, data_path, builtin_data, tmp, out, progress, fit, keep_source_as)
    return report


def _load_stage(source, cfg, data_path, builtin_data):
    import torch

    from tinyprune import data as data_mod
    from tinyprune.lift import to_module
    from tinyprune.load import load_model

    torch.manual_seed(cfg.seed)
    loaded = load_model(source.path, arch=source.arch, trust_code=source.trust_code)
    if data_path is not None:
        raw = data_mod.load_npz(data_path)
    elif builtin_data:
        raw = data_mod.builtin_digits()
    else:
        raise ConfigError("no data: pass --data DATA.npz (x/y arrays); the built-in digits are only for the demo")
    splits = data_mod.prepare(raw, loaded.callable(), cfg.data, cfg.seed)
    from tinyprune.prune import protocol

    protocol.check_task(cfg.prune.criterion, splits.task.kind)  # before the first slow step
    if getattr(cfg, "plane", False) and splits.task.kind != "classify":
        raise ConfigError(f"--plane measures I(T;Y) with class labels; this data is a {splits.task.kind} task")
    model = to_module(loaded, torch.from_numpy(splits.x_train[:1]))
    return loaded, model, splits


def torch_example(splits):
    import torch

    return torch.from_numpy(splits.x_train[:1])


def held_out_quality(model, splits) -> tuple[float, dict]:
    """(score, the task's metrics) of a float model on the held-out split."""
    from tinyprune.train import evaluate

    found = evaluate(model, splits.x_eval, splits.y_eval, splits.task, splits.anomaly_eval)
    return found.pop("score"), found


def load_stage(state: RunState, cfg: CompressConfig):
    from tinyprune.measure.macs import count_torch

    t = time.perf_counter()
    state.loaded, state.model, state.splits = _load_stage(state.source, cfg, state.data_path, state.builtin_data)
    state.example = torch_example(state.splits)
    if cfg.deepcompress is not None and cfg.deepcompress.overrides:
        from tinyprune.deepcompress.magnitude import check_overrides

        check_overrides(state.model, cfg.deepcompress.overrides)  # a misnamed layer fails before training
    macs, params = count_torch(state.model, state.example)
    score, quality = held_out_quality(state.model, state.splits)
    return state, StageRecord("original", params, macs, score, time.perf_counter() - t, quality=quality,
                              details={"format": state.loaded.format,
                                       "measure": measure(state.model, state, example=state.example)})


def _nonzero(model) -> int:
    return int(sum(int((p != 0).sum()) for p in model.parameters()))


def _prune(state: RunState, cfg: CompressConfig, prune_cfg) -> StageRecord:
    from tinyprune.prune import prune_to_macs
    from tinyprune.train import fit

    t = time.perf_counter()
    splits = state.splits
    x_info, y_info = analysis_set(splits)
    labels = None
    if splits.task.kind != "classify":  # label-MI criteria: information about the quantized target
        from tinyprune.task import information_labels

        labels = information_labels(splits.task.kind, x_info, y_info)
    # the criterion's analysis can take minutes before the first step reports: the step starts here
    state.progress(0, 1000, f"pruning ({prune_cfg.criterion}, {prune_cfg.sparsity:.0%} of the MACs): ranking channels")
    pruned = prune_to_macs(state.source_model, prune_cfg, x_info, y_info, splits.classes,
                           retrain=lambda m, label: fit(m, splits.x_train, splits.y_train, cfg.finetune, cfg.seed,
                                                        state.progress, label),
                           train=(splits.x_train, splits.y_train), progress=state.progress, seed=cfg.seed,
                           cache_dir=cfg.cache_dir, labels=labels)
    state.pruned, state.model = pruned, pruned.model
    # MI per layer in the report: classifiers, and any task pruned by mi (the same cached analysis)
    state.layers = _layer_records(pruned.source, pruned, x_info, y_info if labels is None else labels,
                                  prune_cfg.criterion, cfg.cache_dir,
                                  with_mi=splits.task.kind == "classify" or prune_cfg.criterion == "mi")
    score, quality = held_out_quality(pruned.model, splits)
    return StageRecord("pruned", pruned.params_after, pruned.macs_after, score, time.perf_counter() - t,
                       nonzero_params=_nonzero(pruned.model), quality=quality,
                       details={"criterion": prune_cfg.criterion, "steps": pruned.steps,
                                "sparsity": prune_cfg.sparsity,
                                "macs_removed": 1 - pruned.macs_after / pruned.macs_before,
                                "at_init": prune_cfg.at_init,
                                "compensate": prune_cfg.compensating, **pruned.record})


def _finetune(state: RunState, cfg: CompressConfig) -> StageRecord:
    from tinyprune.train import fit

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
    score, quality = held_out_quality(tuned, splits)
    return StageRecord("finetuned", state.pruned.params_after, state.pruned.macs_after, score, time.perf_counter() - t,
                       nonzero_params=_nonzero(tuned), quality=quality,
                       details={"epochs": cfg.finetune.epochs,
                                **({"plane": {"json": "plane.json", "png": "plane.png",
                                              **plane_summary(plane)}} if plane else {}),
                                "measure": measure(tuned, state, example=state.example)})


def backoff_schedule(sparsity: float) -> list[float]:
    """The MAC reductions tried, largest first, while the fine-tuned model is over the accuracy budget."""
    tried = [round(sparsity * f, 4) for f in (1.0, 0.75, 0.5, 0.25, 0.0)]
    return [s for i, s in enumerate(tried) if s not in tried[:i]]


def prune_finetune_stage(state: RunState, cfg: CompressConfig):
    """Structured pruning, then fine-tuning; pruned less while the fine-tuned model loses more
    held-out accuracy than --max-accuracy-drop (the int8 model is checked again after export)."""
    from dataclasses import replace

    state.source_model = state.model
    floor = state.records[0].accuracy - cfg.max_accuracy_drop / 100
    tried = []
    for sparsity in backoff_schedule(cfg.prune.sparsity):
        pruned = _prune(state, cfg, replace(cfg.prune, sparsity=sparsity))
        tuned = _finetune(state, cfg)
        tried.append({"sparsity": sparsity, "macs_removed": pruned.details["macs_removed"],
                      "finetuned_accuracy": tuned.accuracy})
        if tuned.accuracy >= floor - 1e-12:
            break
    pruned.details["backoff"] = {"asked": cfg.prune.sparsity, "used": tried[-1]["sparsity"], "tried": tried,
                                 "accuracy_floor": floor}
    return state, [pruned, tuned]


ANALYSIS_SAMPLES = 600  # MI needs more samples than int8 calibration; KDE cost grows as N^2



# The pipeline: each stage is (state, cfg) -> (state, StageRecord or list of them).
STAGES = (load_stage, prune_finetune_stage, export_stage, share_stage, archive_stage)
REPORT_FILES = ("report.json", "report.md", "report.html")


def _run(source, cfg, target, data_path, builtin_data, tmp: Path, out: Path, progress, fit=None,
         keep_source_as: str | None = None) -> Report:
    from tinyprune.report.html import write_html

    state = RunState(source, target, tmp, progress, data_path, builtin_data)
    fit_summary = None
    if fit is None:
        for stage in STAGES:
            state, produced = stage(state, cfg)
            state.records.extend(produced if isinstance(produced, (list, tuple)) else [produced])
    else:
        from tinyprune import fit as fit_mod

        state, produced = load_stage(state, cfg)
        state.records.append(produced)
        chosen, trials, limits = fit_mod.search(state, cfg, fit, tmp)
        fit_mod.adopt(chosen, trials, tmp)
        state = chosen["state"]
        fit_summary = fit_mod.summary(chosen, trials, limits)
        fit_mod.pareto_png(fit_summary, tmp / "fit.png")
        state.declare("fit.png")
        # the report states the configuration found; the user's accuracy budget is reported against
        cfg = replace(cfg, prune=replace(cfg.prune, sparsity=chosen["sparsity"]), deepcompress=None)
    shown = source.path
    if keep_source_as:  # after the stages: --fit adopts a trial's state and its file list
        state.write(keep_source_as, Path(source.path).read_bytes())
        shown = out / keep_source_as
    state.declare(*REPORT_FILES)
    splits = state.splits
    report = Report(
        tool_version=__version__,
        model={"path": str(shown), "format": state.loaded.format, "input_shape": [1, *splits.sample_shape],
               "classes": splits.classes},
        data=splits.summary(),
        target=target.to_dict(),
        config=cfg.to_dict(),
        stages=state.records,
        layers=state.layers,
        artifacts=[str(out / a) for a in state.artifacts],
        compression=state.deep.to_dict() if state.deep is not None else None,
        deployed=deployed(state, cfg),
        fit=fit_summary,
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
    _needs_labels(splits, "plane")
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


def _layer_records(model, pruned, x, y, criterion: str, cache_dir=None, with_mi: bool = True) -> list[dict]:
    """Per layer: widths, and the MI with the labels ``y`` of what was kept and removed (measured
    on the original model)."""
    from tinyprune.prune.mi import model_channel_mi

    mi = model_channel_mi(model, x, y, cache_dir=cache_dir) if with_mi else {}
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


def _needs_labels(splits, command: str) -> None:
    if splits.task.kind != "classify":
        raise DataError(f"{command} measures information about class labels; this data is a {splits.task.kind} task "
                        "(compress works on it with a label-free criterion)")


def analyze(source: ModelSource, cfg: CompressConfig, data_path: Path | None, out_dir: Path | None,
            builtin_data: bool = False, mark: bool = True) -> dict:
    """Per-layer and per-channel MI with the labels; writes mi.json and mi.png to ``out_dir``.

    ``mark``: also run ``cfg.prune`` (criterion, sparsity) on the analysis samples, without
    fine-tuning, and mark per layer the channels it removes."""
    from tinyprune.prune.mi import model_channel_mi
    from tinyprune.report.plots import plot_channel_mi

    t = time.perf_counter()
    loaded, model, splits = _load_stage(source, cfg, data_path, builtin_data)
    _needs_labels(splits, "analyze")
    x, y = analysis_set(splits)
    mi = model_channel_mi(model, x, y, cache_dir=cfg.cache_dir)
    removed, marked = {}, None
    if mark:
        from tinyprune.prune import protocol, prune_to_macs

        protocol.check_task(cfg.prune.criterion, splits.task.kind)
        pruned = prune_to_macs(model, cfg.prune, x, y, splits.classes, train=(splits.x_train, splits.y_train),
                               seed=cfg.seed, cache_dir=cfg.cache_dir)
        removed = {l["name"]: sorted(set(range(l["channels_before"])) - set(pruned.kept.get(l["name"], [])))
                   for l in pruned.layers}
        marked = {"criterion": cfg.prune.criterion, "sparsity": cfg.prune.sparsity, "compensate": cfg.prune.compensate,
                  "macs_before": pruned.macs_before, "macs_after": pruned.macs_after}
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
            **({"removed": removed.get(name, [])} if mark else {}),
        })
    result = {
        "schema_version": 1, "tool_version": __version__, "model": str(source.path), "format": loaded.format,
        "estimator": "kde-binned (Kolchinsky-Tracey upper bound, binned FFT kernel sums), spatial mean per channel, nats",
        "label_entropy": float(_label_entropy(y)), "samples": int(len(x)),
        "seconds": time.perf_counter() - t, "layers": layers, "marked": marked,
    }
    out = Path(out_dir) if out_dir else Path("tinyprune-out") / f"{source.path.stem}-mi"
    with staged_output(out) as tmp:
        (tmp / "mi.json").write_text(json.dumps(result, indent=2) + "\n")
        plot_channel_mi(layers, result["label_entropy"], tmp / "mi.png", marked)
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


def demo(cfg: CompressConfig, out_dir: Path | None = None, progress: Progress = _quiet, fit=None) -> Report:
    import torch

    out = Path(out_dir) if out_dir else Path("tinyprune-out") / "demo"
    target = targets.configure(targets.load(cfg.target), cfg.runtime, cfg.clock_mhz)  # a bad target fails before the training
    if fit is not None:
        fit.limits(target)
    model = train_demo_model(cfg.seed, progress=progress)
    # Published with the results (out/digits_cnn.pt) so `tinyprune compress` can be tried on it by
    # hand, and nothing outside --out is written. Only torch.nn classes: it loads through the safe
    # (weights_only) path like a user's file.
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "digits_cnn.pt"
        torch.save(model, path)
        return compress(ModelSource(path), cfg, out_dir=out, progress=progress, builtin_data=True, fit=fit,
                        keep_source_as="digits_cnn.pt")
