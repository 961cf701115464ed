"""The measure/check commands as a user runs them, with the real converters (slow)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from tinyprune.testing import MODELS

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def cli(*args, env=None, cwd=None):
    """`tinyprune measure|check ...` in a fresh process (python -m tinyprune.cli_measure until wired into cli.py)."""
    full_env = {k: v for k, v in os.environ.items() if k != "GITHUB_ACTIONS"}  # as set by the test only
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "tinyprune.cli_measure", *map(str, args)], capture_output=True,
                          text=True, env=full_env, cwd=cwd or REPO, timeout=900)


def test_measure_pytorch_as_int8_through_the_real_export(tmp_path):
    """PyTorch .pt2 -> ONNX -> onnx2tf int8 -> measured in TFLM; MACs equal FlopCounterMode's on the torch model."""
    from torch.utils.flop_counter import FlopCounterMode

    from tinyprune.report.schema import errors, report_schema

    model = MODELS["dw_residual"]().eval()  # depthwise conv + residual add, saved as a torch.export program
    path = tmp_path / "dw.pt2"
    torch.export.save(torch.export.export(model, (torch.rand(1, 1, 8, 8),)), str(path))
    html = tmp_path / "m.html"
    proc = cli("measure", path, "--input-shape", "1,8,8", "--int8", "--json", "--html", html, "--repeats", "10")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(1, 1, 8, 8))
    assert 2 * r["totals"]["macs"] == counter.get_total_flops()
    assert r["format"] == "tflite" and r["precision"] == "int8" and r["converted"]["from"] == "onnx"
    assert r["totals"]["arena_bytes"] > 0 and r["totals"]["flash_bytes"] == r["converted"]["tflite_bytes"]
    assert {"litert", "tflm", "onnxruntime"} <= set(r["latency"]["measured"])
    assert all("median_ms" in v for v in r["latency"]["measured"].values())
    assert errors(r, report_schema()["$defs"]["measurement"], report_schema()) == []
    assert html.stat().st_size > 10_000


def _keras_models(tmp_root: Path) -> Path:
    spec = importlib.util.spec_from_file_location("keras_builder", REPO / "tests" / "unit" / "test_measure_keras.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_keras_models(tmp_root)


def test_check_passes_fails_and_annotates(tmp_path, request):
    cache = getattr(request.config, "cache", None)  # absent with -p no:cacheprovider
    models = _keras_models(Path(cache.mkdir("tinyprune-keras-tflite")) if cache else tmp_path / "keras")
    project = tmp_path / "proj"
    (project / "build").mkdir(parents=True)
    shutil.copy(models / "cnn_int8.tflite", project / "build" / "model_int8.tflite")
    budget = project / "tinyprune.toml"
    budget.write_text('[[model]]\npath = "build/model_int8.tflite"\ntarget = "cortex-m4"\nmax_flash = "256KiB"\n'
                      'max_ram = "64KiB"\nmax_macs = 5_000_000\nmax_latency_ms = 100\n')
    ok = cli("check", "--junit", "junit.xml", cwd=project)
    assert ok.returncode == 0, ok.stderr
    assert "all budgets hold" in ok.stdout and "::error" not in ok.stdout
    assert ET.parse(project / "junit.xml").getroot().get("failures") == "0"

    budget.write_text(budget.read_text().replace('max_ram = "64KiB"', 'max_ram = "1KiB"'))
    bad = cli("check", "--junit", "junit.xml", env={"GITHUB_ACTIONS": "true"}, cwd=project)
    assert bad.returncode == 1
    assert bad.stderr.strip().count("\n") == 0 and "max_ram" in bad.stderr and "Traceback" not in bad.stderr
    assert "::error file=tinyprune.toml,line=5,title=tinyprune budget max_ram::" in bad.stdout  # the max_ram line
    root = ET.parse(project / "junit.xml").getroot()
    assert float(root.find("testsuite/testcase").get("time")) > 0  # the real measurement, charged to the first budget
    failure = root.find("testsuite/testcase[@name='max_ram']/failure")
    assert root.get("failures") == "1" and failure is not None and failure.get("type") == "BudgetExceeded"


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _probe(page: str, probe: Path) -> tuple[list[int], list[int]]:
    """(natural width of every image, px each table or one of its cells ends past the body's text
    column) of ``page`` in headless Chromium at 1,280 px: a copy that writes them into the DOM,
    read back with --dump-dom. Cells are measured too: a table box can stop at the column while
    its cells run past it."""
    probe.write_text(page.replace("</body>", "<script>window.addEventListener('load',()=>{const b=document.body;"
                                  "b.setAttribute('data-images',[...document.images].map(i=>i.naturalWidth).join(','));"
                                  "const right=b.getBoundingClientRect().right-parseFloat(getComputedStyle(b).paddingRight);"
                                  "b.setAttribute('data-tables',[...document.querySelectorAll('table')].map(t=>Math.ceil(Math.max("
                                  "...[t,...t.querySelectorAll('th,td')].map(c=>c.getBoundingClientRect().right))-right))"
                                  ".join(','));});</script></body>"))
    dom = subprocess.run([_chromium(), *CHROMIUM_FLAGS, "--window-size=1280,2400", "--virtual-time-budget=5000",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    read = [[int(w) for w in dom.stdout.split(f'data-{name}="')[1].split('"')[0].split(",") if w]
            for name in ("images", "tables")]
    return read[0], read[1]


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9", "--hide-scrollbars"]


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium on this machine (see tinyprune/report/html.py)")
def test_report_html_renders_offline_in_chromium(tmp_path):
    """Headless Chromium, network off: every embedded plot decodes, the page is not blank, and no
    table is wider than the page, a long LiteRT error in the host timings included (issue 30)."""
    sys.path.insert(0, str(REPO / "tests" / "unit"))
    from test_measure_report import LITERT_ERROR, demo_like_report

    from tinyprune import targets
    from tinyprune.measure.core import measure_torch
    from tinyprune.report.html import write_html

    m = measure_torch(MODELS["cnn_bn"]().eval(), torch.rand(1, 1, 8, 8), targets.load("cortex-m4"), repeats=5)
    m["latency"]["measured"]["litert"] = {"error": LITERT_ERROR}
    page = write_html(demo_like_report((m, m)), tmp_path / "report.html").read_text()
    assert LITERT_ERROR.split(":")[0] in page
    widths, past = _probe(page, tmp_path / "probe.html")
    assert len(widths) == 3 and min(widths) > 300
    assert len(past) >= 4 and max(past) <= 0, past  # px each table ends past the text column's right edge
    # the demo's own page (the recorded report of `tinyprune demo`, tests/unit/test_report_parity.py)
    demo = json.loads((REPO / "tests" / "data" / "demo_report.json").read_text())
    widths, past = _probe(write_html(demo, tmp_path / "demo.html").read_text(), tmp_path / "demo_probe.html")
    assert widths and min(widths) > 300 and len(past) >= 4 and max(past) <= 0, past
    shot = tmp_path / "shot.png"
    subprocess.run([_chromium(), *CHROMIUM_FLAGS, "--window-size=1200,2400", f"--screenshot={shot}", (tmp_path / "report.html").as_uri()],
                   capture_output=True, timeout=120)
    from PIL import Image

    img = Image.open(shot).convert("L")
    dark = sum(1 for v in img.getdata() if v < 128)
    assert dark > 0.01 * img.width * img.height  # text and plots drawn, not a blank page
