"""The whole pipeline through the CLI: real onnx2tf, LiteRT and TFLM, one run per model format."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tinyprune.deepcompress.archive import read_archive
from tinyprune.api import MANIFEST
from tinyprune.cli import main
from tinyprune.cli_progress import FINISHED, RUNNING, STARTED
from tinyprune.export.micro import tflm_outputs
from tinyprune.export.tflite import io_details, quantize, to_device_layout

X = torch.rand(1, 1, 8, 8)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_firmware import compile_example  # noqa: E402
from test_report_parity import missing_from_html  # noqa: E402


def _save(model, fmt, path):
    if fmt == "pickled-module":
        torch.save(model, path)
    elif fmt == "state-dict":
        torch.save(model.state_dict(), path)
    elif fmt == "torchscript":
        torch.jit.save(torch.jit.trace(model, X), path)
    else:
        torch.export.save(torch.export.export(model, (X,)), path)


@pytest.mark.slow
@pytest.mark.parametrize("name, fmt, extra", [
    ("cnn_bn", "pickled-module", ["--archive", "--bits", "4"]),
    ("dw_residual", "exported-program", ["--criterion", "mi", "--no-deepcompress"]),
    ("concat_net", "torchscript", ["--criterion", "mspic", "--no-deepcompress", "--trust-code"]),
    ("mlp", "state-dict", ["--arch", "tinyprune.testing.models:mlp", "--lut-bits", "4"]),
])
def test_compress_end_to_end(tmp_path, trained, digits_npz, capsys, name, fmt, extra):
    model = trained(name).eval()
    src = tmp_path / ("model.pt2" if fmt == "exported-program" else "model.pt")
    _save(model, fmt, src)
    out = tmp_path / "out"
    # a loose accuracy budget: these runs check the pipeline at 50 % (the budget has its own test)
    code = main(["compress", str(src), "--data", str(digits_npz), "--out", str(out), "--sparsity", "0.5",
                 "--finetune-epochs", "2", "--max-accuracy-drop", "100", "--json", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    stages = {s["name"]: s for s in report["stages"]}
    shared, archive = "int8_lut" in stages, "--archive" in extra
    if "--no-deepcompress" in extra:
        assert not shared and report["deployed"]["weight_sharing"]["reason"].startswith("off")
    elif not shared:  # the small nets at 50 %: the DECODE kernel's code outweighs any LUT saving
        assert "firmware" in report["deployed"]["weight_sharing"]["reason"]
    plain = ["model_pruned.pt2", "model.onnx", "model_int8.tflite", "model_data.cc", "model_data.h", "model_ops.h",
             "report.json", "report.md", "report.html"]
    lut = ["model_int8_lut.tflite", "model_lut_data.cc", "model_lut_data.h", "model_lut_ops.h"]
    expected = sorted(plain + (lut if shared else []) + (["model.tpz"] if archive else []))
    # the stages declare what they write: the report lists exactly the files on disk
    assert sorted(p.name for p in out.iterdir() if p.name != MANIFEST) == expected
    assert sorted(json.loads((out / MANIFEST).read_text())["files"]) == expected
    assert sorted(a.rsplit("/", 1)[-1] for a in report["artifacts"]) == expected
    assert report == json.loads((out / "report.json").read_text())
    from tinyprune.report.schema import validate

    validate(report)  # the documented JSON Schema (tinyprune/report/schema.json)
    assert "<img" in (out / "report.html").read_text()
    assert report["model"]["format"] == fmt and report["data"]["layout"] == "nhwc"
    assert report["target"]["name"] == "cortex-m4" and report["target"]["flash_bytes"] > 0
    assert list(stages) == (["original", "pruned", "finetuned", "int8"] + (["int8_lut"] if shared else [])
                            + (["weight_pruned", "clustered", "huffman"] if archive else []))
    deployed = report["deployed"]
    assert deployed["artifact"] == ("model_int8_lut.tflite" if shared else "model_int8.tflite")
    assert deployed["flash_bytes"] == (out / deployed["artifact"]).stat().st_size
    # the headline comes first: the file to flash and the arena to reserve
    md = (out / "report.md").read_text().splitlines()
    head = "\n".join(md[:md.index(next(line for line in md if line.startswith("Target **")))])
    assert md[2].startswith(f"**Flash `{deployed['artifact']}`") and "Verdict: fits cortex-m4" in head
    assert "Predicted at 64 MHz: " in head and head.count(" ms (") == 1  # one latency, with its interval
    html = (out / "report.html").read_text()
    assert html.index("class='headline'") < html.index("<h2>")
    assert f"Flash <code>{deployed['artifact']}</code>" in html
    # everything report.md says, report.html says too (tests/unit/test_report_parity.py)
    assert missing_from_html((out / "report.md").read_text(), html) == []
    _check_module_names(stages)
    if shared:
        _check_lut(report, stages, out)
    if archive:
        _check_archive(report, out, tmp_path)
    if "mspic" in extra:
        units = stages["pruned"]["details"]["skip_unit_stages"]
        assert units and units[0]["kinds"] == ["concat", "concat"]
    orig, tuned, int8 = stages["original"], stages["finetuned"], stages["int8"]
    # MACs removed as asked, counted on the PyTorch model and again on the TFLite graph
    assert tuned["macs"] <= 0.5 * orig["macs"] * 1.02
    assert abs(int8["macs"] - tuned["macs"]) <= 0.01 * tuned["macs"]
    assert int8["flash_bytes"] == (out / "model_int8.tflite").stat().st_size
    assert 0 < int8["arena_bytes"] < 256 * 1024
    assert int8["accuracy"] >= tuned["accuracy"] - 0.03  # made from the fine-tuned float model
    assert int8["details"]["tflm"]["samples"] == report["data"]["eval"]  # TFLM on the whole held-out split
    assert int8["details"]["tflm"]["agreement_with_litert"] >= 0.99
    assert int8["details"]["fidelity"]["layers"] and int8["details"]["fidelity"]["output_sqnr_db"] > 10
    assert int8["details"]["onnx_max_abs_diff"] < 1e-3
    cc = (out / "model_data.cc").read_text()
    assert "alignas(16)" in cc and f"g_model_data_len = {int8['flash_bytes']};" in cc
    for layer in report["layers"]:  # what was removed, and how much information went with it
        assert len(layer["removed_channels"]) == layer["channels_before"] - layer["channels_after"]
        assert layer["mi_kept"] >= 0 and layer["mi_removed"] >= 0
    # the pruned model reloads without custom code
    reloaded = torch.export.load(out / "model_pruned.pt2").module()
    assert reloaded(torch.rand(1, 1, 8, 8)).shape == (1, 10)
    # last: it skips where no C++ compiler exists
    if shared:
        _check_firmware(out, tmp_path, "model_lut", "model_int8_lut.tflite", stages["int8_lut"]["arena_bytes"])
    _check_firmware(out, tmp_path, "model", "model_int8.tflite", int8["arena_bytes"])


def _check_module_names(stages):
    """Every op of the int8 graphs that computes a layer (and every DECODE) carries its PyTorch module name."""
    fidelity = {e["tensor"]: e["layer"] for e in stages["int8"]["details"]["fidelity"]["layers"]}
    for name in ("int8", "int8_lut"):
        if name not in stages:
            continue
        rows = stages[name]["details"]["measure"]["layers"]
        for row in rows:
            if row["op"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TFLM_DECODE"):
                assert row["module"], (name, row["op"], row["name"])
            if row["name"] in fidelity:
                assert row["module"] == fidelity[row["name"]]
    if "int8_lut" in stages:
        assert all(t["module"] for t in stages["int8_lut"]["details"]["lut"]["tensors"])


def _check_firmware(out, tmp_path, prefix, tflite_name, arena):
    """The generated C++ compiles with the system compiler and holds exactly the flatbuffer; the
    header's constants and the resolver's ops are the model's; examples/firmware/main.cc builds
    against the set with only its #include lines switched."""
    import re
    import shutil
    import subprocess

    from tinyprune.export.firmware import arena_size, model_ops, resolver_method

    blob = (out / tflite_name).read_bytes()
    header = (out / f"{prefix}_data.h").read_text()
    assert f"kArenaMeasured = {arena};" in header and f"kTensorArenaSize = {arena_size(arena)};" in header
    assert arena_size(arena) >= arena + 1024 and arena_size(arena) % 16 == 0
    ops = model_ops(blob)
    assert f"kModelOpCount = {len(ops)};" in header
    registered = re.findall(r"resolver\.(Add\w+)\(\)", (out / f"{prefix}_ops.h").read_text())
    assert registered == [resolver_method(op) for op in ops] and len(set(registered)) == len(ops)
    if prefix == "model_lut":
        assert "AddDecode" in registered  # a LUT model cannot run without TFLM's DECODE kernel
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:  # .ci/run installs one; elsewhere the rest of the checks above still ran
        pytest.skip("no C++ compiler to build the firmware files with")
    (tmp_path / "main.cc").write_text(
        f'#include <cstdio>\n#include "{prefix}_data.h"\n'
        f"int main() {{ std::fwrite(g_{prefix}_data, 1, g_{prefix}_data_len, stdout);\n"
        f"  return (reinterpret_cast<unsigned long>(g_{prefix}_data) % 16 == 0 && kTensorArenaSize > 0) ? 0 : 1; }}\n")
    exe = tmp_path / f"fw_{prefix}"
    subprocess.run([compiler, "-std=c++17", "-Wall", "-Werror", "-I", str(out), str(tmp_path / "main.cc"),
                    str(out / f"{prefix}_data.cc"), "-o", str(exe)], check=True, capture_output=True)
    assert subprocess.run([str(exe)], capture_output=True, check=True).stdout == blob
    compile_example(out, prefix, tmp_path)


