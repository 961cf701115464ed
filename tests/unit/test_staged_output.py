"""Result folders: replaced only when tinyprune wrote everything in them, never half-written."""

import json

import pytest

from tinyprune.api import MANIFEST, staged_output
from tinyprune.errors import ConfigError


def test_a_result_is_replaced_by_the_next_run_and_carries_a_manifest(tmp_path):
    out = tmp_path / "r"
    with staged_output(out) as tmp:
        (tmp / "a.txt").write_text("1")
    assert json.loads((out / MANIFEST).read_text())["files"] == ["a.txt"]
    with staged_output(out) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # no temp or old folder left behind


def test_a_file_added_to_a_result_makes_it_the_users(tmp_path):
    out = tmp_path / "r"
    with staged_output(out) as tmp:
        (tmp / "a.txt").write_text("1")
    (out / "notes.md").write_text("mine")
    with pytest.raises(ConfigError, match=r"did not write \(notes.md\)"):
        with staged_output(out):
            raise AssertionError("must not start")
    assert (out / "notes.md").read_text() == "mine" and (out / "a.txt").read_text() == "1"


@pytest.mark.parametrize("manifest", ["not json", '{"files": 3}', '{"other": []}'])
def test_a_damaged_manifest_marks_nothing_as_ours(tmp_path, manifest):
    out = tmp_path / "r"
    out.mkdir()
    (out / MANIFEST).write_text(manifest)
    (out / "a.txt").write_text("1")
    with pytest.raises(ConfigError, match="did not write"):
        with staged_output(out):
            pass
    assert (out / "a.txt").exists()


def test_a_failed_run_leaves_the_previous_result(tmp_path):
    out = tmp_path / "r"
    with staged_output(out) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(KeyboardInterrupt):
        with staged_output(out) as tmp:
            (tmp / "a.txt").write_text("half")
            raise KeyboardInterrupt
    assert (out / "a.txt").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_a_killed_runs_staging_folder_is_removed_by_the_next_run(tmp_path):
    import subprocess
    import sys

    from tinyprune.api import STAGING

    out = tmp_path / "r"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / ".r.tmp-killed"
    stale.mkdir()
    (stale / STAGING).write_text(dead.stdout.strip())  # its writer exited without cleaning up (SIGKILL)
    foreign = tmp_path / ".r.tmp-someone-else"
    foreign.mkdir()  # no marker: not ours to remove
    with staged_output(out) as tmp:
        assert (tmp / STAGING).read_text() == str(__import__("os").getpid())
        (tmp / "a.txt").write_text("1")
    assert not stale.exists() and foreign.exists()
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "a.txt"]  # the marker is not published


def test_a_file_the_user_adds_during_the_run_is_kept(tmp_path):
    out = tmp_path / "r"
    with staged_output(out) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(ConfigError, match=r"now holds files tinyprune did not write \(late.md\)"):
        with staged_output(out) as tmp:
            (tmp / "a.txt").write_text("2")
            (out / "late.md").write_text("written while the run worked")
    assert (out / "late.md").exists() and (out / "a.txt").read_text() == "1"


def _unrenamable(monkeypatch, out):
    """``out`` behaves like a folder in a read-only place (root ignores chmod, so it is simulated)."""
    from pathlib import Path

    real = Path.rename

    def rename(self, target):
        if self == out:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, target)

    monkeypatch.setattr(Path, "rename", rename)


def test_a_result_that_cannot_be_moved_aside_is_bad_input_and_stays(tmp_path, monkeypatch):
    out = tmp_path / "r"
    with staged_output(out) as tmp:
        (tmp / "a.txt").write_text("1")
    _unrenamable(monkeypatch, out)
    with pytest.raises(ConfigError, match="cannot replace the previous result .Permission denied."):
        with staged_output(out) as tmp:
            (tmp / "b.txt").write_text("2")
    assert (out / "a.txt").read_text() == "1" and [p.name for p in tmp_path.iterdir()] == ["r"]


def test_compress_into_a_read_only_result_exits_2_with_one_line(tmp_path, monkeypatch, capsys, digits_npz):
    from tinyprune import api
    from tinyprune.cli import main

    def run(source, cfg, target, data_path, builtin_data, tmp, *rest):
        (tmp / "model.tflite").write_bytes(b"x")  # the pipeline's result, without running it

    monkeypatch.setattr(api, "_run", run)
    model, out = tmp_path / "m.pt", tmp_path / "r"
    model.write_bytes(b"x")
    argv = ["compress", str(model), "--data", str(digits_npz), "--out", str(out), "--quiet"]
    assert main(argv) == 0
    _unrenamable(monkeypatch, out)
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot replace the previous result" in err[0], err
    assert (out / "model.tflite").exists()
