"""Datasets: the built-in example, user ``.npz`` files, layout detection and deterministic splits.

User data in an ``.npz``:
* ``x``/``y`` — one pool, split here into fine-tune / held-out evaluation parts; or
* ``x_train``/``y_train``/``x_test``/``y_test`` — the test arrays are the held-out part.
``y`` holds integer class labels (classify) or float targets (regress). Autoencoders
(reconstruct) bring ``x`` only (or ``x_train``/``x_test``), optionally with ``anomaly`` (or
``anomaly_test``) labels, 0 normal / 1 anomaly; see ``tinyprune.task``.
``x`` is fed to the model exactly as stored (cast to float32; no rescaling). Images may be
NCHW or NHWC (or NHW for one channel): the layout the model accepts is found by a trial
forward pass. When both run (a model that flattens its input), the data is taken as NHWC if
its last axis has at most 4 entries and its second more than 4, else as NCHW; ``--layout``
forces one.
The int8 calibration set is drawn from the training part, never from the held-out part.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyprune.config import DataConfig
from tinyprune.errors import DataError
from tinyprune.task import CLASSIFY, Task, check_anomaly, detect, targets_for


MIN_TRAIN = 16  # fewer samples cannot fine-tune (batches of 2+), calibrate or analyse anything
MIN_EVAL = 4  # below this one sample moves the accuracy by more than 25 points


@dataclass(frozen=True)
class Splits:
    x_train: np.ndarray  # float32, model layout (N, C, H, W) or (N, F)
    y_train: np.ndarray  # training targets: int64 labels, or float32 in the output's shape (tinyprune.task)
    x_eval: np.ndarray
    y_eval: np.ndarray
    x_calib: np.ndarray
    classes: int  # number of model outputs (per sample); for classify, labels are 0..classes-1
    layout: str  # what the file held: nchw, nhwc, nhw, ncl or flat
    source: str
    task: Task = CLASSIFY
    anomaly_eval: np.ndarray | None = None  # reconstruct: 0/1 per held-out sample

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def summary(self) -> dict:
        return {
            "source": self.source,
            "layout": self.layout,
            "sample_shape": list(self.sample_shape),
            "classes": self.classes,
            "task": self.task.to_dict(),
            "train": int(len(self.x_train)),
            "eval": int(len(self.x_eval)),
            "calibration": int(len(self.x_calib)),
        }


@dataclass(frozen=True)
class RawData:
    x_train: np.ndarray
    y_train: np.ndarray | None  # None: x only (reconstruct)
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    source: str
    anomaly_train: np.ndarray | None = None  # with x (one pool): 0/1 per sample
    anomaly_test: np.ndarray | None = None


def builtin_digits() -> RawData:
    """scikit-learn's ``load_digits``: 1,797 real 8x8 handwritten digits that ship with sklearn."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # 0..16 grey levels -> [0, 1], NCHW
    return RawData(x, d.target.astype(np.int64), None, None, "sklearn.datasets.load_digits")


def load_npz(path: str | Path) -> RawData:
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"data file {path} is empty")
    try:
        # allow_pickle=False: object arrays would unpickle arbitrary code
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path.name} is not a readable .npz file ({str(exc).splitlines()[0][:120]})") from None
    if "x" in arrays:
        return RawData(arrays["x"], arrays.get("y"), None, None, str(path), anomaly_train=arrays.get("anomaly"))
    if {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys():
        return RawData(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], str(path))
    if {"x_train", "x_test"} <= arrays.keys() and not {"y_train", "y_test"} & arrays.keys():
        return RawData(arrays["x_train"], None, arrays["x_test"], None, str(path),
                       anomaly_test=arrays.get("anomaly_test"))
    raise DataError(
        f"{path.name} has arrays {sorted(arrays)}; expected x and y, or x_train, y_train, x_test, y_test "
        "(an autoencoder: x, or x_train and x_test, with optional anomaly / anomaly_test labels)"
    )


def _check_x(x: np.ndarray, y: np.ndarray | None, what: str) -> np.ndarray:
    if x.dtype.kind not in "fiub":
        raise DataError(f"{what}: x has dtype {x.dtype}; expected numbers")
    if y is not None and (y.ndim == 0 or len(x) != len(y)):
        raise DataError(f"{what}: x has {len(x)} samples but y has {len(y) if y.ndim else 'no axis'}")
    if len(x) < 2:
        raise DataError(f"{what}: need at least 2 samples, got {len(x)}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{what}: x contains NaN or infinite values")
    return x


def _check_pair(x: np.ndarray, y: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """x and integer class labels y."""
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"{what}: y must be a 1-D array of integer class labels, got shape {y.shape} dtype {y.dtype}")
    return _check_x(x, y, what), y.astype(np.int64)


