"""Task kinds: what a model's outputs mean, how it is trained and how its quality is scored.

* ``classify``: integer labels ``y``; cross-entropy; quality is accuracy.
* ``regress``: float targets ``y`` of shape [N] or [N, k] (k = the model's outputs); mean squared
  error; quality is R^2 (1 - SSE / SST over every output), with MSE and MAE beside it.
* ``reconstruct`` (autoencoders, anomaly detection): the data is ``x`` only, the target is the
  input itself; mean squared error. Quality is the ROC AUC of the per-sample reconstruction error
  when the held-out part has ``anomaly`` labels (0 normal, 1 anomaly: the MLPerf Tiny AD metric),
  else the explained variance 1 - MSE / Var(x). Training uses normal samples only.

Every stage reports one *score* per model, in [0, 1] or below (R^2 can be negative), higher
better, so the accuracy budget (``--max-accuracy-drop`` points), pruning back-off, weight
sharing's bit search and ``--fit`` work on every task unchanged; the task's own metrics (MSE,
MAE, AUC) are kept beside it in every record.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinyprune.errors import DataError

KINDS = ("classify", "regress", "reconstruct")


@dataclass(frozen=True)
class Task:
    kind: str
    anomaly_labels: bool = False  # reconstruct: the held-out part has anomaly labels (score = AUC)

    @property
    def metric(self) -> str:
        """Name of the score every stage reports."""
        if self.kind == "classify":
            return "accuracy"
        if self.kind == "regress":
            return "r2"
        return "auc" if self.anomaly_labels else "explained_variance"

    @property
    def label(self) -> str:
        return {"accuracy": "accuracy", "r2": "R²", "auc": "ROC AUC", "explained_variance": "explained variance"}[self.metric]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "metric": self.metric, "anomaly_labels": self.anomaly_labels}


CLASSIFY = Task("classify")


def is_class_labels(y) -> bool:
    """Integer (or boolean) targets are class labels; float ones are regression targets."""
    return np.asarray(y).dtype.kind in "iub"


def for_targets(y: np.ndarray) -> Task:
    """The task whose score fits targets ``y`` alone: classify for integer labels, else regress
    (R^2 over every output; for an autoencoder's targets, the input, it equals the explained variance)."""
    return CLASSIFY if is_class_labels(y) else Task("regress")


def metrics(task: Task, outputs: np.ndarray, targets: np.ndarray, anomaly: np.ndarray | None = None) -> dict:
    """The task's metrics of ``outputs`` (float model outputs, [N, ...]) against ``targets``;
    ``score`` is the headline (see the module doc)."""
    n = len(outputs)
    if task.kind == "classify":
        acc = float((outputs.reshape(n, -1).argmax(1) == targets).mean())
        return {"score": acc, "accuracy": acc}
    out = outputs.reshape(n, -1).astype(np.float64)
    tgt = targets.reshape(n, -1).astype(np.float64)
    err = (out - tgt) ** 2
    if task.kind == "regress":
        sst = float(((tgt - tgt.mean(0)) ** 2).sum())
        r2 = 1.0 - float(err.sum()) / max(sst, 1e-30)
        return {"score": r2, "r2": r2, "mse": float(err.mean()), "mae": float(np.abs(out - tgt).mean())}
    per_sample = err.mean(1)
    if anomaly is not None:
        from sklearn.metrics import roc_auc_score

        auc = float(roc_auc_score(anomaly, per_sample))
        normal = anomaly == 0
        return {"score": auc, "auc": auc, "mse": float(per_sample[normal].mean()),
                "mse_anomalous": float(per_sample[~normal].mean())}
    var = float(((tgt - tgt.mean(0)) ** 2).mean())  # around each value's own mean, as R² does
    explained = 1.0 - float(per_sample.mean()) / max(var, 1e-30)
    return {"score": explained, "explained_variance": explained, "mse": float(per_sample.mean())}


def detect(requested: str | None, y: np.ndarray | None) -> str:
    """The task kind from ``--task`` or, when not given, from the data's targets."""
    if requested is not None and requested not in KINDS:
        raise DataError(f"--task must be one of {', '.join(KINDS)}, got {requested!r}")
    found = "reconstruct" if y is None else "classify" if is_class_labels(y) else "regress" \
        if y.dtype.kind == "f" else None
    if found is None:
        raise DataError(f"y has dtype {y.dtype}; expected integer class labels or float regression targets")
    if requested is None:
        return found
    if requested == "classify" and found != "classify":
        what = "no y (x only)" if y is None else f"float y ({y.dtype})"
        raise DataError(f"--task classify needs integer class labels y; the data has {what}")
    if requested == "regress" and y is None:
        raise DataError("--task regress needs targets y (float, [N] or [N, outputs]); the data has x only")
    return requested


def check_anomaly(anomaly: np.ndarray, n: int, what: str) -> np.ndarray:
    if anomaly.ndim != 1 or len(anomaly) != n:
        raise DataError(f"{what}: anomaly must be a 1-D array of {n} labels (one per sample), got shape {anomaly.shape}")
    if anomaly.dtype.kind not in "iubf" or not np.isin(anomaly, (0, 1)).all():
        raise DataError(f"{what}: anomaly labels must be 0 (normal) or 1 (anomaly), found "
                        f"{sorted(set(np.unique(anomaly).tolist()) - {0, 1})[:5]}")
    return anomaly.astype(np.int64)


def targets_for(kind: str, x: np.ndarray, y: np.ndarray | None, outputs: tuple[int, ...], what: str) -> np.ndarray:
    """The training target per sample: class labels, float targets in the output's shape, or
    (reconstruct) the input itself in the output's shape."""
    per_output = int(np.prod(outputs))
    if kind == "classify":
        if y.ndim != 1:
            raise DataError(f"{what}: y must be a 1-D array of integer class labels, got shape {y.shape}")
        return y.astype(np.int64)
    if kind == "reconstruct":
        per_input = int(np.prod(x.shape[1:]))
        if per_input != per_output:
            raise DataError(f"--task reconstruct needs a model whose output is as large as its input: the input has "
                            f"{per_input} values per sample, the output {per_output}; pass --task classify or regress")
        return np.ascontiguousarray(x.reshape(len(x), *outputs))
    y = y.astype(np.float32)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[1] != per_output:
        raise DataError(f"{what}: float y are regression targets and must be [N] or [N, {per_output}] (the model's "
                        f"outputs), got shape {list(y.shape)}; to classify, y must hold integer class labels")
    if not np.isfinite(y).all():
        raise DataError(f"{what}: y contains NaN or infinite values")
    return np.ascontiguousarray(y.reshape(len(y), *outputs))


INFORMATION_BINS = 10  # values of the discrete target that label-MI criteria measure information about


def information_labels(kind: str, x: np.ndarray, y: np.ndarray, bins: int = INFORMATION_BINS) -> np.ndarray:
    """A discrete variable carrying what the task's target carries, for criteria that measure
    I(channel; Y) with a KDE bound over classes (``mi``).

    * classify: the class labels themselves;
    * regress: a 1-D target cut into ``bins`` equal-frequency bins; a k-dimensional one clustered
      by k-means on its standardized values;
    * reconstruct: the target is the input itself, clustered by k-means on the flattened inputs:
      a channel that carries the input's coarse structure (which cluster it is in) keeps its
      information, as a class-informative channel does for a classifier. (The bottleneck code
      would be the other choice; it needs the model split at its bottleneck, the input does not.)

    Deterministic (k-means seeded, sorted bins), so the same data gives the same ranking. Every
    value holds at least 2 % of the samples (smaller k-means clusters are folded into their
    nearest neighbour).
    """
    if kind == "classify":
        return np.asarray(y).astype(np.int64)
    target = np.asarray(x if kind == "reconstruct" else y, dtype=np.float64).reshape(len(x), -1)
    bins = max(2, min(bins, len(target) // 5))
    if target.shape[1] == 1:
        edges = np.unique(np.quantile(target[:, 0], np.linspace(0, 1, bins + 1)[1:-1]))
        return np.searchsorted(edges, target[:, 0], side="right").astype(np.int64)
    from sklearn.cluster import KMeans

    scale = target.std(0)
    z = (target - target.mean(0)) / np.where(scale > 0, scale, 1.0)
    centers = KMeans(n_clusters=bins, n_init=4, random_state=0).fit(z).cluster_centers_
    # a cluster of a few outliers is no variable to measure information about (and the KDE bound
    # needs 2+ samples per value): fold clusters under 2 % of the samples into their neighbours
    while True:
        labels = ((z[:, None, :] - centers[None]) ** 2).sum(-1).argmin(1)
        counts = np.bincount(labels, minlength=len(centers))
        if len(centers) <= 2 or counts.min() >= max(2, len(z) // 50):
            break
        centers = np.delete(centers, counts.argmin(), axis=0)
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)
