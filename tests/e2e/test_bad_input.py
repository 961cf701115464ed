"""Every bad input: one line on stderr, a documented exit code, no traceback, no partial output."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from tinyprune.cli import main
from tinyprune.cli_progress import FINISHED, RUNNING, STARTED
from tinyprune.testing import MODELS


def run(capsys, *args):
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, err


def assert_one_line(err, *needles):
    # without a terminal, stages print "started/finished" lines before the error (CI logs)
    lines = [l for l in err.strip().splitlines() if not l.startswith((STARTED, FINISHED, RUNNING))]
    assert len(lines) == 1, err
    assert lines[0].startswith("tinyprune: error: ")
    for n in needles:
        assert n in lines[0]
    assert "Traceback" not in err


@pytest.fixture
def cnn_file(tmp_path):
    path = tmp_path / "cnn.pt"
    torch.save(MODELS["cnn_bn"]().eval(), path)
    return path


def test_missing_model(capsys, tmp_path, digits_npz):
    code, err = run(capsys, "compress", tmp_path / "nope.pt", "--data", digits_npz, "--out", tmp_path / "o")
    assert code == 2
    assert_one_line(err, "not found")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content, needle", [(b"", "is empty"), (b"\x80\x04\x95garbage", "cnn.pt"),
                                             (b"plain text", "not a PyTorch model")])
def test_broken_model_files(capsys, tmp_path, digits_npz, content, needle):
    (tmp_path / "cnn.pt").write_bytes(content)
    code, err = run(capsys, "compress", tmp_path / "cnn.pt", "--data", digits_npz, "--out", tmp_path / "o")
    assert code == 2
    assert_one_line(err, needle)


def test_truncated_model(capsys, tmp_path, digits_npz, cnn_file):
    cnn_file.write_bytes(cnn_file.read_bytes()[:3000])
    code, err = run(capsys, "compress", cnn_file, "--data", digits_npz, "--out", tmp_path / "o")
    assert code == 2
    assert_one_line(err, "corrupt or truncated")


def test_malicious_pickle_runs_nothing_in_a_real_process(tmp_path, digits_npz):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    subprocess.run([sys.executable, "-c",
                    "import os, torch\n"
                    "class P:\n"
                    f"    def __reduce__(self): return (os.system, ('touch {marker}',))\n"
                    f"torch.save({{'model': P()}}, '{evil}')"], check=True)
    proc = subprocess.run([sys.executable, "-m", "tinyprune", "compress", str(evil), "--data", str(digits_npz),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert_one_line(proc.stderr, "refusing to unpickle", "--trust-code")
    assert not marker.exists()
    assert not (tmp_path / "o").exists()


def test_data_that_does_not_fit(capsys, tmp_path, cnn_file):
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 3, 32, 32), np.float32), y=np.zeros(10, np.int64))
    code, err = run(capsys, "compress", cnn_file, "--data", tmp_path / "d.npz", "--out", tmp_path / "o")
    assert code == 2
    assert_one_line(err, "does not fit the model")


def test_labels_out_of_range(capsys, tmp_path, cnn_file, digits):
    y = digits.y_train.copy()
    y[0] = 12
    np.savez(tmp_path / "d.npz", x=digits.x_train, y=y)
    code, err = run(capsys, "compress", cnn_file, "--data", tmp_path / "d.npz", "--out", tmp_path / "o")
    assert code == 2
    assert_one_line(err, "labels", "10 outputs")


def test_unknown_target(capsys, tmp_path, cnn_file, digits_npz):
    code, err = run(capsys, "compress", cnn_file, "--data", digits_npz, "--target", "pdp-11", "--out", tmp_path / "o")
    assert code == 2
    assert_one_line(err, "unknown target 'pdp-11'", "cortex-m4")


def test_missing_data_for_a_user_model(capsys, tmp_path, cnn_file):
    code, err = run(capsys, "compress", cnn_file, "--out", tmp_path / "o")
    assert code == 2
    assert_one_line(err, "--data")


def test_out_dir_with_foreign_files_is_not_touched(capsys, tmp_path, cnn_file, digits_npz):
    out = tmp_path / "o"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code, err = run(capsys, "compress", cnn_file, "--data", digits_npz, "--out", out)
    assert code == 2
    assert_one_line(err, "holds files tinyprune did not write (precious.txt)")
    assert (out / "precious.txt").read_text() == "keep me"


def test_out_dir_with_a_report_json_of_its_own_is_not_replaced(capsys, tmp_path, cnn_file, digits_npz):
    """A report.json proves nothing: only tinyprune's manifest marks a folder as its own."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "report.json").write_text("{}")
    (out / "thesis.tex").write_text("chapter 1")
    code, err = run(capsys, "compress", cnn_file, "--data", digits_npz, "--out", out)
    assert code == 2
    assert_one_line(err, "holds files tinyprune did not write (report.json, thesis.tex)")
    assert (out / "thesis.tex").read_text() == "chapter 1"