def _check_lut(report, stages, out):
    lut, int8 = stages["int8_lut"], stages["int8"]
    check = lut["details"]["tflm_check"]
    assert check["bit_exact"] and check["samples"] == report["data"]["eval"]
    assert lut["flash_bytes"] == (out / "model_int8_lut.tflite").stat().st_size
    # deployed only because it pays: less flash, the arena within the target's RAM, accuracy in budget
    assert lut["flash_bytes"] < int8["flash_bytes"]
    costs = lut["details"]["measure"]["deployed"]
    assert costs["ram_bytes"] <= report["target"]["ram_bytes"] and costs["fits"]["all"]
    # deployed only because the firmware shrinks with it
    assert costs["flash_bytes"] < int8["details"]["measure"]["deployed"]["flash_bytes"]
    assert report["deployed"]["within_accuracy_budget"]
    assert lut["details"]["bought"]["flash_bytes"] == lut["flash_bytes"] - int8["flash_bytes"] < 0
    compressed = [t for t in lut["details"]["lut"]["tensors"] if t["compressed"]]
    assert compressed and all(t["bits"] <= lut["details"]["sharing"]["bits"] for t in compressed)
    for t in lut["details"]["lut"]["tensors"]:
        assert t["compressed"] or t["reason"]  # every tensor left as is says why
    # decoded weights in TFLM's alternate decompression memory: a smaller arena, the same outputs,
    # a region no larger than all decoded weights together (TFLM reuses it), declared in the header
    # and the report only where the two regions together need less RAM than the one arena
    split = lut["details"]["decompression_memory"]
    assert split["bit_exact"] and split["arena_bytes"] < lut["arena_bytes"] == split["single_arena_bytes"]
    assert 0 < split["alt_bytes"] <= split["decoded_bytes"] + 16 * split["decoded_tensors"]
    saves = split["arena_bytes"] + split["alt_bytes"] < split["single_arena_bytes"]
    header = (out / "model_lut_data.h").read_text()
    assert (f"kDecompressionMemorySize = {split['alt_bytes']};" in header) is saves
    assert ("alternate decompression memory" in (out / "report.md").read_text()) is saves


