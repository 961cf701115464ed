"""The device cost model (issue 27): instructions per operator, firmware flash and RAM, cycles per
runtime and core, and the one DeployedCosts object every decision reads."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from benchmarks import fit_device as fd
from tinyprune import targets
from tinyprune.errors import ConfigError
from tinyprune.measure import deployed, firmware, instructions, runtimes

DATA = Path(fd.__file__).parent / "data"
DEMO_OPS = ["CONV_2D", "MAX_POOL_2D", "TRANSPOSE", "RESHAPE", "FULLY_CONNECTED"]


def _measured(model: str, core: str) -> tuple[list[dict], int]:
    """A whole model of the calibration, as layer records, and its measured instructions."""
    rows = [r for r in fd.ops_rows() if r["model"] == model and r["core"] == core]
    return [r["layer"] for r in rows], sum(r["instructions"] for r in rows)


@pytest.mark.parametrize("core", instructions.CORES)
@pytest.mark.parametrize("model", ["model_int8", "model_int8_lut", "kws_ref_model", "ad01_int8"])
def test_whole_models_instructions_within_3_percent_on_every_core(model, core):
    layers, measured = _measured(model, core)
    per, stand_ins = instructions.predict_layers(layers, core, channels_last=True)
    assert stand_ins == []
    assert sum(per) == pytest.approx(measured, rel=0.03)


def test_the_instruction_fit_recovers_a_linear_law_and_only_its_own_paths():
    # synthetic rows from known coefficients: the fit must find them (it cannot if features are mixed up)
    truth = [300.0, 20.0, 3.0, 0.0, 5.0, 0.0]
    rows = []
    for cout, i in [(8, 64), (16, 100), (10, 256), (32, 33), (4, 512), (64, 128), (12, 48), (20, 300)]:
        layer = {"op": "FULLY_CONNECTED", "kind": "fully_connected", "input_shapes": [[1, i]],
                 "output_shapes": [[1, cout]], "macs": cout * i, "elements": 0}
        f = instructions.features(instructions.op_shape(layer, True))
        rows.append({"layer": layer, "instructions": int(round(np.dot(truth, f)))})
    coef = fd.fit_instructions(rows)
    assert set(coef) == {"fc"}
    assert coef["fc"][:3] == pytest.approx(truth[:3], rel=1e-3, abs=0.5)


def test_float_layers_are_costed_as_their_int8_graph():
    conv = {"op": "convolution", "kind": "conv", "input_shapes": [[1, 22, 8, 8]], "output_shapes": [[1, 40, 8, 8]],
            "macs": 506880, "elements": 0}
    nhwc = {**conv, "op": "CONV_2D", "input_shapes": [[1, 8, 8, 22]], "output_shapes": [[1, 8, 8, 40]]}
    relu = {"op": "relu", "kind": "elementwise", "input_shapes": [[1, 40, 8, 8]], "output_shapes": [[1, 40, 8, 8]],
            "macs": 0, "elements": 2560}
    a, _ = instructions.predict_layers([conv, relu], "cortex-m4", channels_last=False)
    b, _ = instructions.predict_layers([nhwc], "cortex-m4", channels_last=True)
    assert a[0] == pytest.approx(b[0]) and a[1] == 0  # ReLU folds into the convolution


def test_an_op_outside_the_calibration_is_priced_and_named():
    mul = {"op": "MUL", "kind": "elementwise", "input_shapes": [[1, 64], [1, 64]], "output_shapes": [[1, 64]],
           "macs": 0, "elements": 64}
    per, stand_ins = instructions.predict_layers([mul], "cortex-m4", channels_last=True)
    assert per[0] > 0 and stand_ins == ["MUL"]


def _image(model: str) -> dict:
    return next(r for r in fd.images() if r["model"] == model)


@pytest.mark.parametrize("model", ["model_int8", "model_int8_lut"])
def test_firmware_flash_and_ram_within_3_percent_of_the_linked_images(model):
    img = _image(model)
    code = firmware.code_bytes(img["ops"], img["core"])
    assert img["model_bytes"] + code["total"] == pytest.approx(img["flash_bytes"], rel=0.03)
    assert img["arena_bytes"] + deployed.ram_outside_arena() == pytest.approx(img["ram_bytes"], rel=0.03)


def test_the_decode_kernel_costs_more_code_than_the_demo_lut_saves():
    plain, lut = _image("model_int8"), _image("model_int8_lut")
    extra = deployed.decode_code_bytes(DEMO_OPS, targets.load("cortex-m4"))
    assert extra > plain["model_bytes"] - lut["model_bytes"] > 0
    assert 15_000 < extra < 25_000


def test_code_size_follows_the_op_set_and_the_core():
    m4 = firmware.code_bytes(DEMO_OPS, "cortex-m4")
    with_dw = firmware.code_bytes([*DEMO_OPS, "DEPTHWISE_CONV_2D"], "cortex-m4")
    assert with_dw["total"] > m4["total"] + 12_000  # the depthwise kernel and its CMSIS-NN functions
    assert firmware.code_bytes(DEMO_OPS, "cortex-m55")["total"] != m4["total"]
    odd = firmware.code_bytes([*DEMO_OPS, "HARD_SWISH"], "cortex-m4")
    assert odd["estimated_ops"] == ["HARD_SWISH"] and odd["total"] > m4["total"]
    # ops no kernel runs are not registered
    assert firmware.registered(["SHAPE", "CONV_2D", "CONV_2D", "CUSTOM:TFLM_DECODE"]) == ["CONV_2D", "TFLM_DECODE"]


@pytest.mark.parametrize("text, name", [
    ("tflm", "tflm"), ("TFLM", "tflm"), ("tflite-micro", "tflm"),
    ("x-cube-ai", "x-cube-ai 9.0"), ("X-CUBE-AI 7.3.0", "x-cube-ai 7.3"), ("x-cube-ai 7.2", "x-cube-ai 7.3"),
    ("plumerai", "plumerai 2023.05"), ("Bosch", "bosch-hale 1.0.175"), ("tflm-cmsis-nn 2.3.1", "tflm-cmsis-nn 2.3.1"),
    ("x-cube-ai 9.0", "x-cube-ai 9.0"),
])
def test_runtime_names_as_users_write_them(text, name):
    got, choice = runtimes.resolve(text)
    assert got == name and text in choice


def test_an_unknown_runtime_is_one_line_naming_the_known_ones():
    with pytest.raises(ConfigError, match="unknown runtime 'nope'; known: tflm, bosch-hale"):
        runtimes.resolve("nope")


GROUPS = {"conv": 1e6, "dw": 2e5, "fc": 5e4, "other": 1e5}


@pytest.mark.parametrize("core", ["cortex-m0plus", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55"])
@pytest.mark.parametrize("runtime", runtimes.names())
def test_every_runtime_predicts_on_every_core_with_a_band(runtime, core):
    c = runtimes.predict(GROUPS, runtime, core, runtimes.INSTRUCTIONS_OF.get(core, core))
    assert c.cycles > 0 and 0 < c.band < 1 and c.coverage == pytest.approx(0.8)


def test_a_core_without_a_board_gets_a_wider_band_and_says_so():
    cyc = runtimes.table()["cycles"]
    anchored = runtimes.predict(GROUPS, "tflm", cyc["tflm_core"], cyc["tflm_core"])
    m55 = runtimes.predict(GROUPS, "tflm", "cortex-m55", "cortex-m55")
    assert anchored.band == pytest.approx(cyc["band"]) and not anchored.notes
    assert m55.band == pytest.approx(2 * cyc["band"]) and m55.notes
    vendor = runtimes.predict(GROUPS, "x-cube-ai 9.0", "cortex-m55", "cortex-m55")
    assert vendor.band == pytest.approx(2 * cyc["band"]) and any("nearest" in n for n in vendor.notes)


def test_tflm_is_instructions_times_one_cycles_per_instruction():
    cyc = runtimes.table()["cycles"]
    c = runtimes.predict(GROUPS, "tflm", cyc["tflm_core"], cyc["tflm_core"])
    assert c.cycles == pytest.approx(cyc["tflm_cpi"] * sum(GROUPS.values()))
    m7 = runtimes.predict(GROUPS, "tflm", "cortex-m7", "cortex-m7")
    assert m7.cycles == pytest.approx(c.cycles * cyc["core_factor"]["cortex-m7"])


def test_the_cycle_fit_recovers_runtimes_and_core_factors_and_predicts_a_board_left_out():
    feats = {(b, core): np.array(f) for b, f in {"ad": [0, 0, 6e5, 1e4], "ic": [3e7, 0, 2e3, 4e6],
                                                  "kws": [5e6, 2.2e6, 3e3, 5e5], "vww": [1.5e7, 8e6, 2e3, 1e6]}.items()
             for core in instructions.CORES}
    truth = {"a": ([1.2, 2.0, 1.5, 0.8], ["cortex-m4", "cortex-m7"]), "b": ([1.0, 0.9, 1.1, 0.5], ["cortex-m4",
                                                                                                   "cortex-m7"]),
             fd.TFLM_ANCHOR: ([1.4, 1.4, 1.4, 1.4], ["cortex-m33"])}
    factor = {"cortex-m4": 1.0, "cortex-m7": 0.6, "cortex-m33": 1.0}
    rows = [{"board": core, "core": core, "mhz": 100.0, "runtime": rt, "benchmark": b,
             "cycles": factor[core] * float(np.dot(coef, feats[(b, core)])), "energy_uj": None}
            for rt, (coef, cores) in truth.items() for core in cores for b in fd.MODELS]
    model = fd.fit_cycles(rows, feats)
    assert model["scale"]["cortex-m7"] == pytest.approx(0.6, rel=1e-3)
    assert model["tflm_cpi"] == pytest.approx(1.4, rel=1e-6)
    loo = fd.leave_one_board_out(rows, feats)
    assert {e["runtime"] for e in loo} == {"a", "b"}
    assert all(abs(e["error"]) < 1e-3 for e in loo)
    band, cover = fd.band_and_coverage(loo)
    assert band < 1e-3 and set(cover) == {"a", "b"}


def _costs(**kw) -> deployed.DeployedCosts:
    layer = {"op": "FULLY_CONNECTED", "kind": "fully_connected", "input_shapes": [[1, 640]],
             "output_shapes": [[1, 128]], "macs": 81920, "elements": 0, "dtype": "int8"}
    return deployed.compute([layer], kw.pop("target", targets.load("cortex-m4")), channels_last=True,
                            model_bytes=90_000, arena_bytes=kw.pop("arena", 2_000), arena_source="test",
                            basis="int8 TFLite model", **kw)


def test_deployed_costs_add_up_and_round_trip():
    t = targets.load("cortex-m4")
    c = _costs()
    assert c.flash_bytes == c.model_bytes + c.code_bytes and c.ram_bytes == c.arena_bytes + c.outside_arena_bytes
    assert c.ms.value == pytest.approx(c.cycles.value / t.clock_hz * 1e3)
    assert c.energy_uj.value == pytest.approx(c.cycles.value * t.pj_per_cycle * 1e-6)
    assert c.energy_uj.low < c.energy_uj.value < c.energy_uj.high and c.ms.low < c.ms.value < c.ms.high
    again = deployed.DeployedCosts.from_dict(c.to_dict())
    assert again == c and again.to_dict()["fits"] == {"flash": True, "ram": True, "all": True}


def test_one_fits_rule_names_what_is_missed():
    import dataclasses

    small = dataclasses.replace(targets.load("cortex-m4"), flash_bytes=64 * 1024, ram_bytes=16 * 1024)
    c = _costs(target=small)
    assert not c.fits_flash and not c.fits_ram and not c.fits
    assert [m.split()[0] for m in c.misses()] == ["flash", "RAM"]


def test_the_runtime_choice_is_carried_into_the_notes():
    t = targets.configure(targets.load("cortex-m7"), "X-CUBE-AI")
    c = _costs(target=t)
    assert c.runtime == "x-cube-ai 9.0" and c.notes[0] == "runtime X-CUBE-AI -> x-cube-ai 9.0 (nearest published version)"


def test_no_runtime_exits_for_a_known_core():
    for name in ("cortex-m33", "cortex-m55", "cortex-m0plus", "esp32-s3"):
        for rt in ("tflm", "x-cube-ai", "plumerai", "bosch-hale 1.0"):
            c = _costs(target=targets.configure(targets.load(name), rt))
            assert c.ms.value > 0 and c.ms.low < c.ms.value < c.ms.high


def test_firmware_images_csv_is_what_the_issue_measured():
    rows = list(csv.DictReader((DATA / "firmware_images.csv").open()))
    assert {r["model"]: int(r["flash_bytes"]) for r in rows} == {"model_int8": 104436, "model_int8_lut": 110740}
