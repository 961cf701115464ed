"""`compress --target ethos-u55-128` end to end, offline: the int8 model compiled by Vela, its NPU
cycles, SRAM and flash in the report, and the hand-off files for TFLM's Ethos-U kernel."""

import json

import pytest
import torch

from tinyprune.cli import main
from tinyprune.measure import npu


@pytest.mark.skipif(not npu.available(), reason="the vela extra is not installed")
def test_compress_for_an_ethos_u55_reports_vela_numbers(tmp_path, trained, digits_npz, capsys):
    src = tmp_path / "cnn.pt"
    torch.save(trained("cnn_bn").eval(), src)
    out = tmp_path / "out"
    code = main(["compress", str(src), "--data", str(digits_npz), "--out", str(out), "--target", "ethos-u55-128",
                 "--sparsity", "0.3", "--finetune-epochs", "1", "--max-accuracy-drop", "100", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    dep = report["deployed"]
    assert dep["artifact"] == "model_vela.tflite" and "Vela" in dep["weight_sharing"]["reason"]
    int8 = next(s for s in report["stages"] if s["name"] == "int8")
    costs = int8["details"]["measure"]["deployed"]
    n = costs["npu"]
    assert n["accelerator"] == "ethos-u55-128" and n["npu_cycles"] > 0 and n["sram_bytes"] > 0 and n["layers"]
    assert costs["model_bytes"] == (out / "model_vela.tflite").stat().st_size == dep["flash_bytes"]
    # the hand-off registers the Ethos-U custom op, and the report shows the NPU's numbers per layer
    assert "resolver.AddEthosU()" in (out / "model_vela_ops.h").read_text()
    md = (out / "report.md").read_text()
    assert "## NPU: ethos-u55-128 (Vela, Ethos_U55_High_End_Embedded, Shared_Sram)" in md
    assert f"{n['npu_cycles']:,} NPU cycles" in md and "Flash `model_vela.tflite`" in md
