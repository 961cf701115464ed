"""The light install (no `compress` extra): check and measure of a .tflite without torch or TensorFlow."""

import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np

from tinyprune.cli import FULL_INSTALL

REPO = Path(__file__).resolve().parents[2]

# Runs the CLI in a fresh interpreter where every module of the full install is missing, as on
# a machine where only `pip install tinyprune` ran.
LIGHT = textwrap.dedent("""
    import sys
    BLOCKED = set(sys.argv[1].split(","))

    class Missing:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, Missing())
    from tinyprune.cli import main
    code = main(sys.argv[2:])
    loaded = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
    print("LOADED", ",".join(loaded))
    sys.exit(code)
""")


def light(*argv, cwd):
    return subprocess.run([sys.executable, "-c", LIGHT, ",".join(sorted(FULL_INSTALL)), *map(str, argv)],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def test_base_dependencies_leave_the_pipeline_to_the_compress_extra():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = {d.split("=")[0].split(">")[0].split("~")[0].split("[")[0].strip().lower() for d in project["dependencies"]}
    assert not base & {"torch", "tensorflow-cpu", "onnx", "onnx2tf", "tf-keras", "torch-pruning", "scikit-learn"}
    assert "torch==2.13.0" in project["optional-dependencies"]["compress"]


def test_check_and_measure_run_without_the_full_install(tmp_path):
    sys.path.insert(0, str(REPO / "tests" / "unit"))
    from test_measure_keras import build_keras_models

    models = build_keras_models(tmp_path / "keras")
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "m.tflite").write_bytes((models / "cnn_int8.tflite").read_bytes())
    (tmp_path / "tinyprune.toml").write_text('[[model]]\npath = "build/m.tflite"\ntarget = "cortex-m4"\n'
                                             'max_flash = "256KiB"\nmax_ram = "64KiB"\nmax_latency_ms = 100\n')
    ok = light("check", "--junit", "junit.xml", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "all budgets hold" in ok.stdout and ok.stdout.strip().endswith("LOADED")  # nothing of the full install
    measured = light("measure", "build/m.tflite", "--json", "--repeats", "2", cwd=tmp_path)
    assert measured.returncode == 0, measured.stderr
    report = json.loads(measured.stdout[:measured.stdout.rindex("LOADED")])
    assert report["totals"]["arena_bytes"] > 0 and report["totals"]["macs"] > 0


def test_check_runs_an_accuracy_budget_in_tflm_without_the_full_install(tmp_path):
    """min_accuracy + data, as in the README: TFLM on the .tflite, no torch or TensorFlow import."""
    sys.path.insert(0, str(REPO / "tests" / "unit"))
    from test_measure_keras import build_keras_models

    from tinyprune.export.tflite import device_input, litert_outputs

    models = build_keras_models(tmp_path / "keras")
    model = (models / "cnn_int8.tflite").read_bytes()
    x = np.load(models / "x_nhwc.npy")
    # labels the model gets right on every other sample: 50 % in any runtime computing the graph
    # (LiteRT's reference kernels are TFLM's)
    pred = litert_outputs(model, device_input(model, x.transpose(0, 3, 1, 2)), reference=True)
    y = pred.reshape(len(x), -1).argmax(1)
    y[1::2] = (y[1::2] + 1) % 5
    (tmp_path / "m.tflite").write_bytes(model)
    np.savez(tmp_path / "test.npz", x=x, y=y)
    budget = '[[model]]\npath = "m.tflite"\ndata = "test.npz"\nmin_accuracy = {}\n'
    (tmp_path / "tinyprune.toml").write_text(budget.format(0.45))
    ok = light("check", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "50.00% vs >= 45.00%" in ok.stdout and "all budgets hold" in ok.stdout, ok.stdout
    assert ok.stdout.strip().endswith("LOADED"), ok.stdout  # nothing of the full install
    (tmp_path / "tinyprune.toml").write_text(budget.format(0.55))
    over = light("check", cwd=tmp_path)
    assert over.returncode == 1 and "50.00% vs >= 55.00%" in over.stdout, over.stdout + over.stderr
    assert over.stdout.strip().endswith("LOADED"), over.stdout


def test_pipeline_commands_name_the_extra_in_one_line(tmp_path):
    out = light("demo", "--out", tmp_path / "o", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "part of the full install: pip install 'tinyprune[compress]'" in err[0], out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "o").exists()


def test_example_workflow_installs_light_from_the_repository_and_publishes_junit():
    import yaml

    flow = yaml.safe_load((REPO / "examples" / "github-workflow" / "tinyprune-budget.yml").read_text())
    steps = flow["jobs"]["budget"]["steps"]
    assert flow["permissions"]["checks"] == "write"
    install = next(s["run"] for s in steps if s.get("name", "").startswith("Install tinyprune"))
    assert "constraints.txt" in install and "-c " in install and "git+$TINYPRUNE_REPO@$TINYPRUNE_REF" in install
    assert "torch" not in install and "[compress]" not in install  # check needs the light install only
    assert any(s.get("uses", "").startswith("actions/cache@") and "pip" in s["with"]["path"] for s in steps)
    check = next(s for s in steps if s.get("name") == "Check budgets")
    junit = check["run"].split("--junit")[1].split()[0]
    publish = next(s for s in steps if "junit-report" in s.get("uses", ""))
    assert publish["if"] == "always()" and publish["with"]["report_paths"] == junit
