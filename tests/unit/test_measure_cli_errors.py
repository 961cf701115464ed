"""`tinyprune measure` on bad input: one line on stderr, exit 2, no traceback; and the happy path output."""

from __future__ import annotations

import json

import pytest
import torch

from tinyprune.cli_measure import main
from tinyprune.testing import MODELS


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line(err, *needles):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tinyprune: error: ") and "Traceback" not in err
    for n in needles:
        assert n in lines[0]


@pytest.fixture
def cnn_file(tmp_path):
    path = tmp_path / "cnn.pt"
    torch.save(MODELS["cnn_bn"]().eval(), path)
    return path


@pytest.mark.parametrize("make, needles", [
    (lambda p: p / "nope.tflite", ["not found"]),
    (lambda p: (p / "e.tflite").write_bytes(b"") and p / "e.tflite" or p / "e.tflite", ["empty"]),
    (lambda p: (p / "junk.tflite").write_bytes(b"\x01" * 100) and p / "junk.tflite", ["not a TFLite"]),
    (lambda p: (p / "junk.onnx").write_bytes(b"\x01\x02garbage") and p / "junk.onnx", ["not a readable ONNX"]),
    (lambda p: (p / "junk.pt").write_bytes(b"hello") and p / "junk.pt", ["not a PyTorch model"]),
])
def test_bad_model_files(capsys, tmp_path, make, needles):
    path = make(tmp_path)
    code, out, err = run(capsys, "measure", path)
    assert code == 2 and out == ""
    assert_one_line(err, *needles)


def test_pytorch_needs_an_input_shape_that_fits(capsys, cnn_file):
    code, _, err = run(capsys, "measure", cnn_file)
    assert code == 2
    assert_one_line(err, "--input-shape")
    code, _, err = run(capsys, "measure", cnn_file, "--input-shape", "3,8,8")
    assert code == 2
    assert_one_line(err, "does not run on an input of shape (1, 3, 8, 8)")


def test_unknown_target(capsys, cnn_file):
    code, _, err = run(capsys, "measure", cnn_file, "--input-shape", "1,8,8", "--target", "pdp-11")
    assert code == 2
    assert_one_line(err, "unknown target 'pdp-11'", "esp32-s3")


def test_measure_pytorch_json_and_table(capsys, cnn_file):
    from torch.utils.flop_counter import FlopCounterMode

    code, out, err = run(capsys, "measure", cnn_file, "--input-shape", "1,8,8", "--json", "--repeats", "3")
    assert code == 0 and err == ""
    r = json.loads(out)
    model = MODELS["cnn_bn"]().eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(1, 1, 8, 8))
    assert r["totals"]["flops"] == counter.get_total_flops()
    assert r["format"] == "pytorch" and r["source_format"] == "pickled-module" and r["precision"] == "fp32"
    assert r["latency"]["measured"]["torch"]["median_ms"] > 0
    code, out, _ = run(capsys, "measure", cnn_file, "--input-shape", "1,8,8", "--no-timing", "--target", "cortex-m0plus")
    assert code == 0
    assert "45 nm floor (arithmetic and data movement only" in out and "cortex-m0plus" in out
    assert "costed as: pytorch model as its int8 conversion" in out and "Predicted at 48 MHz" in out
    assert "convolution" in out and "addmm" in out
