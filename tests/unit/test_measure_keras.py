"""``measure`` on .tflite files tinyprune did not make: Keras models through TensorFlow's own converter.

The models are built (float, full-int8, and one with GELU, which TFLM lacks) by TF in a child
process, once, and cached in pytest's cache folder; their MACs and parameters are counted from
the Keras layer definitions in that same script, independently of tinyprune's TFLite reader.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BUILDER = r'''
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import tensorflow as tf

out = sys.argv[1]
tf.keras.utils.set_random_seed(0)

B = dict(bias_initializer="random_normal")  # zero biases would be dropped or shared by the converter

def cnn():
    inp = tf.keras.Input((12, 10, 3), batch_size=1)
    x = tf.keras.layers.Conv2D(8, 3, padding="same", activation="relu", **B)(inp)
    x = tf.keras.layers.DepthwiseConv2D(3, strides=2, padding="same", activation="relu", **B)(x)
    x = tf.keras.layers.Conv2D(16, 1, activation="relu", **B)(x)
    x = tf.keras.layers.MaxPooling2D(2)(x)
    x = tf.keras.layers.Flatten()(x)
    x = tf.keras.layers.Dense(20, activation="relu", **B)(x)
    return tf.keras.Model(inp, tf.keras.layers.Dense(5, **B)(x))

def gelu_mlp():
    inp = tf.keras.Input((16,), batch_size=1)
    x = tf.keras.layers.Dense(8)(inp)
    x = tf.keras.layers.Activation("gelu")(x)
    return tf.keras.Model(inp, tf.keras.layers.Dense(4)(x))

def independent_count(model):
    """MACs and parameters from the Keras layer definitions (not from any TFLite file)."""
    macs = params = 0
    for layer in model.layers:
        out = int(np.prod(layer.output.shape))
        if isinstance(layer, tf.keras.layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            macs += out * kh * kw
        elif isinstance(layer, tf.keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            macs += out * kh * kw * layer.input.shape[-1] // layer.groups
        elif isinstance(layer, tf.keras.layers.Dense):
            macs += out * layer.input.shape[-1]
        else:
            continue
        params += layer.count_params()
    return {"macs": int(macs), "params": int(params)}

def rep():
    rng = np.random.default_rng(0)
    for _ in range(16):
        yield [rng.random((1, 12, 10, 3), dtype=np.float32)]

m = cnn()
conv = tf.lite.TFLiteConverter.from_keras_model(m)
open(f"{out}/cnn_float.tflite", "wb").write(conv.convert())
conv = tf.lite.TFLiteConverter.from_keras_model(m)
conv.optimizations = [tf.lite.Optimize.DEFAULT]
conv.representative_dataset = rep
conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
conv.inference_input_type = tf.int8
conv.inference_output_type = tf.int8
open(f"{out}/cnn_int8.tflite", "wb").write(conv.convert())
g = gelu_mlp()
open(f"{out}/gelu_float.tflite", "wb").write(tf.lite.TFLiteConverter.from_keras_model(g).convert())
x = np.random.default_rng(1).random((40, 12, 10, 3), dtype=np.float32)
np.save(f"{out}/x_nhwc.npy", x)
json.dump({"cnn": independent_count(m), "gelu": independent_count(g), "tf": tf.__version__},
          open(f"{out}/expected.json", "w"))
'''


def build_keras_models(cache_root: Path) -> Path:
    """Folder with cnn_float/cnn_int8/gelu_float .tflite, x_nhwc.npy and expected.json (cached)."""
    key = hashlib.sha256(BUILDER.encode()).hexdigest()[:12]
    folder = cache_root / key
    if (folder / "expected.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", BUILDER, str(folder)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return folder


def _cache_dir(request) -> Path:
    # pytest's cache plugin can be disabled (-p no:cacheprovider): fall back to a temp dir
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("tinyprune-keras-tflite"))
    return request.getfixturevalue("tmp_path_factory").mktemp("keras-tflite")


@pytest.fixture(scope="session")
def keras_models(request) -> Path:
    return build_keras_models(_cache_dir(request))


@pytest.fixture(scope="session")
def expected(keras_models) -> dict:
    return json.loads((keras_models / "expected.json").read_text())


@pytest.mark.parametrize("name", ["cnn_float", "cnn_int8"])
def test_macs_and_params_match_the_keras_definition(keras_models, expected, name):
    from tinyprune.measure.macs import count_tflite, tflite_layers

    data = (keras_models / f"{name}.tflite").read_bytes()
    layers = tflite_layers(data)
    assert sum(l["macs"] for l in layers) == expected["cnn"]["macs"]
    assert count_tflite(data)["macs"] == expected["cnn"]["macs"]
    assert count_tflite(data)["params"] == expected["cnn"]["params"]
    kinds = [l["kind"] for l in layers if l["macs"]]
    assert kinds.count("depthwise_conv") == 1 and kinds.count("conv") == 2 and kinds.count("fully_connected") == 2
    want_dtype = "int8" if name.endswith("int8") else "float32"
    assert all(l["dtype"] == want_dtype for l in layers if l["macs"])


def test_measure_int8_tflite_end_to_end(keras_models, expected):
    from tinyprune.export.micro import _run
    from tinyprune.measure.core import measure_file
    from tinyprune.report.schema import errors, report_schema

    path = keras_models / "cnn_int8.tflite"
    r = measure_file(path, "cortex-m4", repeats=8)
    t = r["totals"]
    assert r["format"] == "tflite" and r["precision"] == "int8" and r["unsupported_ops"] == []
    assert t["macs"] == expected["cnn"]["macs"] and t["flops"] == 2 * t["macs"]
    assert t["flash_bytes"] == path.stat().st_size
    d = r["deployed"]  # the firmware: this model + the code its op set links, the arena + what lies outside it
    assert d["flash_bytes"] == t["flash_bytes"] + d["code_bytes"] and d["code_bytes"] > 40_000
    assert d["ram_bytes"] == d["arena_bytes"] + d["outside_arena_bytes"] and d["arena_bytes"] > t["arena_bytes"]
    # the arena is the real interpreter's minimum: it runs with it and fails 16 bytes below
    arena = t["arena_bytes"]
    assert arena >= t["peak_activation_bytes"] > 0
    np.save(keras_models / "_x.npy", np.zeros((1, 12, 10, 3), np.int8))
    assert _run(path, arena, keras_models / "_x.npy")[0]
    assert not _run(path, arena - 16, keras_models / "_x.npy")[0]
    for runtime in ("litert", "tflm"):
        timing = r["latency"]["measured"][runtime]
        assert 0 < timing["min_ms"] <= timing["median_ms"] <= timing["max_ms"] and timing["warmup"] > 0
    assert d["ms"]["low"] < d["ms"]["value"] < d["ms"]["high"] and d["instructions"] > t["macs"]
    e = r["energy"]
    assert e["floor_45nm"]["as_fp32_uj"] > 5 * e["floor_45nm"]["as_int8_uj"]
    assert d["energy_uj"]["value"] > 100 * e["floor_45nm"]["total_uj"]  # the floor is far below a real chip
    assert errors(r, report_schema()["$defs"]["measurement"], report_schema()) == []


def test_measure_float_tflite_runs_in_tflm_too(keras_models, expected):
    from tinyprune.measure.core import measure_file

    r = measure_file(keras_models / "cnn_float.tflite", "cortex-m7", timing=False)
    assert r["precision"] == "fp32" and r["totals"]["macs"] == expected["cnn"]["macs"]
    assert r["totals"]["arena_bytes"] > r["totals"]["peak_activation_bytes"] > 0
    # float layers are charged at fp32 energy: 4.6 pJ per MAC at least
    assert r["energy"]["floor_45nm"]["compute_uj"] >= expected["cnn"]["macs"] * 4.6e-6


def test_op_the_target_lacks_is_reported_and_fails_check(keras_models, tmp_path, capsys):
    from tinyprune.cli_measure import main
    from tinyprune.measure.core import measure_file

    path = keras_models / "gelu_float.tflite"
    r = measure_file(path, "cortex-m4", timing=False)
    assert r["unsupported_ops"] == ["GELU"] and r["totals"]["arena_bytes"] is None
    assert r["totals"]["macs"] == 16 * 8 + 8 * 4 == r["totals"]["macs"]
    (tmp_path / "tinyprune.toml").write_text(f'[[model]]\npath = "{path}"\nmax_macs = 1000000\n')
    code = main(["check", "--budget", str(tmp_path / "tinyprune.toml"), "--junit", str(tmp_path / "j.xml")])
    err = capsys.readouterr().err
    assert code == 3 and "GELU" in err and len(err.strip().splitlines()) == 1
    assert 'type="UnsupportedOp"' in (tmp_path / "j.xml").read_text()


def test_check_accuracy_budget_on_real_litert(keras_models, tmp_path, capsys):
    """min_accuracy: labels made so that the int8 model is right on exactly 30 of 40 samples."""
    from ai_edge_litert.interpreter import Interpreter

    from tinyprune.cli_measure import main

    model = keras_models / "cnn_int8.tflite"
    x = np.load(keras_models / "x_nhwc.npy")
    it = Interpreter(model_content=model.read_bytes())
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    scale, zero = inp["quantization"]
    preds = []
    for xi in x:
        it.set_tensor(inp["index"], np.clip(np.round(xi[None] / scale) + zero, -128, 127).astype(np.int8))
        it.invoke()
        preds.append(int(np.argmax(it.get_tensor(out["index"]))))
    y = np.array(preds)
    y[30:] = (y[30:] + 1) % 5
    np.savez(tmp_path / "test.npz", x=x, y=y)
    budget = tmp_path / "tinyprune.toml"
    for limit, want in ((0.70, 0), (0.80, 1)):
        budget.write_text(f'[[model]]\npath = "{model}"\nmin_accuracy = {limit}\ndata = "test.npz"\n')
        assert main(["check", "--budget", str(budget), "--json"]) == want
        report = json.loads(capsys.readouterr().out)
        assert report["results"][0]["value"] == pytest.approx(0.75)
