import numpy as np
import pytest

from tinyprune.config import DataConfig
from tinyprune.data import RawData, fit_layout, load_npz, prepare
from tinyprune.errors import DataError
from tinyprune.testing import MODELS


def _raw(x, y):
    return RawData(x, y, None, None, "test")


def test_nchw_nhwc_and_nhw_are_detected(digits):
    model = MODELS["cnn_bn"]().eval()
    x = digits.x_train  # N,1,8,8
    for given, layout in ((x, "nchw"), (x.transpose(0, 2, 3, 1), "nhwc"), (x[:, 0], "nhw")):
        s = prepare(_raw(given, digits.y_train), model, DataConfig(), seed=0)
        assert s.layout == layout and s.sample_shape == (1, 8, 8) and s.classes == 10


def test_flat_data_for_mlp(digits):
    s = prepare(_raw(digits.x_train.reshape(len(digits.x_train), -1), digits.y_train), MODELS["mlp"]().eval(),
                DataConfig(), 0)
    assert s.layout == "flat" and s.sample_shape == (64,)


def test_split_is_deterministic_and_disjoint(digits):
    model = MODELS["cnn_bn"]().eval()
    a = prepare(digits, model, DataConfig(), seed=3)
    b = prepare(digits, model, DataConfig(), seed=3)
    c = prepare(digits, model, DataConfig(), seed=4)
    assert np.array_equal(a.x_eval, b.x_eval) and not np.array_equal(a.x_eval, c.x_eval)
    assert len(a.x_train) + len(a.x_eval) == len(digits.x_train)
    assert len(a.x_eval) == round(0.2 * len(digits.x_train))
    train_rows = {r.tobytes() for r in a.x_train}
    # calibration comes from the training part, never from the held-out part
    assert all(r.tobytes() in train_rows for r in a.x_calib)


def test_explicit_test_split_is_the_held_out_part(digits):
    x, y = digits.x_train, digits.y_train
    raw = RawData(x[:1000], y[:1000], x[1000:], y[1000:], "t")
    s = prepare(raw, MODELS["cnn_bn"]().eval(), DataConfig(), 0)
    assert len(s.x_eval) == len(x) - 1000 and np.array_equal(s.y_eval, y[1000:])


def test_labels_out_of_range(digits):
    y = digits.y_train.copy()
    y[5] = 10
    with pytest.raises(DataError, match="labels span 0..10 but the model has 10 outputs"):
        prepare(_raw(digits.x_train, y), MODELS["cnn_bn"]().eval(), DataConfig(), 0)


def test_shape_that_does_not_fit(digits):
    x = np.zeros((20, 3, 16, 16), np.float32)
    with pytest.raises(DataError, match="does not fit the model"):
        prepare(_raw(x, np.zeros(20, np.int64)), MODELS["cnn_bn"]().eval(), DataConfig(), 0)


@pytest.mark.parametrize("x, y, message", [
    (np.zeros((10, 1, 8, 8)), np.zeros(9, int), "10 samples but y has 9"),
    (np.zeros((10, 1, 8, 8)), np.zeros(10), "integer class labels"),
    (np.full((10, 1, 8, 8), np.nan), np.zeros(10, int), "NaN"),
])
def test_malformed_pairs(x, y, message):
    with pytest.raises(DataError, match=message):
        prepare(_raw(x, y), MODELS["cnn_bn"]().eval(), DataConfig(), 0)


def test_npz_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_npz(tmp_path / "none.npz")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "keys.npz", images=np.zeros(3))
    with pytest.raises(DataError, match="expected x and y"):
        load_npz(tmp_path / "keys.npz")
    np.savez(tmp_path / "obj.npz", x=np.array([object()]), y=np.zeros(1))
    with pytest.raises(DataError):
        load_npz(tmp_path / "obj.npz")  # object arrays would need unpickling: refused


def test_the_trial_forward_pass_runs_in_eval_mode(digits):
    # a batch norm in training mode refuses the trial batch of one
    model = MODELS["autoencoder"]().train()
    layout, x, outputs = fit_layout(model, digits.x_train.reshape(len(digits.x_train), 64))
    assert (layout, x.shape[1:], outputs) == ("flat", (64,), (64,))
    assert model.training  # the caller's mode comes back
