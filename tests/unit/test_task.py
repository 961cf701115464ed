"""Task metrics and the splits of tasks beyond classification (tinyprune.task, tinyprune.data)."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from tinyprune.config import DataConfig
from tinyprune.data import RawData, prepare
from tinyprune.task import Task, metrics
from tinyprune.testing import MODELS


def test_scores_measure_against_each_outputs_own_mean():
    rng = np.random.default_rng(0)
    y = np.stack([rng.normal(0, 1, 200), rng.normal(100, 1, 200)], 1)
    means = np.broadcast_to(y.mean(0), y.shape)
    # predicting each output's mean explains nothing, whatever the outputs' offsets
    assert metrics(Task("regress"), means, y)["r2"] == pytest.approx(0.0, abs=1e-9)
    assert metrics(Task("reconstruct"), means, y)["explained_variance"] == pytest.approx(0.0, abs=1e-9)
    assert metrics(Task("regress"), y, y)["r2"] == 1.0
    auc = metrics(Task("reconstruct", True), y + np.r_[np.zeros(150), np.ones(50)][:, None], y,
                  np.r_[np.zeros(150, int), np.ones(50, int)])
    assert auc["auc"] == 1.0 and auc["mse"] == 0.0 and auc["mse_anomalous"] == 1.0


def test_every_anomaly_is_held_out_and_only_normal_samples_train(digits):
    x = digits.x_train.reshape(len(digits.x_train), 64)
    anomaly = (digits.y_train == 9).astype(np.int64)
    splits = prepare(RawData(x, None, None, None, "t", anomaly_train=anomaly), MODELS["autoencoder"]().eval(),
                     DataConfig(), seed=3)
    assert splits.task.kind == "reconstruct" and splits.task.metric == "auc"
    assert splits.anomaly_eval.sum() == anomaly.sum()  # all of them
    normal_eval = int((splits.anomaly_eval == 0).sum())
    assert normal_eval == round((anomaly == 0).sum() * 0.2)
    assert len(splits.x_train) + normal_eval == (anomaly == 0).sum()
    # the targets are the inputs
    assert np.array_equal(splits.y_train, splits.x_train)


def test_plane_is_refused_for_a_task_without_labels(tmp_path, digits):
    from tinyprune import api
    from tinyprune.config import CompressConfig
    from tinyprune.errors import ConfigError

    torch.save(MODELS["autoencoder"]().eval(), tmp_path / "ae.pt")
    np.savez(tmp_path / "x.npz", x=digits.x_train.reshape(len(digits.x_train), 64))
    with pytest.raises(ConfigError, match="--plane measures I\\(T;Y\\) with class labels; this data is a reconstruct"):
        api.compress(api.ModelSource(tmp_path / "ae.pt"), CompressConfig(plane=True), data_path=tmp_path / "x.npz",
                     out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_analysis_key_sees_a_graphs_code():
    import torch.fx as fx

    from tinyprune.information.cache import analysis_key

    class Act(nn.Module):
        def __init__(self, f):
            super().__init__()
            self.lin, self.f = nn.Linear(4, 4), f

        def forward(self, x):
            return self.f(self.lin(x))

    torch.manual_seed(0)
    a = fx.symbolic_trace(Act(torch.relu))
    b = fx.symbolic_trace(Act(torch.tanh))
    b.load_state_dict(a.state_dict())
    x = {"x": np.zeros((2, 4), np.float32)}
    assert analysis_key("t", a, x, {}) != analysis_key("t", b, x, {})


def test_information_labels_quantize_what_the_target_carries():
    from tinyprune.task import information_labels

    rng = np.random.default_rng(0)
    y = rng.normal(size=500).astype(np.float32)
    bins = information_labels("regress", np.zeros((500, 1)), y)
    assert bins.dtype == np.int64 and set(np.unique(bins)) == set(range(10))
    assert np.bincount(bins).min() >= 45  # equal-frequency bins
    assert (np.diff(bins[np.argsort(y)]) >= 0).all()  # ordered as y
    # two well separated groups of inputs: the reconstruct labels split along them, the same each call
    x = np.concatenate([rng.normal(0, 0.1, (100, 8)), rng.normal(5, 0.1, (100, 8))]).astype(np.float32)
    first, again = information_labels("reconstruct", x, x, bins=2), information_labels("reconstruct", x, x, bins=2)
    assert (first == again).all() and len(set(first[:100])) == 1 and set(first[:100]) != set(first[100:])
    classes = np.arange(20) % 3
    assert (information_labels("classify", x[:20], classes) == classes).all()


@pytest.mark.parametrize("name, shape, kind", [("regressor", (1, 8, 8), "regress"), ("autoencoder", (64,), "reconstruct")])
def test_mipp_needs_no_labels(name, shape, kind):
    # MI between adjacent layers: a regression head and an autoencoder prune like a classifier,
    # their outputs (the regression targets, the reconstruction) whole
    from tinyprune.config import PruneConfig
    from tinyprune.prune import prune_to_macs
    from tinyprune.task import information_labels

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x = rng.random((300, *shape), dtype=np.float32)
    y = x if kind == "reconstruct" else rng.random((300, 2), dtype=np.float32)
    res = prune_to_macs(model, PruneConfig(criterion="mipp", sparsity=0.5, compensate=False), x, y, None,
                        labels=information_labels(kind, x, y))
    assert res.macs_after <= 0.5 * res.macs_before + 1
    last = res.layers[-1]
    assert last["channels_after"] == last["channels_before"]


def _trained_regression(name: str, x: np.ndarray, y: np.ndarray, epochs: int = 4, lr: float = 3e-3) -> nn.Module:
    from tinyprune.config import FinetuneConfig
    from tinyprune.train import fit

    torch.manual_seed(0)
    return fit(MODELS[name](), x, y, FinetuneConfig(epochs=epochs, lr=lr), seed=0).eval()


def test_vib_trains_its_gates_on_the_tasks_squared_error(digits):
    # VIB on a regression head: the loss is the squared error (fit follows float targets) + the KL;
    # closed gates remove units, the regression outputs stay whole
    from tinyprune.config import PruneConfig
    from tinyprune.prune import prune_to_macs

    x = digits.x_train[:600]
    y = np.eye(10, dtype=np.float32)[digits.y_train[:600]][:, :2] * 2 + 0.1 * x.mean((1, 2, 3))[:, None]
    model = _trained_regression("regressor", x, y)
    res = prune_to_macs(model, PruneConfig(criterion="vib", sparsity=0.0, options={"gamma": 5e-2, "epochs": 3}),
                        x, y, None)
    prepared = res.record["prepared"]
    # gamma counts in nats per sample, as with classes: against the mean squared error it is
    # gamma * 2 s^2 / D, s^2 the model's squared error before VIB, D = 2 outputs
    with torch.no_grad():
        s2 = float(((model(torch.from_numpy(x)) - torch.from_numpy(y)) ** 2).mean())
    assert prepared["kl_weight"] == pytest.approx(5e-2 * 2 * s2 / 2, rel=1e-3)
    history = prepared["history"]
    assert history[-1]["kl"] < history[0]["kl"] and history[-1]["ce"] < 1.0  # the squared error, not a CE
    assert res.macs_after < 0.5 * res.macs_before  # gates closed on the squared-error objective
    assert prepared["max_abs_diff"] < 1e-4  # the pruned model is the gated one
    assert res.layers[-1]["channels_after"] == res.layers[-1]["channels_before"] == 2


def test_mspic_judges_unit_removal_by_variance_lost_on_float_targets(digits):
    # a residual net trained to regress one-hot digit codes: MSPIC measures each unit's information
    # about the quantized target and keeps a removal only while 1 - R^2 rises by at most the limit
    from tinyprune.prune.skip_units import mspic
    from tinyprune.task import Task, information_labels
    from tinyprune.train import score

    model = _trained_regression("dw_residual", digits.x_train, np.eye(10, dtype=np.float32)[digits.y_train],
                                epochs=10, lr=1e-2)
    x = digits.x_train[:600]
    y = np.eye(10, dtype=np.float32)[digits.y_train[:600]]
    base = score(model, x, y, Task("regress"))
    assert base > 0.5
    gm, records = mspic(model, x, y, labels=information_labels("regress", x, y), stages=1, max_error_increase=0.6)
    rec = records[0]
    assert rec["base_error"] == pytest.approx(1 - base, abs=1e-6)
    assert len(rec["mi"]) == 2 and all(0 <= v <= np.log(10) + 1e-6 for v in rec["mi"])
    for p in rec["policies"]:  # every policy is judged as the fraction of variance it loses
        assert 0 <= p["error"] <= 10
    assert rec["removed"] and rec["error"] <= rec["base_error"] + 0.6
    # the same removal costs more than a tighter limit allows: nothing goes
    _, strict = mspic(model, x, y, labels=information_labels("regress", x, y), stages=1, max_error_increase=0.2)
    assert strict[0]["removed"] == [] and strict[0]["policies"]
