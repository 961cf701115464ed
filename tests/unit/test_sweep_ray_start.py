"""A Ray that is slow to start (issue 30: the first `sweep` on a fresh machine exited 70 with Ray's
start-up timeout; the same command passed again): a longer wait, one more try, then one line
with exit 2. A fake ``ray`` stands in for the real one: the test is about what tinyprune does."""

import sys
import types

import numpy as np
import pytest
import torch

from tinyprune.cli import main
from tinyprune.sweep import RAY_START_TRIES, RAY_START_WAIT_S, RayStartError, start_ray
from tinyprune.testing import MODELS

TIMED_OUT = ("The current node timed out during startup. This could happen because some of the raylet failed "
             "to startup or the GCS has become overloaded.")


def fake_ray(failures: list[BaseException | None]):
    """A ``ray`` whose init raises the given errors in turn (None: starts)."""
    calls = {"init": 0, "shutdown": 0, "wait": []}

    def init(**kwargs):
        import os

        calls["wait"].append(os.environ.get("RAY_gcs_server_port_wait_time_s"))
        error = failures[calls["init"]]
        calls["init"] += 1
        if error is not None:
            raise error

    def shutdown():
        calls["shutdown"] += 1

    ray = types.SimpleNamespace(init=init, shutdown=shutdown, is_initialized=lambda: False)
    return ray, calls


@pytest.fixture(autouse=True)
def no_ray_wait_set(monkeypatch):
    monkeypatch.delenv("RAY_gcs_server_port_wait_time_s", raising=False)


def test_a_start_that_times_out_is_tried_again_with_the_longer_wait():
    ray, calls = fake_ray([Exception(TIMED_OUT), None])
    start_ray(ray, {"address": "local", "num_cpus": 2})
    assert calls["init"] == 2 and calls["shutdown"] == 1  # the failed start's leftovers stopped first
    assert calls["wait"] == [str(RAY_START_WAIT_S)] * 2


def test_a_wait_set_by_the_user_is_kept(monkeypatch):
    monkeypatch.setenv("RAY_gcs_server_port_wait_time_s", "600")
    ray, calls = fake_ray([None])
    start_ray(ray, {"address": "local"})
    assert calls["wait"] == ["600"]


def test_a_start_that_keeps_timing_out_is_one_line_with_exit_2():
    ray, calls = fake_ray([Exception(TIMED_OUT), TimeoutError("GCS did not answer")])
    with pytest.raises(RayStartError) as info:
        start_ray(ray, {"address": "local"})
    assert calls["init"] == RAY_START_TRIES == 2 and calls["shutdown"] == 2
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    assert "2 tries" in str(info.value) and "GCS did not answer" in str(info.value) and "--address" in str(info.value)


def test_other_failures_of_ray_init_are_not_retried():
    ray, calls = fake_ray([ValueError("num_cpus must be positive")])
    with pytest.raises(ValueError):
        start_ray(ray, {"address": "local"})
    assert calls["init"] == 1


def test_the_sweep_command_exits_2_with_one_line_before_any_cell(tmp_path, digits, capsys, monkeypatch):
    ray, calls = fake_ray([Exception(TIMED_OUT)] * RAY_START_TRIES)
    monkeypatch.setitem(sys.modules, "ray", ray)
    torch.save(MODELS["mlp"]().eval(), tmp_path / "mlp.pt")
    np.savez(tmp_path / "digits.npz", x=digits.x_train.transpose(0, 2, 3, 1), y=digits.y_train)
    code = main(["sweep", str(tmp_path / "mlp.pt"), "--data", str(tmp_path / "digits.npz"), "--grid", "sparsity=0.3",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("tinyprune: error: Ray did not start"), err
    assert calls["init"] == 2 and not list((tmp_path / "out" / "cells").iterdir())