def _candidates(x: np.ndarray, layout: str) -> list[tuple[str, np.ndarray]]:
    if x.ndim == 4:
        nchw = ("nchw", x)
        nhwc = ("nhwc", np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        return {"nchw": [nchw], "nhwc": [nhwc]}.get(layout, [nchw, nhwc])
    if x.ndim == 3:  # one-channel images, or [N, C, L] signals for Conv1d
        return [("nhw", np.ascontiguousarray(x[:, None])), ("ncl", x)]
    return [("flat", x)]


def _channels_last(x: np.ndarray) -> bool:
    """For 4-D data the model accepts either way (e.g. an MLP that flattens): guess from the shape."""
    return x.shape[-1] <= 4 < x.shape[1]


def fit_layout(model, x: np.ndarray, layout: str = "auto") -> tuple[str, np.ndarray, tuple[int, ...]]:
    """Return (layout, x in the model's layout, the output's shape per sample) via a trial forward pass."""
    import torch

    errors, fits = [], []
    was_training = getattr(model, "training", False)
    try:
        model.eval()  # in training mode a batch norm refuses a batch of one
    except (AttributeError, NotImplementedError):  # a torch.export program: already inference-only
        was_training = False
    for name, cand in _candidates(x, layout):
        try:
            with torch.no_grad():
                out = model(torch.from_numpy(cand[:1]))
        except Exception as exc:  # a shape mismatch surfaces as any of several exception types
            errors.append(f"{name} {list(cand.shape[1:])}: {str(exc).splitlines()[0][:100]}")
            continue
        finally:
            if was_training:
                model.train()
        if not isinstance(out, torch.Tensor) or out.dim() < 2:
            raise DataError(f"the model returns {getattr(out, 'shape', type(out).__name__)}; expected one tensor "
                            "[N, outputs] (class scores, regression values) or [N, ...] (a reconstruction)")
        fits.append((name, cand, tuple(int(d) for d in out.shape[1:])))
    if not fits:
        raise DataError(f"data of shape {list(x.shape[1:])} per sample does not fit the model (tried {'; '.join(errors)})")
    if len(fits) > 1 and fits[1][0] == "nhwc" and _channels_last(x):
        return fits[1]
    return fits[0]


def prepare(raw: RawData, model, cfg: DataConfig, seed: int) -> Splits:
    """Check the data against the model and split it deterministically (same seed, same split)."""
    kind = detect(cfg.task, raw.y_train)
    if kind == "classify":
        x, y = _check_pair(raw.x_train, raw.y_train, "training data")
    else:
        x, y = _check_x(raw.x_train, raw.y_train, "training data"), raw.y_train
    layout, x, outputs = fit_layout(model, x, cfg.layout)
    if kind == "classify" and len(outputs) != 1:
        raise DataError(f"--task classify needs class scores [N, classes]; the model returns [N, "
                        f"{', '.join(map(str, outputs))}] (an autoencoder? pass --task reconstruct)")
    classes = int(np.prod(outputs))
    rng = np.random.default_rng(seed)
    anomaly = None
    if raw.x_test is not None:
        if kind == "classify":
            xt, yt = _check_pair(raw.x_test, raw.y_test, "test data")
        else:
            xt, yt = _check_x(raw.x_test, raw.y_test, "test data"), raw.y_test
        _, xt, _ = fit_layout(model, xt, layout if layout in ("nchw", "nhwc") else "auto")
        if raw.anomaly_test is not None:
            anomaly = check_anomaly(raw.anomaly_test, len(xt), "test data")
        perm = rng.permutation(len(x))
        x_train, y_train, x_eval, y_eval = x[perm], None if y is None else y[perm], xt, yt
    else:
        pool_anomaly = None if raw.anomaly_train is None else check_anomaly(raw.anomaly_train, len(x), "data")
        perm = rng.permutation(len(x))
        if pool_anomaly is None:
            n_eval = max(1, int(round(len(x) * cfg.eval_fraction)))
            ev, tr = perm[:n_eval], perm[n_eval:]
        else:
            # an autoencoder learns what normal looks like: every anomaly is held out (for the
            # AUC), with the eval fraction of the normal samples; the other normal ones train
            normal, anomalous = perm[pool_anomaly[perm] == 0], perm[pool_anomaly[perm] == 1]
            n_eval = max(1, int(round(len(normal) * cfg.eval_fraction)))
            ev, tr = np.concatenate([normal[:n_eval], anomalous]), normal[n_eval:]
            anomaly = pool_anomaly[ev]
        x_train, x_eval = x[tr], x[ev]
        y_train, y_eval = (None, None) if y is None else (y[tr], y[ev])
    if anomaly is not None:
        if kind != "reconstruct":
            raise DataError(f"anomaly labels belong to --task reconstruct (an autoencoder); this run is {kind}")
        if len(np.unique(anomaly)) < 2:
            raise DataError(f"the held-out anomaly labels are all {int(anomaly[0])}; ROC AUC needs normal and "
                            "anomalous samples")
    task = Task(kind, anomaly_labels=anomaly is not None)
    if kind == "classify":
        _check_classes(y_train, y_eval, classes)
    else:
        y_train = targets_for(kind, x_train, y_train, outputs, "training data")
        y_eval = targets_for(kind, x_eval, y_eval, outputs, "test data")
    if len(x_train) < MIN_TRAIN or len(x_eval) < MIN_EVAL:
        raise DataError(f"{len(x_train)} training and {len(x_eval)} held-out samples: too few to fine-tune, "
                        f"calibrate and measure {task.label} (need at least {MIN_TRAIN} and {MIN_EVAL})")
    calib = x_train[: min(cfg.calib_samples, len(x_train))]
    return Splits(x_train, y_train, x_eval, y_eval, calib, classes, layout, raw.source, task, anomaly)


def _check_classes(y_train: np.ndarray, y_eval: np.ndarray, classes: int) -> None:
    for name, labels in (("training", y_train), ("test", y_eval)):
        if labels.min() < 0 or labels.max() >= classes:
            raise DataError(
                f"{name} labels span {labels.min()}..{labels.max()} but the model has {classes} outputs "
                f"(labels must be 0..{classes - 1})"
            )
    if len(np.unique(y_train)) < 2:
        raise DataError(f"the training labels hold one class only ({int(y_train[0])}); pruning criteria, "
                        "fine-tuning and accuracy need examples of at least two classes")
