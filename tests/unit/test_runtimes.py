"""Latency per runtime (issue 16): the fit on MLPerf Tiny results, the shipped table, the CLI."""

import numpy as np
import pytest

from benchmarks import fit_runtimes as fr
from tinyprune import targets
from tinyprune.cli import main
from tinyprune.errors import ConfigError
from tinyprune.measure import runtimes

FEATS = {"ad": np.array([0, 0, 2.6e5, 3e3]), "ic": np.array([12.5e6, 0, 640, 1.4e5]),
         "kws": np.array([2.4e6, 2.9e5, 768, 1.2e5]), "vww": np.array([6.7e6, 8e5, 512, 5e5])}
CORES = {"L4": ("Cortex-M4", 120.0), "H7": ("Cortex-M7", 280.0), "G0": ("Cortex-M0+", 64.0)}


def _rows(truth: dict, factors: dict) -> list[dict]:
    rows = []
    for rt, (coef, boards) in truth.items():
        for board in boards:
            core, mhz = CORES[board]
            for bench, f in FEATS.items():
                rows.append({"board": board, "core": core, "mhz": mhz, "runtime": rt, "benchmark": bench,
                             "cycles": float(f @ coef) * factors[core], "source": "synthetic"})
    return rows


def test_the_joint_fit_recovers_runtimes_and_core_factors_and_predicts_a_board_left_out():
    truth = {"a": (np.array([2.0, 10.0, 3.0, 5.0]), ["L4", "H7", "G0"]),
             "b": (np.array([1.5, 3.0, 2.0, 0.0]), ["L4", "H7"]),
             "c": (np.array([4.0, 20.0, 5.0, 30.0]), ["L4"])}
    factors = {"Cortex-M4": 1.0, "Cortex-M7": 0.55, "Cortex-M0+": 4.5}
    rows = _rows(truth, factors)
    model = fr.fit(rows, FEATS)
    assert model["scale"]["Cortex-M7"][0] == pytest.approx(0.55, rel=1e-3)
    assert model["scale"]["Cortex-M0+"][0] == pytest.approx(4.5, rel=1e-3)
    for r in rows:
        assert fr.predict(model, FEATS[r["benchmark"]], r["runtime"], r["core"]) == pytest.approx(r["cycles"], rel=1e-3)
    loo = fr.leave_one_board_out(rows, FEATS)
    # "c" ran on one board: never held out; with exact data every held-out prediction is exact
    assert {e["runtime"] for e in loo} == {"a", "b"}
    assert all(abs(e["error"]) < 1e-3 for e in loo if e["error"] is not None)
    # "a" on G0 left out: no other runtime ran on a Cortex-M0+, so that core cannot be predicted
    assert {e["board"] for e in loo if e["error"] is None} == {"G0"}


def test_rows_keep_the_fastest_result_and_one_name_per_release(tmp_path):
    csv = tmp_path / "a.csv"
    head = "release,division,submitter,system,board,core,mhz,runtime,runtime_version,benchmark,latency_ms,energy_uj,source_path\n"
    csv.write_text(head + "v1.2,closed,s,x,B,Cortex-M4,100,x-cube-ai,9.0.0,ic,10,,p1\n"
                          "v1.2,closed,s,x,B,Cortex-M4,100,x-cube-ai,9.0,ic,8,,p2\n"
                          "v1.2,closed,s,x,B,Cortex-M4,100,x-cube-ai,9.0,streaming,8,,p3\n")
    (row,) = fr.load_rows(csv)
    assert row["runtime"] == "x-cube-ai 9.0" and row["cycles"] == pytest.approx(8e-3 * 100e6)


def test_the_shipped_table_predicts_the_anchor_it_was_fitted_to():
    # x-cube-ai 9.0 on a Cortex-M4: cycles = coefficients . features (core factor 1)
    spec = runtimes.table()["runtime"]["x-cube-ai 9.0"]
    layers = [{"kind": "conv", "macs": 1_000_000, "elements": 10_000}, {"kind": "fully_connected", "macs": 5_000,
                                                                        "elements": 10}]
    got = runtimes.predict(layers, "x-cube-ai 9.0", "Cortex-M4", 100_000_000)
    c = spec["coefficients"]
    assert got["cycles"] == pytest.approx(c[0] * 1e6 + c[3] * 10_010 + c[2] * 5_000)
    assert got["ms"] == pytest.approx(got["cycles"] / 1e5) and not got["extrapolated"]
    m7 = runtimes.predict(layers, "x-cube-ai 9.0", "Cortex-M7", 100_000_000)
    assert m7["cycles"] == pytest.approx(got["cycles"] * runtimes.table()["cores"]["Cortex-M7"][0])
    one_board = runtimes.predict(layers, runtimes.DEFAULT_RUNTIME, "Cortex-M7", 100_000_000)
    assert one_board["extrapolated"] and one_board["band"] == 0.25


def test_a_users_board_file_inherits_from_a_known_target(tmp_path):
    board = tmp_path / "myboard.toml"
    board.write_text('base = "cortex-m7"\nclock_hz = 280_000_000\nram_bytes = 1_441_792\n')
    t = targets.load(str(board))
    assert (t.name, t.clock_hz, t.ram_bytes, t.base) == ("myboard", 280_000_000, 1_441_792, "cortex-m7")
    assert runtimes.core_of(t) == "Cortex-M7"
    assert t.tflm_ops == targets.load("cortex-m7").tflm_ops


@pytest.mark.parametrize("argv, message", [
    (["--runtime", "nope"], "unknown runtime 'nope'; known runtimes: bosch-hale 1.0"),
    (["--runtime", "x-cube-ai 9.0", "--target", "cortex-m33"], "no calibrated cost model for core Cortex-M33"),
    (["--clock-mhz", "0"], "--clock-mhz must be > 0"),
    (["--target", "missing.toml"], "target file missing.toml not found"),
])
def test_measure_refuses_runtime_and_board_errors_before_loading(tmp_path, capsys, argv, message):
    code = main(["measure", str(tmp_path / "absent.tflite"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("text, message", [
    ('base = "cortex-m4"\nclock_hz = -5\n', "'clock_hz' must be > 0"),
    ('base = "cortex-m99"\n', "base must be one of"),
    ('base = "cortex-m4"\nflash = 3\n', "unknown key(s) flash"),
    ('name = "x"\n', "missing key"),
])
def test_bad_board_files_are_one_line_errors(tmp_path, text, message):
    board = tmp_path / "b.toml"
    board.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        targets.load(str(board))
