"""Ethos-U targets (issue 32): Vela compiles the int8 model, its numbers become the deployed costs,
`check` gates on them, and a missing Vela is one line naming the extra."""

from __future__ import annotations

import json
import sys

import pytest

from tinyprune import targets
from tinyprune.cli_measure import main
from tinyprune.errors import ConfigError
from tinyprune.measure import npu

NPU_TARGETS = ["ethos-u55-64", "ethos-u55-128", "ethos-u55-256", "ethos-u65-256"]
needs_vela = pytest.mark.skipif(not npu.available(), reason="the vela extra is not installed")


@pytest.fixture(scope="module")
def model(request):
    from test_measure_keras import _cache_dir, build_keras_models  # a real int8 CNN, converted once and cached

    return build_keras_models(_cache_dir(request)) / "cnn_int8.tflite"


@pytest.mark.parametrize("name", NPU_TARGETS)
def test_npu_targets_load_with_their_host_core(name):
    from tinyprune.measure import runtimes

    t = targets.load(name)
    assert t.npu == name and t.npu_system_config and t.npu_memory_mode and t.supports("ethos-u")
    assert runtimes.core_of(t) == "cortex-m55"


def test_an_npu_needs_its_vela_configuration():
    raw = targets.load("ethos-u55-128").to_dict()
    del raw["npu_memory_mode"]
    with pytest.raises(ConfigError, match="an npu needs npu_system_config, npu_memory_mode and host_core"):
        targets._validate("ethos-u55-128", raw)


def test_without_vela_an_npu_target_is_one_line_naming_the_extra(model, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ethosu", None)  # import ethosu fails as on an install without the extra
    assert not npu.available()
    assert main(["measure", str(model), "--target", "ethos-u55-128", "--no-timing"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'tinyprune[vela]'" in err[0] and "ethos-u55-128" in err[0]


@needs_vela
def test_vela_numbers_are_the_deployed_costs(model, capsys):
    assert main(["measure", str(model), "--target", "ethos-u55-128", "--no-timing", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    d = r["deployed"]
    n = d["npu"]
    assert n["accelerator"] == "ethos-u55-128" and n["npu_cycles"] > 0 and n["sram_bytes"] > 0
    assert n["layers"] and sum(layer["cycles"] for layer in n["layers"]) > 0
    # time: the NPU's cycles at its clock, plus the host's share for what Vela left on the CPU
    npu_ms = n["npu_cycles"] / n["npu_clock_hz"] * 1e3
    assert d["ms"]["value"] >= npu_ms and d["ms"]["low"] < d["ms"]["value"] < d["ms"]["high"]
    assert d["flash_bytes"] == d["model_bytes"] + d["code_bytes"] == n["compiled_bytes"] + d["code_bytes"]
    # a wider NPU takes no more cycles for the same model
    wide = npu.compile_model(model.read_bytes(), targets.load("ethos-u55-256"))
    assert wide.npu_cycles <= n["npu_cycles"]


@needs_vela
def test_check_budgets_read_the_npu_numbers(model, tmp_path, monkeypatch, capsys):
    from tinyprune.measure.core import measure_file

    costs = measure_file(model, "ethos-u55-128", timing=False)["deployed"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tinyprune.toml").write_text(
        f'[[model]]\npath = "{model}"\ntarget = "ethos-u55-128"\nmax_latency_ms = {costs["ms"]["value"] * 1.001}\n'
        f'max_ram = {costs["ram_bytes"]}\ninclude_runtime = true\n')
    assert main(["check", "--json"]) == 0
    capsys.readouterr()
    (tmp_path / "tinyprune.toml").write_text(
        f'[[model]]\npath = "{model}"\ntarget = "ethos-u55-128"\nmax_latency_ms = {costs["ms"]["value"] * 0.99}\n')
    assert main(["check", "--json"]) == 1
