"""`tinyprune check`: budget files, verdicts, exit codes, JUnit XML and GitHub annotations.

The measurement itself is replaced by a canned one here (tests/unit/test_measure_keras.py runs
check on real models), so that every verdict can be checked against known numbers.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from tinyprune import budget
from tinyprune.cli_measure import main
from tinyprune.errors import ConfigError, DataError


@pytest.mark.parametrize("text, want", [("256KiB", 262144), ("1MB", 1_000_000), ("1.5 MiB", 1572864), ("64kB", 64000),
                                        ("4096", 4096), (4096, 4096), ("2GiB", 2 * 1024 ** 3), ("512 B", 512),
                                        ("1_000KB", 1_000_000)])
def test_parse_size(text, want):
    assert budget.parse_size(text) == want


@pytest.mark.parametrize("bad", ["256 KiBs", "1MiBB", "-4KiB", "KiB", True, -1, "1e6", "", [1]])
def test_parse_size_rejects(bad):
    with pytest.raises(ConfigError, match="size"):
        budget.parse_size(bad, "max_flash")


def fake_measurement(flash=100_000, arena=30_000, macs=2_000_000, opt_ms=50.0, unsupported=(), fmt="tflite",
                     target="cortex-m4"):
    """A measurement as measure_file makes it, its deployed costs scaled to take ``opt_ms``."""
    import dataclasses

    from tinyprune import targets
    from tinyprune.measure import deployed

    layer = {"index": 0, "name": "c", "op": "CONV_2D", "kind": "conv", "input_shapes": [[1, 32, 32, 16]],
             "output_shapes": [[1, 32, 32, 16]], "dtype": "int8", "params": 10, "macs": macs, "flops": 2 * macs,
             "elements": 0, "weight_bytes": 10, "activation_bytes": 10}
    c = deployed.compute([dict(layer)], targets.load(target), channels_last=True, model_bytes=flash, arena_bytes=arena,
                         arena_source="test", basis="int8 TFLite model")
    k = opt_ms / c.ms.value
    c = dataclasses.replace(c, cycles=c.cycles.scaled(k), ms=c.ms.scaled(k), energy_uj=c.energy_uj.scaled(k))
    return {
        "format": fmt, "unsupported_ops": list(unsupported), "layers": [layer],
        "totals": {"flash_bytes": flash, "flash_source": "flatbuffer bytes", "arena_bytes": arena, "ram_bytes": arena,
                   "ram_source": "smallest TFLM arena", "macs": macs},
        "deployed": c.to_dict(), "latency": {"measured": {}},
    }


@pytest.fixture
def fake(monkeypatch):
    state = {"m": fake_measurement(), "calls": []}

    def measure_file(path, target, **kw):
        state["calls"].append((Path(path), target, kw))
        if not Path(path).exists():
            raise AssertionError("check must resolve paths relative to the budget file")
        return state["m"]

    monkeypatch.setattr("tinyprune.measure.core.measure_file", measure_file)
    return state


@pytest.fixture
def project(tmp_path):
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "m.tflite").write_bytes(b"x")
    return tmp_path


def write(project, body: str, name="tinyprune.toml") -> Path:
    path = project / name
    path.write_text(body)
    return path


BUDGET = '[[model]]\npath = "build/m.tflite"\ntarget = "cortex-m4"\nmax_flash = "{flash}"\nmax_ram = "64KiB"\n' \
         'max_macs = 5_000_000\nmax_latency_ms = {lat}\n'


def test_all_budgets_hold(project, fake, capsys, monkeypatch):
    monkeypatch.chdir(project)
    write(project, BUDGET.format(flash="256KiB", lat=100))
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "all budgets hold" in out and "EXCEEDED" not in out
    path, target, kw = fake["calls"][0]
    assert path == (project / "build/m.tflite").resolve() and target.name == "cortex-m4"
    assert kw["find_arena"] is True and kw["timing"] is False


def test_exceeded_budget_exits_1_with_junit_and_annotations(project, fake, capsys, monkeypatch):
    monkeypatch.chdir(project)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    cfg = write(project, "# budgets\n\n" + BUDGET.format(flash="64KiB", lat=10))
    junit = project / "out" / "junit.xml"
    assert main(["check", "--junit", str(junit)]) == 1
    captured = capsys.readouterr()
    assert "EXCEEDED" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "2 budget(s) exceeded" in err[0] and "max_flash" in err[0] and "max_latency_ms" in err[0]
    notes = [l for l in captured.out.splitlines() if l.startswith("::error ")]
    assert len(notes) == 2
    assert cfg.exists()  # annotated relative to the working directory, at the exceeded key's line
    assert notes[0].startswith("::error file=tinyprune.toml,line=6,title=tinyprune budget max_flash::build/m.tflite")
    assert notes[1].startswith("::error file=tinyprune.toml,line=9,title=tinyprune budget max_latency_ms::")
    root = ET.parse(junit).getroot()
    suite = root.find("testsuite")
    assert suite.get("tests") == "5" and suite.get("failures") == "2"  # 4 budgets + the op check
    failed = {c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None}
    assert failed == {"max_flash", "max_latency_ms"}
    cases = list(suite.iter("testcase"))
    # one identifier per model (reporters split class names at dots), times that add up to the suite's
    assert {c.get("classname") for c in cases} == {"tinyprune.check.build_m_tflite"}
    assert sum(float(c.get("time")) for c in cases) == pytest.approx(float(suite.get("time")), abs=0.01)


def test_include_runtime_counts_runtime_code(project, fake, monkeypatch, capsys):
    monkeypatch.chdir(project)
    # 100,000 B flatbuffer fits 120 kB alone, not with the firmware's runtime code
    write(project, '[[model]]\npath = "build/m.tflite"\nmax_flash = "120kB"\n')
    assert main(["check"]) == 0
    capsys.readouterr()
    write(project, '[[model]]\npath = "build/m.tflite"\nmax_flash = "120kB"\ninclude_runtime = true\n')
    assert main(["check", "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    firmware = fake["m"]["deployed"]
    assert result["ok"] is False and result["results"][0]["value"] == firmware["flash_bytes"]
    assert firmware["flash_bytes"] == 100_000 + firmware["code_bytes"] > 100_000 + 40_000


def test_energy_budget_reads_the_deployed_energy(project, fake, monkeypatch, capsys):
    from tinyprune import targets

    monkeypatch.chdir(project)
    fake["m"] = fake_measurement(target="cortex-m0plus")
    d = fake["m"]["deployed"]
    uj = d["energy_uj"]["value"]
    assert uj == pytest.approx(d["cycles"]["value"] * targets.load("cortex-m0plus").pj_per_cycle * 1e-6)
    write(project, f'[[model]]\npath = "build/m.tflite"\ntarget = "cortex-m0plus"\nmax_energy_uj = {uj * 1.01}\n')
    assert main(["check", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["value"] == pytest.approx(uj)
    write(project, f'[[model]]\npath = "build/m.tflite"\ntarget = "cortex-m0plus"\nmax_energy_uj = {uj * 0.99}\n')
    assert main(["check", "--json"]) == 1


def test_unsupported_op_exits_3(project, fake, monkeypatch, capsys):
    monkeypatch.chdir(project)
    fake["m"] = fake_measurement(unsupported=["GELU"])
    write(project, BUDGET.format(flash="256KiB", lat=100))
    assert main(["check"]) == 3
    assert "GELU" in capsys.readouterr().err


def test_pyproject_tool_section_and_model_filter(project, fake, monkeypatch, capsys):
    monkeypatch.chdir(project)
    (project / "build" / "other.tflite").write_bytes(b"y")
    write(project, '[project]\nname = "x"\n\n[[tool.tinyprune.model]]\npath = "build/m.tflite"\nmax_macs = 1\n\n'
                   '[[tool.tinyprune.model]]\npath = "build/other.tflite"\nmax_macs = 1e9\n', "pyproject.toml")
    assert main(["check", "build/other.tflite"]) == 0
    assert [c[0].name for c in fake["calls"]] == ["other.tflite"]
    assert main(["check"]) == 1  # m.tflite's 2 M MACs exceed max_macs = 1
    assert main(["check", "build/missing.tflite"]) == 2
    assert "no [[model]] budget for build/missing.tflite" in capsys.readouterr().err


@pytest.mark.parametrize("body, message", [
    ('[[model]]\npath = "build/m.tflite"\n', "no budget given"),
    ('[[model]]\npath = "build/m.tflite"\nmax_flash = "lots"\n', "'max_flash' must be a size"),
    ('[[model]]\npath = "build/m.tflite"\nmax_ram = "1MB"\ncolour = "red"\n', "unknown key"),
    ('[[model]]\npath = "build/m.tflite"\nmin_accuracy = 0.9\n', "needs data"),
    ('[[model]]\npath = "build/m.tflite"\nmin_accuracy = 90\ndata = "d.npz"\n', r"fraction, at most 1"),
    ('[[model]]\npath = "build/m.tflite"\nmax_macs = 1\ntarget = "z80"\n', "unknown target 'z80'"),
    ('[[model]]\npath = "build/m.tflite"\nmax_macs = 1\nkernels = "fast"\n', "kernels"),
    ('[[model]]\npath = "build/m.tflite"\nmax_macs = 1\nkernels = "reference"\n', "kernels' can only be"),
    ('[[model]]\nmax_macs = 1\n', "needs path"),
    ('model = 3\n', "expected one or more"),
    ('[[model]\n', "not valid TOML"),
])
def test_bad_budget_file_is_one_line_exit_2(project, fake, monkeypatch, capsys, body, message):
    import re

    monkeypatch.chdir(project)
    write(project, body)
    assert main(["check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]) and "Traceback" not in err[0]


def test_no_budget_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["check"]) == 2
    assert "no budgets" in capsys.readouterr().err
    assert main(["check", "--budget", str(tmp_path / "nope.toml")]) == 2


def test_fit_layout_for_accuracy_data():
    x = np.zeros((5, 8, 8, 1), np.float32)
    assert budget._fit_layout(x, [1, 8, 8, 1]).shape == (5, 1, 8, 8)  # NHWC -> NCHW for litert_predict
    assert budget._fit_layout(np.zeros((5, 1, 8, 8)), [1, 8, 8, 1]).shape == (5, 1, 8, 8)
    assert budget._fit_layout(np.zeros((5, 8, 8)), [1, 8, 8, 1]).shape == (5, 1, 8, 8)
    assert budget._fit_layout(np.zeros((5, 64)), [1, 64]).shape == (5, 64)
    with pytest.raises(DataError, match="do not fit"):
        budget._fit_layout(np.zeros((5, 7, 7)), [1, 8, 8, 1])


def test_a_runtime_budget_uses_that_engines_prediction(project, fake):
    from tinyprune.measure import deployed

    path = write(project, '[[model]]\npath = "build/m.tflite"\ntarget = "cortex-m7"\nruntime = "X-CUBE-AI 9"\n'
                          'clock_mhz = 280\nmax_latency_ms = 100\n')
    result = budget.run_check([], path)
    (outcome,) = result.outcomes
    _, target, _ = fake["calls"][0]
    assert (target.runtime, target.clock_hz) == ("x-cube-ai 9.0", 280_000_000)
    # check reads the measurement's deployed costs: exactly the figure the report's headline shows
    assert outcome.value == pytest.approx(deployed.of(fake["m"]).ms.value)


@pytest.mark.parametrize("extra, message", [
    ('runtime = "nope"\n', "unknown runtime 'nope'"),
    ('clock_mhz = -1\n', "--clock-mhz must be > 0"),
])
def test_bad_runtime_budgets_are_config_errors(project, fake, extra, message):
    path = write(project, '[[model]]\npath = "build/m.tflite"\nmax_latency_ms = 100\n' + extra)
    with pytest.raises(ConfigError, match=message):
        budget.run_check([], path)
