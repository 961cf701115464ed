"""report.json schema and the self-contained report.html."""

from __future__ import annotations

import base64
import copy
import re

import jsonschema
import pytest
import torch

from tinyprune import targets
from tinyprune.measure.core import measure_tflite, measure_torch
from tinyprune.report import Report, StageRecord
from tinyprune.report.html import write_html
from tinyprune.report.schema import errors, report_schema
from tinyprune.testing import MODELS


@pytest.fixture(scope="module")
def measurements():
    from test_measure_macs import tflite_model  # the graph built in code there

    t = targets.load("cortex-m4")
    x = torch.rand(1, 1, 8, 8)
    float_m = measure_torch(MODELS["cnn_bn"]().eval(), x, t, repeats=5)
    int8_m = measure_tflite(tflite_model(), t, find_arena=False, timing=False)
    return float_m, int8_m


def demo_like_report(measurements=None) -> dict:
    """A report shaped exactly as tinyprune.api._run builds it (demo / compress)."""
    ops = [{"op": "CONV_2D", "output_shape": [1, 8, 8, 22], "macs": 12672},
           {"op": "FULLY_CONNECTED", "output_shape": [1, 10], "macs": 1800}]
    stages = [
        StageRecord("original", 58634, 1790464, 0.99, 0.2, details={"format": "pickled-module"}),
        StageRecord("pruned", 29479, 876312, 0.74, 6.3, details={"criterion": "l1", "steps": 12, "macs_removed": 0.51}),
        StageRecord("finetuned", 29479, 876312, 0.997, 62.0, details={"epochs": 8}),
        StageRecord("int8", 29255, 876312, 0.997, 37.4, flash_bytes=36600, arena_bytes=7648, details={
            "onnx_max_abs_diff": 1.4e-06,
            "io": {"input": {"shape": [1, 8, 8, 1], "dtype": "int8", "scale": 0.0039, "zero_point": -128},
                   "output": {"shape": [1, 10], "dtype": "int8", "scale": 0.08, "zero_point": -16}},
            "tflm": {"samples": 100, "accuracy": 0.99, "agreement_with_litert": 1.0}, "ops": ops}),
    ]
    if measurements:
        stages[0].details["measure"] = measurements[0]
        stages[2].details["measure"] = measurements[0]
        stages[3].details["measure"] = measurements[1]
    report = Report(
        tool_version="0.1.0",
        model={"path": "/tmp/digits_cnn.pt", "format": "pickled-module", "input_shape": [1, 1, 8, 8], "classes": 10},
        data={"source": "sklearn.datasets.load_digits", "layout": "nchw", "sample_shape": [1, 8, 8], "classes": 10,
              "train": 1438, "eval": 359, "calibration": 200},
        target=targets.load("cortex-m4").to_dict(),
        config={"target": "cortex-m4", "seed": 0},
        stages=stages,
        layers=[{"name": "0", "channels_before": 32, "channels_after": 22, "removed_channels": [0, 7],
                 "reason": "lowest l1 importance", "mi_kept": 5.06, "mi_removed": 1.87, "mi_per_channel": [0.1, 0.2]}],
        artifacts=["/tmp/out/model_int8.tflite"],
    )
    return report.to_dict()


def test_schema_is_a_valid_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(report_schema())


def test_schema_accepts_reports_with_and_without_measurements(measurements):
    schema = report_schema()
    assert errors(demo_like_report(), schema) == []
    assert errors(demo_like_report(measurements), schema) == []
    for m in measurements:
        assert errors(m, schema["$defs"]["measurement"], schema) == []


@pytest.mark.parametrize("breaks, where", [
    (lambda r: r.pop("stages"), "missing required key 'stages'"),
    (lambda r: r["stages"][0].update(macs=-1), "stages[0].macs: -1 < minimum 0"),
    (lambda r: r["stages"][3].update(arena_bytes="7 KiB"), "stages[3].arena_bytes: expected integer or null"),
    (lambda r: r["stages"][0].update(accuracy=1.5), "maximum 1"),
    (lambda r: r["target"].update(fpu="yes"), "target.fpu: expected boolean"),
    (lambda r: r["stages"][3]["details"]["measure"]["layers"][0].update(kind="lstm"), "is not one of"),
    (lambda r: r["stages"][3]["details"]["measure"]["latency"]["measured"].update(tflm={"median_ms": 1}), "anyOf"),
    (lambda r: r.update(schema_version=2), "expected 1"),
])
def test_schema_rejects_broken_reports(measurements, breaks, where):
    report = copy.deepcopy(demo_like_report(measurements))
    breaks(report)
    found = errors(report, report_schema())
    assert found and any(where in e for e in found), found


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)]


