"""`import tinyprune` and `tinyprune --help` stay lean: no TensorFlow, no torch."""

import subprocess
import sys

CHECK = "import sys; {body}; heavy = [m for m in ('tensorflow', 'torch', 'onnx2tf') if m in sys.modules]; print(heavy)"


def _heavy(body: str) -> str:
    proc = subprocess.run([sys.executable, "-c", CHECK.format(body=body)], capture_output=True, text=True, check=True)
    return proc.stdout.strip().splitlines()[-1]  # help text may come first


def test_import_is_lean():
    assert _heavy("import tinyprune, tinyprune.cli, tinyprune.errors, tinyprune.targets") == "[]"


def test_help_is_lean():
    body = ("from tinyprune.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    assert _heavy(f"exec({body!r})") == "[]"


def test_help_runs_and_documents_exit_codes():
    proc = subprocess.run([sys.executable, "-m", "tinyprune", "compress", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "--trust-code" in proc.stdout and "exit codes" in proc.stdout
