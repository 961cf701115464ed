"""Corrupt .tflite files: `measure` answers exit 0 (still a valid model) or 2 (one line), never a crash."""

import contextlib
import io
import random

import numpy as np
import pytest

from tinyprune.cli import main


@pytest.fixture(scope="module")
def tflite_model(tmp_path_factory):
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([
        tf.keras.Input((8, 8, 1)), tf.keras.layers.Conv2D(4, 3, activation="relu"),
        tf.keras.layers.DepthwiseConv2D(3), tf.keras.layers.Flatten(), tf.keras.layers.Dense(10)])

    def calibration():
        for _ in range(8):
            yield [np.random.default_rng(0).random((1, 8, 8, 1), dtype=np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = calibration
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    return conv.convert()


def _fuzz(blob: bytes, path, cases: int, seed: int) -> dict:
    rng = random.Random(seed)
    codes: dict[int, int] = {}
    for _ in range(cases):
        data = bytearray(blob)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["measure", str(path), "--no-timing", "--no-arena", "--json"])
        codes[code] = codes.get(code, 0) + 1
        if code != 0:
            lines = err.getvalue().strip().splitlines()
            assert code == 2 and len(lines) == 1 and lines[0].startswith("tinyprune: error: "), (code, err.getvalue())
    return codes


def test_mutated_flatbuffers_exit_0_or_2(tflite_model, tmp_path):
    codes = _fuzz(tflite_model, tmp_path / "m.tflite", 300, seed=0)
    assert codes.get(2, 0) > 0 and codes.get(0, 0) > 0  # both kinds occur: the mutations reach the parser


@pytest.mark.slow
def test_mutated_flatbuffers_exit_0_or_2_thousands(tflite_model, tmp_path):
    codes = _fuzz(tflite_model, tmp_path / "m.tflite", 3000, seed=1)
    assert set(codes) <= {0, 2}


def test_check_accuracy_data_with_labels_beyond_the_outputs_is_bad_input(tflite_model, tmp_path):
    from tinyprune.budget import tflite_quality
    from tinyprune.errors import DataError

    np.savez(tmp_path / "d.npz", x=np.zeros((5, 8, 8, 1), np.float32), y=np.array([0, 1, 2, 12, 3]))
    with pytest.raises(DataError, match="labels span 0..12 but the model has 10 outputs"):
        tflite_quality(tflite_model, tmp_path / "d.npz")


@pytest.mark.parametrize("field", ["OutputsAsNumpy", "InputsAsNumpy"])
def test_check_of_an_op_on_tensor_minus_1_is_one_line_exit_2(tflite_model, tmp_path, capsys, monkeypatch, field):
    """-1 means "no tensor": as an op's result or data input it was taken as a key (internal error)."""
    from tinyprune.measure.graph import _schema

    data = bytearray(tflite_model)
    getattr(_schema().Model.GetRootAs(data, 0).Subgraphs(0).Operators(0), field)()[0] = -1  # a view into data
    (tmp_path / "m.tflite").write_bytes(bytes(data))
    (tmp_path / "tinyprune.toml").write_text('[[model]]\npath = "m.tflite"\nmax_macs = 1000000\n')
    monkeypatch.chdir(tmp_path)
    code = main(["check"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "tensor -1" in err[0], err