def test_html_is_self_contained_with_plots(measurements, tmp_path):
    from PIL import Image
    import io

    path = write_html(demo_like_report(measurements), tmp_path / "report.html")
    page = path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # written atomically, no temp file left
    images = _images(page)
    assert len(images) == 3  # stage waterfall, cost model vs measured, per-layer bars
    for png in images:
        img = Image.open(io.BytesIO(png))
        assert img.format == "PNG" and img.width > 300 and img.height > 150
        assert len(set(img.convert("L").getdata())) > 10  # something is drawn
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)  # nothing fetched from the network
    assert "<script" not in page and "<link" not in page
    for text in ("45 nm floor uJ (not the board)", "finetuned", "int8", "DEPTHWISE_CONV_2D", "<th>ms (80 %)</th>",
                 "<h2>Host timings (this machine, not the target)</h2>"):
        assert text in page
    # one latency per stage: the predicted table has a single ms column, and no second model's figure
    assert page.count("<th>ms (80 %)</th>") == 1 and "ms (optimized)" not in page and "ms (reference)" not in page
    # host timings only in their own section: the target's tables and plots hold predictions
    sections = dict(re.findall(r"<h2>(.*?)</h2>(.*?)(?=<h2>|</body>)", page, re.S))
    host = sections.pop("Host timings (this machine, not the target)")
    assert "<td>torch</td>" in host and f"{measurements[0]['latency']['measured']['torch']['median_ms']:.3f}" in host
    for body in sections.values():
        for part in re.findall(r"<table>.*?</table>|<img alt='[^']*'", body, re.S):
            assert "torch" not in part and "host" not in part.lower() and "measured" not in part.lower()


def test_html_of_a_report_without_measurements_and_of_one_measurement(measurements, tmp_path):
    page = write_html(demo_like_report(), tmp_path / "a.html").read_text()
    assert len(_images(page)) == 2  # waterfall + per-op MACs of the int8 graph; no cost section without data
    assert "Predicted on" not in page and "Host timings" not in page
    page = write_html(measurements[0], tmp_path / "b.html").read_text()
    assert len(_images(page)) == 3 and "tinyprune measurement" in page


# as LiteRT words a model it cannot prepare (issue 30: it pushed the host timings off the page)
LITERT_ERROR = ("RuntimeError: Node number 3 (CONV_2D) failed to prepare: num_scales must be 1 for per-tensor "
                "quantization, got 16 scales on the filter of the fused Conv2D and BiasAdd of layer conv2d_3 in "
                "sequential_1 as written by the converter")


def test_html_plots_are_readable_at_100_percent_and_bounded_by_their_quantity(measurements, tmp_path, monkeypatch):
    # 10 px at the size shown: no figure is wider than the text column (so none is scaled down)
    # and its smallest text is at least 10 px at the PNG's 100 dpi
    from PIL import Image
    import io
    import matplotlib.text

    import tinyprune.report.html as page_module

    smallest, accuracy_tops, original = [], [], page_module._png

    def spy(fig):
        fig.canvas.draw()
        texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]
        smallest.append(min(t.get_fontsize() for t in texts))
        accuracy_tops.extend(ax.get_ylim()[1] for ax in fig.axes if "accuracy" in ax.get_title())
        return original(fig)

    monkeypatch.setattr(page_module, "_png", spy)
    page = write_html(demo_like_report(measurements), tmp_path / "report.html").read_text()
    widths = [Image.open(io.BytesIO(png)).width for png in _images(page)]
    assert len(widths) == len(smallest) == 3
    assert max(widths) <= 1068, widths  # body max-width 1,100 px less 2 x 16 px padding
    assert min(smallest) * 100 / 72 >= 10, smallest
    assert accuracy_tops and max(accuracy_tops) <= 100  # the waterfall's accuracy axis ends at 100 %


def test_a_long_error_in_a_numeric_column_wraps(measurements, tmp_path):
    m = copy.deepcopy(measurements[0])
    m["latency"]["measured"]["litert"] = {"error": LITERT_ERROR}
    page = write_html(demo_like_report((m, measurements[1])), tmp_path / "report.html").read_text()
    cell = re.search(r"<td( class=\"n\")?>failed: RuntimeError", page)
    assert cell and cell[1] is None  # not a no-wrap numeric cell: it wraps within the page
    assert re.search(r"<td class=\"n\">[0-9.]+</td>", page)  # the ms values stay on one line