def test_unpack_does_not_overwrite_a_users_folder(capsys, tmp_path):
    from tinyprune.deepcompress.archive import pack
    from tinyprune.deepcompress.weight_sharing import cluster_model

    (tmp_path / "m.tpz").write_bytes(pack(cluster_model(MODELS["mlp"]().eval(), bits="4"), {}))
    out = tmp_path / "u"
    out.mkdir()
    (out / "weights.npz").write_bytes(b"the user's own")
    code, err = run(capsys, "unpack", tmp_path / "m.tpz", "--out", out)
    assert code == 2
    assert_one_line(err, "holds files tinyprune did not write (weights.npz)")
    assert (out / "weights.npz").read_bytes() == b"the user's own"
    # into a fresh folder it works, and again into its own result
    assert run(capsys, "unpack", tmp_path / "m.tpz", "--out", tmp_path / "v")[0] == 0
    assert run(capsys, "unpack", tmp_path / "m.tpz", "--out", tmp_path / "v")[0] == 0
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == [".tinyprune-manifest.json", "weights.npz"]


@pytest.mark.slow
def test_export_failure_names_the_op_and_leaves_nothing(capsys, tmp_path, cnn_file, digits_npz, monkeypatch):
    import onnx2tf

    def failing_convert(**kwargs):  # how onnx2tf reports a conversion error: a log line, then exit(1)
        print("ERROR: The trace log is below.\nERROR: onnx_op_name: /features/Conv_2\nERROR: onnx_op_type: Conv")
        raise SystemExit(1)

    monkeypatch.setattr(onnx2tf, "convert", failing_convert)
    out = tmp_path / "o"
    code, err = run(capsys, "compress", cnn_file, "--data", digits_npz, "--out", out, "--finetune-epochs", "0",
                    "--no-deepcompress")
    assert code == 3
    assert_one_line(err, "onnx2tf int8 conversion failed at ONNX op /features/Conv_2 (Conv)")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".o.")] == []


@pytest.mark.parametrize("argv, needle", [
    (["compress", "m.pt", "--sparsity", "1.5"], "must be in [0, 1)"),
    (["compress", "m.pt", "--sparsity", "-0.1"], "must be in [0, 1)"),
    (["compress", "m.pt", "--sparsity", "nan"], "--sparsity"),
    (["compress", "m.pt", "--archive", "--weight-sparsity", "2"], "must be in [0, 1)"),
    (["measure", "m.tflite", "--input-shape", "0,8,8"], "--input-shape"),
    (["measure", "m.tflite", "--repeats", "0"], "--repeats"),
    (["compress", "m.pt", "--archive", "--prune-rounds", "0"], "argument --prune-rounds: must be >= 1"),
    (["compress", "m.pt", "--archive", "--layer-sparsity", "0=1.5"], "argument --layer-sparsity: must be in [0, 1)"),
    (["unpack", "m.tpz"], "--out"),
    (["compress"], "model"),
])
def test_bad_option_values_are_one_line(capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert_one_line(capsys.readouterr().err, needle)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_unpack_rejects_damaged_archives(capsys, tmp_path, damage):
    from tinyprune.deepcompress.archive import pack
    from tinyprune.deepcompress.weight_sharing import cluster_model

    model = MODELS["mlp"]().eval()
    data = bytearray(pack(cluster_model(model, bits="4"), {}))
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 2] ^= 0x10
    else:
        data = bytearray(b"TPZ1" + bytes(range(256)) * 4)
    (tmp_path / "m.tpz").write_bytes(bytes(data))
    code, err = run(capsys, "unpack", tmp_path / "m.tpz", "--out", tmp_path / "u")
    assert code == 2
    assert_one_line(err)
    assert not (tmp_path / "u" / "weights.npz").exists()