def _check_archive(report, out, tmp_path):
    ratios = report["compression"]["sizes"]["ratios"]
    assert 1 < ratios["P"] < ratios["P+Q"] < ratios["P+Q+H"]
    assert report["compression"]["archive_bytes"] == (out / "model.tpz").stat().st_size
    # `tinyprune unpack` rebuilds exactly the archived weights
    assert main(["unpack", str(out / "model.tpz"), "--out", str(tmp_path / "unpacked")]) == 0
    weights = np.load(tmp_path / "unpacked" / "weights.npz")
    assert set(weights.files) == set(read_archive(out / "model.tpz"))
    for name in weights.files:
        assert np.array_equal(weights[name], read_archive(out / "model.tpz")[name])
    for name in weights.files:
        if name.endswith("weight") and weights[name].ndim >= 2:
            assert len(np.unique(weights[name])) <= 2 ** 4 + 1  # 4-bit codes plus the pruned zero


@pytest.mark.slow
def test_measured_arena_is_the_smallest_that_runs(tmp_path, trained, digits_npz):
    model = trained("cnn_bn").eval()
    torch.save(model, tmp_path / "m.pt")
    out = tmp_path / "out"
    assert main(["compress", str(tmp_path / "m.pt"), "--data", str(digits_npz), "--out", str(out),
                 "--finetune-epochs", "0", "--no-deepcompress", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    arena = report["stages"][-1]["arena_bytes"]
    blob = (out / "model_int8.tflite").read_bytes()
    io = io_details(blob)
    x = quantize(to_device_layout(np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)),
                 io["input"]["scale"], io["input"]["zero_point"])
    assert tflm_outputs(blob, x, arena).shape == (2, 10)
    with pytest.raises(Exception, match="TFLM failed"):
        tflm_outputs(blob, x, arena - 16)


def _compress_json(tmp_path, model, digits_npz, capsys, *args) -> dict:
    """``compress`` of ``model`` (pickled) on the digits with ``args``; asserts exit 0, returns the report."""
    torch.save(model.eval(), tmp_path / "m.pt")
    code = main(["compress", str(tmp_path / "m.pt"), "--data", str(digits_npz), "--out", str(tmp_path / "out"),
                 *args, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


@pytest.mark.slow
@pytest.mark.parametrize("criterion, options", [
    ("vib", ["--vib-epochs", "2", "--vib-gamma", "0.01"]),
    ("mipp", []),
    ("flow", ["--no-compensate"]),
    ("l1", []),
])
def test_every_criterion_through_compress(tmp_path, trained, digits_npz, capsys, criterion, options):
    """Each criterion end to end (TFLM included), at equal MACs: within 1 % above the target."""
    report = _compress_json(tmp_path, trained("cnn_bn"), digits_npz, capsys, "--criterion", criterion, *options,
                            "--sparsity", "0.4", "--finetune-epochs", "1", "--max-accuracy-drop", "100",
                            "--no-deepcompress", "--seed", "3")
    pruned = next(s for s in report["stages"] if s["name"] == "pruned")
    assert report["config"]["prune"]["criterion"] == criterion and report["config"]["seed"] == 3
    assert pruned["details"]["criterion"] == criterion
    # compensation is on by default
    assert report["config"]["prune"]["compensate"] is pruned["details"]["compensate"] is ("--no-compensate" not in options)
    removed = pruned["details"]["macs_removed"]
    if criterion == "vib":
        assert removed >= 0.4  # VIB may remove more than asked: the target is a floor
        assert pruned["details"]["prepared"]["config"]["seed"] == 3  # --seed reached VIB
        assert report["config"]["prune"]["options"] == {"gamma": 0.01, "epochs": 2, "threshold": 0.0, "lr": 1e-3,
                                                         "optimizer": "adam", "weight_decay": 0.0,
                                                         "layer_gamma": "", "gate_inputs": False, "per_mac": True}
    elif criterion == "mipp":  # MIPP meets the target in its own step (its cost model, its fill)
        assert 0.4 <= removed <= 0.45, removed
        assert pruned["details"]["mipp"]["layers"]
    else:  # the MAC loop lands at the target, overshooting by at most one channel's MACs
        original = next(s for s in report["stages"] if s["name"] == "original")
        # cnn_bn's costliest channel: one of the first conv's 16 (8x8 output, 3x3 kernels), which
        # also feeds every one of the second conv's 32 filters
        one_channel = (9 * 64 + 32 * 9 * 64) / original["macs"]
        assert 0.4 <= removed <= 0.4 + one_channel + 1e-9, (removed, one_channel)
    int8 = report["stages"][-1]
    assert int8["name"] == "int8" and int8["details"]["tflm"]["samples"] > 0


@pytest.mark.slow
def test_accuracy_budget_backs_off_pruning_and_holds(tmp_path, trained, digits_npz, capsys):
    """90 % of the MACs removed without fine-tuning costs far more than 1 point: the stage prunes
    less until the budget holds, and says what it tried."""
    report = _compress_json(tmp_path, trained("cnn_bn"), digits_npz, capsys, "--sparsity", "0.9",
                            "--finetune-epochs", "0", "--max-accuracy-drop", "1")
    stages = {s["name"]: s for s in report["stages"]}
    backoff = stages["pruned"]["details"]["backoff"]
    assert backoff["asked"] == 0.9 and backoff["used"] < 0.9 and len(backoff["tried"]) >= 2
    assert [t["sparsity"] for t in backoff["tried"]] == [0.9, 0.675, 0.45, 0.225, 0.0][:len(backoff["tried"])]
    original = stages["original"]["accuracy"]
    assert all(t["finetuned_accuracy"] < original - 0.01 for t in backoff["tried"][:-1])  # each was over budget
    assert stages["finetuned"]["accuracy"] >= original - 0.01
    assert stages["pruned"]["details"]["sparsity"] == backoff["used"]
    deployed = report["deployed"]
    assert deployed["max_accuracy_drop_points"] == 1.0
    assert deployed["within_accuracy_budget"] == (deployed["accuracy_drop_points"] <= 1.0)
    assert deployed["accuracy"] == stages[deployed["stage"]]["accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ds_cnn", "mobilenet"])
def test_default_compress_spends_accuracy_only_for_a_deployed_gain(tmp_path, trained, digits_npz, capsys, name):
    """The zoo check of the deployment-aware Deep Compression: at default settings no step after
    fine-tuning loses accuracy unless the deployed model gets smaller, and the budget holds."""
    report = _compress_json(tmp_path, trained(name), digits_npz, capsys)
    stages = {s["name"]: s for s in report["stages"]}
    assert "weight_pruned" not in stages  # zeros shrink no flatbuffer: weight pruning feeds --archive only
    deployed, int8 = report["deployed"], stages["int8"]
    assert deployed["within_accuracy_budget"], deployed
    if "int8_lut" in stages:
        lut = stages["int8_lut"]
        assert lut["flash_bytes"] < int8["flash_bytes"]  # what the accuracy it may have cost bought
        assert deployed["artifact"] == "model_int8_lut.tflite"
    else:  # nothing paid: the plain int8 model is deployed and no accuracy was spent on sharing
        assert deployed["artifact"] == "model_int8.tflite" and deployed["accuracy"] == int8["accuracy"]
        assert not deployed["weight_sharing"]["deployed"] and deployed["weight_sharing"]["reason"]


@pytest.mark.slow
def test_fit_deploys_the_most_accurate_configuration_that_fits(tmp_path, trained, digits_npz, capsys):
    out = tmp_path / "out"
    # cnn_bn's firmware (model + TFLM code): 78.5 kB unpruned, 69.9 kB at 90 %: 75 kB needs pruning
    report = _compress_json(tmp_path, trained("cnn_bn"), digits_npz, capsys, "--fit", "--max-flash", "75000",
                            "--finetune-epochs", "1")
    from tinyprune.report.schema import validate

    validate(report)
    fit, deployed = report["fit"], report["deployed"]
    trials = fit["trials"]
    assert fit["limits"]["flash_bytes"] == 75000 and len(trials) <= 5
    assert trials[0]["sparsity"] == 0 and not trials[0]["fits"] and "flash_bytes" in trials[0]["misses"]
    chosen = trials[fit["chosen"]]
    assert chosen["fits"] and chosen["accuracy"] == max(t["accuracy"] for t in trials if t["fits"])
    shipped = next(s for s in report["stages"] if s["name"] == deployed["stage"])
    assert shipped["details"]["measure"]["deployed"]["flash_bytes"] == chosen["flash_bytes"] <= 75000
    assert deployed["flash_bytes"] == (out / deployed["artifact"]).stat().st_size
    assert deployed["within_accuracy_budget"] and "accuracy" not in chosen["misses"]
    assert report["config"]["prune"]["sparsity"] == chosen["sparsity"]
    # the chosen trial's files are the output, and nothing of the other trials is left
    assert (out / "fit.png").stat().st_size > 0 and not any(p.name.startswith("_trial") for p in out.iterdir())
    assert sorted(a.rsplit("/", 1)[-1] for a in report["artifacts"]) == sorted(
        p.name for p in out.iterdir() if p.name != MANIFEST)


@pytest.mark.slow
def test_fit_that_nothing_meets_exits_1_with_the_misses_and_writes_nothing(tmp_path, trained, digits_npz, capsys):
    torch.save(trained("cnn_bn").eval(), tmp_path / "m.pt")
    out = tmp_path / "out"
    code = main(["compress", str(tmp_path / "m.pt"), "--data", str(digits_npz), "--out", str(out), "--fit",
                 "--max-flash", "1KiB", "--finetune-epochs", "0", "--no-deepcompress"])
    # the trials' stage lines (no terminal) and their header and result lines, then the one error line
    err = [l for l in capsys.readouterr().err.strip().splitlines()
           if not l.startswith((STARTED, FINISHED, RUNNING, "tinyprune: --fit trial"))]
    assert code == 1
    assert len(err) == 1 and err[0].startswith("tinyprune: error: nothing fits cortex-m4: the closest, 90% of the MACs")
    assert "flash " in err[0] and "> 1,024 B" in err[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


@pytest.mark.slow
def test_stage_lines_without_a_terminal(tmp_path, trained, digits_npz, capsys):
    # CI logs: one line when a step starts and one when it ends, with its seconds, and between them
    # the step's latest message every 10 s (tests/unit/test_progress.py); --quiet: none
    torch.save(trained("cnn_bn").eval(), tmp_path / "m.pt")
    argv = ["compress", str(tmp_path / "m.pt"), "--data", str(digits_npz), "--finetune-epochs", "1",
            "--no-deepcompress"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    started = [l[len(STARTED):] for l in err if l.startswith(STARTED)]
    finished = [l[len(FINISHED):] for l in err if l.startswith(FINISHED)]
    assert started[:3] == ["pruning", "fine-tune", "int8 conversion: ONNX, onnx2tf"]
    assert len(err) == 2 * len(started) + sum(l.startswith(RUNNING) for l in err)
    assert [f.rsplit(" in ", 1)[0] for f in finished] == started
    assert all(f.endswith(" s") and float(f.rsplit(" in ", 1)[1][:-2]) >= 0 for f in finished)
    assert main([*argv, "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
