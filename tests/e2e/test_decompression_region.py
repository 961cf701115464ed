"""A target with a separate RAM region for TFLM's alternate decompression memory: a LUT model
whose decoded weights do not fit beside the arena deploys with them in that region."""

import json
import sys
from pathlib import Path

import pytest
import torch

from tinyprune.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_compress import _check_firmware  # noqa: E402


# --prefer flash: cortex-m4 has most of its flash free and RAM is its tighter resource, where the rule
# (deepcompress.deploy.flash_for_ram) keeps the plain model; these tests are about the LUT model
def _compress(tmp_path, src, digits_npz, capsys, out, *extra):
    code = main(["compress", str(src), "--arch", "tinyprune.testing.models:digits_cnn", "--data", str(digits_npz),
                 "--out", str(out), "--sparsity", "0", "--finetune-epochs", "1",
                 "--max-accuracy-drop", "100", "--prefer", "flash", "--json", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    return report, {s["name"]: s for s in report["stages"]}


@pytest.mark.slow
def test_decoded_weights_go_to_the_targets_separate_region_when_the_arena_cannot_hold_them(
        tmp_path, trained, digits_npz, capsys, monkeypatch):
    src = tmp_path / "cnn.pt"
    torch.save(trained("digits_cnn").state_dict(), src)
    _, stages = _compress(tmp_path, src, digits_npz, capsys, tmp_path / "plain")
    lut = stages["int8_lut"]
    # the cheapest real LUT deployment: its files and the example build (the region's variant below)
    _check_firmware(tmp_path / "plain", tmp_path, "model_lut", "model_int8_lut.tflite", lut["arena_bytes"])
    split = lut["details"]["decompression_memory"]
    single, alone, alt = lut["arena_bytes"], split["arena_bytes"], split["alt_bytes"]
    assert alone < single

    # a board whose RAM holds the arena without the decoded weights but not with them, and whose
    # second region holds exactly what they need
    from tinyprune.export.firmware import arena_size
    from tinyprune.measure.deployed import ram_outside_arena

    board = tmp_path / "board.toml"
    runtime_ram = ram_outside_arena()  # stack and static data: the firmware's RAM beside the arena
    ram = runtime_ram + (arena_size(alone) + arena_size(single)) // 2
    board.write_text(f'base = "cortex-m4"\nram_bytes = {ram}\ndecompression_ram_bytes = {alt}\n')
    out = tmp_path / "region"
    report, stages = _compress(tmp_path, src, digits_npz, capsys, out, "--target", str(board))
    assert report["target"]["decompression_ram_bytes"] == alt
    lut = stages["int8_lut"]
    assert report["deployed"]["artifact"] == "model_int8_lut.tflite"
    assert lut["arena_bytes"] == report["deployed"]["arena_bytes"] and arena_size(lut["arena_bytes"]) <= ram - runtime_ram
    assert arena_size(single) > ram - runtime_ram
    chosen = lut["details"]["sharing"]["trials"][-1]
    assert chosen["verdict"] == "deployed" and chosen["decompression_bytes"] <= alt
    assert lut["details"]["decompression_memory"]["required"]
    assert report["deployed"]["decompression_bytes"] == lut["details"]["decompression_memory"]["alt_bytes"] <= alt
    header = (out / "model_lut_data.h").read_text()
    assert "required on this target" in header
    (tmp_path / "region_build").mkdir()
    _check_firmware(out, tmp_path / "region_build", "model_lut", "model_int8_lut.tflite", lut["arena_bytes"])
    md = (out / "report.md").read_text()
    assert "separate decompression region" in md

    # `check` measures the same layout on that board
    (tmp_path / "tinyprune.toml").write_text(
        f'[[model]]\npath = "{out / "model_int8_lut.tflite"}"\ntarget = "{board}"\nmax_ram = {ram}\n'
        'include_runtime = true\n')
    monkeypatch.chdir(tmp_path)
    assert main(["check", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    ram_outcome = next(o for o in result["results"] if o["metric"] == "max_ram")
    assert ram_outcome["ok"] and ram_outcome["value"] < arena_size(single) + runtime_ram
    assert "kTensorArenaSize" in ram_outcome["detail"]
