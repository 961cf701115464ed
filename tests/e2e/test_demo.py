"""The demo as a new user runs it: everything it writes, its trained model included, is inside --out."""

import json

import pytest

from tinyprune.cli import main

pytestmark = pytest.mark.slow


def test_demo_keeps_its_model_inside_out(tmp_path, capsys, digits_npz):
    out = tmp_path / "space" / "results" / "demo"
    code = main(["demo", "--out", str(out), "--quiet", "--finetune-epochs", "1", "--no-deepcompress"])
    assert code == 0, capsys.readouterr().err
    assert [p.name for p in (tmp_path / "space").iterdir()] == ["results"]
    assert [p.name for p in (tmp_path / "space" / "results").iterdir()] == ["demo"]  # nothing beside --out
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["path"] == str(out / "digits_cnn.pt")
    assert str(out / "digits_cnn.pt") in report["artifacts"] and (out / "model_int8.tflite").stat().st_size > 0
    # the kept model is a user's file like any other: compress loads it through the safe path
    code = main(["compress", str(out / "digits_cnn.pt"), "--data", str(digits_npz), "--out", str(tmp_path / "again"), "--quiet",
                 "--finetune-epochs", "0", "--no-deepcompress", "--max-accuracy-drop", "100"])
    assert code == 0, capsys.readouterr().err