@pytest.mark.slow
def test_int8_conversion_that_collapses_names_the_layer_and_publishes_nothing(capsys, tmp_path, digits_npz):
    """One huge constant unit sets the int8 scale of a layer's output; every informative unit
    then rounds to zero and the int8 model answers the same for every input."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    with torch.no_grad():
        model[1].weight[0] = 0
        model[1].bias[0] = 1e5
        model[3].weight[:, 0] = 0  # the float model ignores the constant unit and still varies
    torch.save(model.eval(), tmp_path / "m.pt")
    out = tmp_path / "o"
    code, err = run(capsys, "compress", tmp_path / "m.pt", "--data", digits_npz, "--out", out, "--sparsity", "0",
                    "--finetune-epochs", "0", "--no-deepcompress")
    assert code == 3
    assert_one_line(err, "the int8 model gives the same output for every input", "at 1 (linear) (FULLY_CONNECTED)")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".o.")] == []


@pytest.mark.parametrize("args, needle", [
    (["--max-accuracy-drop", "-1"], "--max-accuracy-drop is in accuracy points, 0..100"),
    (["--max-accuracy-drop", "nan"], "--max-accuracy-drop is in accuracy points, 0..100"),
    (["--max-accuracy-drop", "101"], "--max-accuracy-drop is in accuracy points, 0..100"),
    (["--lut-bits", "8"], "--lut-bits must be in 1..7"),
    (["--bits", "4"], "add --archive"),
    (["--weight-sparsity", "0.3"], "add --archive"),
    (["--prune-rounds", "3", "--layer-sparsity", "0=0.9"], "--layer-sparsity, --prune-rounds shape the .tpz archive"),
    (["--no-deepcompress", "--archive"], "--no-deepcompress turns weight sharing and the archive off"),
])
def test_bad_budget_and_sharing_options_exit_2_before_loading(capsys, tmp_path, digits_npz, args, needle):
    # the model file does not exist: the options must be refused before it is looked at
    code, err = run(capsys, "compress", tmp_path / "missing.pt", "--data", digits_npz, "--out", tmp_path / "o", *args)
    assert code == 2
    assert_one_line(err, needle)
    assert not (tmp_path / "o").exists()


def test_unwritable_outputs_are_refused_before_the_work(capsys, tmp_path):
    (tmp_path / "m.tflite").write_bytes(b"not used: the output is checked first")
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    code, err = run(capsys, "measure", tmp_path / "m.tflite", "--html", tmp_path / "adir")
    assert code == 2
    assert_one_line(err, "--html", "is a directory")
    code, err = run(capsys, "check", "--junit", tmp_path / "afile" / "j.xml", "--budget", tmp_path / "none.toml")
    assert code == 2
    assert_one_line(err, "--junit", "cannot write there")
    code, err = run(capsys, "unpack", tmp_path / "none.tpz", "--out", tmp_path / "afile")
    assert code == 2
    assert_one_line(err)


def test_arch_factory_with_required_arguments_is_bad_input(capsys, tmp_path, digits_npz):
    torch.save(MODELS["mlp"]().state_dict(), tmp_path / "sd.pt")
    code, err = run(capsys, "compress", tmp_path / "sd.pt", "--data", digits_npz, "--out", tmp_path / "o",
                    "--arch", "torch.nn:Linear")
    assert code == 2
    assert_one_line(err, "--arch torch.nn:Linear: the factory must build the model with no arguments")


@pytest.mark.parametrize("make, needle", [
    (lambda x, y: (x, np.zeros_like(y)), "one class only"),
    (lambda x, y: (x[:3], y[:3]), "too few"),
])
def test_data_that_cannot_train_anything_is_refused(capsys, tmp_path, cnn_file, digits, make, needle):
    x, y = make(digits.x_train.transpose(0, 2, 3, 1), digits.y_train)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    code, err = run(capsys, "compress", cnn_file, "--data", tmp_path / "d.npz", "--out", tmp_path / "o")
    assert code == 2
    assert_one_line(err, needle)


def test_unpack_keeps_tensor_names_that_clash_with_numpy_keywords(capsys, tmp_path):
    import torch as _torch

    from tinyprune.deepcompress.archive import pack

    names = {"file": np.arange(3, dtype=np.float32), "allow_pickle": np.ones(2, np.float32)}
    (tmp_path / "m.tpz").write_bytes(pack([], {k: _torch.from_numpy(v) for k, v in names.items()}))
    code, _ = run(capsys, "unpack", tmp_path / "m.tpz", "--out", tmp_path / "u")
    assert code == 0
    with np.load(tmp_path / "u" / "weights.npz") as w:
        assert sorted(w.files) == ["allow_pickle", "file"]
        assert np.array_equal(w["file"], names["file"]) and np.array_equal(w["allow_pickle"], names["allow_pickle"])


def test_out_on_a_mount_point_is_refused_before_any_work(tmp_path, capsys):
    from tinyprune.cli import main

    # "/" is a mount point on every machine; nothing is loaded, trained or written
    code = main(["compress", str(tmp_path / "missing.pt"), "--data", str(tmp_path / "x.npz"), "--out", "/"])
    err = capsys.readouterr().err
    assert code == 2 and "--out / is a mount point; give a folder inside it" in err, err


def test_compress_needs_no_network(tmp_path, trained, digits_npz):
    """The whole pipeline inside a network namespace with no interface up (where the machine
    allows one): nothing may need the network (onnxruntime telemetry is off, onnx2tf is offline)."""
    import shutil
    import subprocess
    import sys

    import torch

    if shutil.which("unshare") is None or subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode:
        pytest.skip("this machine does not allow a network namespace (unshare -n)")
    torch.save(trained("mlp").eval(), tmp_path / "m.pt")
    result = subprocess.run(["unshare", "-n", sys.executable, "-m", "tinyprune", "compress", str(tmp_path / "m.pt"),
                             "--data", str(digits_npz), "--out", str(tmp_path / "out"), "--finetune-epochs", "1",
                             "--no-deepcompress", "--quiet", "--no-cache"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "model_int8.tflite").exists()
