"""`tinyprune sweep` on a real Ray: a local run, a failing cell, resume after a kill, a two-node
cluster on localhost, and the same numbers as `compress` alone."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tinyprune.cli import main
from tinyprune.config import FinetuneConfig
from tinyprune.testing import MODELS
from tinyprune.train import fit

ray = pytest.importorskip("ray")  # the [sweep] extra; `make install` installs it
psutil = pytest.importorskip("psutil")

FLAGS = ["--finetune-epochs", "1", "--no-deepcompress", "--max-accuracy-drop", "100", "--quiet"]
# two cells, one per worker or node: enough for every claim below, and each cell is a whole compress run
GRID = ["--grid", "criterion=l1,flow", "sparsity=0.5"]


@pytest.fixture(scope="module")
def project(tmp_path_factory, digits):
    root = tmp_path_factory.mktemp("sweep")
    torch.manual_seed(0)
    model = fit(MODELS["mlp"](), digits.x_train, digits.y_train, FinetuneConfig(epochs=3, lr=3e-3), seed=0).eval()
    torch.save(model, root / "mlp.pt")
    np.savez(root / "digits.npz", x=digits.x_train.transpose(0, 2, 3, 1), y=digits.y_train)
    return root


@pytest.fixture
def own_ray_processes():
    """Every Ray process a test starts is stopped afterwards, by its process id."""
    def ray_pids():
        return {p.pid for p in psutil.process_iter(["cmdline"])
                if any("ray" in part for part in (p.info["cmdline"] or [])[:3])}

    before = ray_pids()
    yield
    for pid in ray_pids() - before:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass


def _sweep(project, out, *extra) -> tuple[int, list[dict]]:
    code = main(["sweep", str(project / "mlp.pt"), "--data", str(project / "digits.npz"), "--out", str(out),
                 *GRID, *FLAGS, "--json", *extra])
    return code, json.loads((out / "sweep.json").read_text())


@pytest.fixture(scope="module")
def local_sweep(project):
    """The grid on a local Ray with 2 workers (shared by the tests that compare with it)."""
    out = project / "local"
    code, rows = _sweep(project, out, "--workers", "2")
    return code, rows, out


@pytest.mark.slow
def test_a_local_sweep_runs_every_cell_and_matches_compress_alone(project, local_sweep, tmp_path, capsys,
                                                                  own_ray_processes):
    code, rows, out = local_sweep
    capsys.readouterr()
    assert code == 0
    assert [r["cell"] for r in rows] == ["flow_s0.5_b-_cortex-m4", "l1_s0.5_b-_cortex-m4"]
    assert all(r["status"] == "done" and abs(r["macs_removed"] - r["sparsity"]) < 0.02 for r in rows)
    with (out / "sweep.csv").open() as f:
        assert [r["cell"] for r in csv.DictReader(f)] == [r["cell"] for r in rows]
    assert "Pareto" in (out / "sweep.html").read_text()
    # a cell against the same compress run alone, one thread, same seed: the same bytes and numbers
    torch.set_num_threads(1)
    try:
        for cell in ("flow_s0.5_b-_cortex-m4",):
            criterion, sparsity = cell.split("_")[0], cell.split("_")[1][1:]
            alone = tmp_path / f"alone-{cell}"
            assert main(["compress", str(project / "mlp.pt"), "--data", str(project / "digits.npz"), "--out",
                         str(alone), "--criterion", criterion, "--sparsity", sparsity, *FLAGS]) == 0
            swept = out / "cells" / cell
            assert (alone / "model_int8.tflite").read_bytes() == (swept / "model_int8.tflite").read_bytes()
            a, s = (json.loads((p / "report.json").read_text()) for p in (alone, swept))
            assert [st["accuracy"] for st in a["stages"]] == [st["accuracy"] for st in s["stages"]]
    finally:
        torch.set_num_threads(os.cpu_count() or 1)


@pytest.mark.slow
def test_a_failing_cell_is_a_row_and_the_sweep_exits_1(project, tmp_path, capsys, own_ray_processes):
    code = main(["sweep", str(project / "mlp.pt"), "--data", str(project / "digits.npz"), "--out",
                 str(tmp_path / "out"), "--grid", "sparsity=0.3,0.99", *FLAGS, "--workers", "2"])
    capsys.readouterr()
    rows = {r["cell"]: r for r in json.loads((tmp_path / "out" / "sweep.json").read_text())}
    assert code == 1
    assert rows["flow_s0.3_b-_cortex-m4"]["status"] == "done"  # the default criterion
    bad = rows["flow_s0.99_b-_cortex-m4"]
    assert (bad["status"], bad["exit_code"]) == ("failed", 2) and "could not remove 99% of MACs" in bad["error"]


@pytest.mark.slow
def test_killed_sweep_resumes_where_it_stopped(project, tmp_path, own_ray_processes):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tinyprune", "sweep", str(project / "mlp.pt"), "--data", str(project / "digits.npz"),
           "--out", str(out), *GRID, *FLAGS, "--workers", "1"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while time.time() < deadline:  # kill it once the first cell is in
            if (out / "sweep.json").exists() and json.loads((out / "sweep.json").read_text() or "[]"):
                break
            time.sleep(1)
    finally:
        children = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGKILL)
        for child in children:
            try:
                child.kill()
            except psutil.Error:
                pass
        proc.wait()
    first = json.loads((out / "sweep.json").read_text())
    assert len(first) == 1
    done = {r["cell"]: (out / "cells" / r["cell"] / "report.json").stat().st_mtime_ns for r in first}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    rows = json.loads((out / "sweep.json").read_text())
    assert len(rows) == 2 and all(r["status"] == "done" for r in rows)
    # the cells finished before the kill were not run again
    assert all((out / "cells" / c / "report.json").stat().st_mtime_ns == t for c, t in done.items())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_two_node_cluster_on_localhost_runs_cells_on_both(project, local_sweep, tmp_path, own_ray_processes):
    port = _free_port()
    ray_bin = str(Path(sys.executable).with_name("ray"))
    # a localhost-only cluster: the same (no) token for the head, the second node and the driver,
    # which runs as its own process (Ray keeps a process's first auth settings)
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_AUTH_MODE": "disabled"}
    subprocess.run([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false"],
                   check=True, capture_output=True, env=env, timeout=120)
    subprocess.run([ray_bin, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1"], check=True,
                   capture_output=True, env=env, timeout=120)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "tinyprune", "sweep", str(project / "mlp.pt"), "--data",
                             str(project / "digits.npz"), "--out", str(out), *GRID, *FLAGS, "--address",
                             f"127.0.0.1:{port}"], capture_output=True, text=True, env=env, timeout=900)
    rows = json.loads((out / "sweep.json").read_text())
    assert result.returncode == 0 and len(rows) == 2, (result.stderr[-1500:], rows)
    assert len({r["node"] for r in rows}) == 2  # both nodes ran cells
    # the same numbers as on one machine
    _, local, _ = local_sweep
    assert [(r["deployed_accuracy"], r["flash_bytes"]) for r in rows] == \
        [(r["deployed_accuracy"], r["flash_bytes"]) for r in local]


@pytest.mark.parametrize("argv, message", [
    (["--grid", "color=red"], "unknown grid key 'color'; known keys: criterion, sparsity"),
    (["--grid", "sparsity="], "--grid sparsity= has no values"),
    (["--grid", "criterion=l1,nope"], "unknown criterion 'nope'"),
    (["--grid", "criterion=l1,random", "sparsity=" + ",".join(f"{i / 10_000:g}" for i in range(1, 5002))],
     "the grid has 10,002 cells (over 10,000); pass --yes"),
    (["--grid", "sparsity=0.5", "--address", "127.0.0.1:1"], "no Ray head node answers there"),
])
def test_bad_grids_exit_2_before_any_cell(project, tmp_path, capsys, argv, message):
    code = main(["sweep", str(project / "mlp.pt"), "--data", str(project / "digits.npz"), "--out",
                 str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out" / "cells").exists()


def test_without_ray_the_sweep_names_the_extra(project, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    code = main(["sweep", str(project / "mlp.pt"), "--data", str(project / "digits.npz"), "--grid", "sparsity=0.3",
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "pip install 'tinyprune[sweep]'" in capsys.readouterr().err


def test_a_sweep_toml_takes_lists_whose_items_hold_commas(tmp_path):
    from tinyprune.sweep import parse_grid

    (tmp_path / "sweep.toml").write_text('[grid]\nruntime = ["onnc (unversioned, v1.1)", "x-cube-ai 9.0"]\n'
                                         'sparsity = [0.3, 0.5, 0.3]\n')
    grid = parse_grid(["criterion=l1,flow,l1"], tmp_path / "sweep.toml")
    assert grid == {"runtime": ["onnc (unversioned, v1.1)", "x-cube-ai 9.0"], "sparsity": [0.3, 0.5],
                    "criterion": ["l1", "flow"]}
