"""report.md and report.html tell the same story: every heading, sentence, table row, list item and
image of the markdown is in the HTML, and host timings stay out of the target's numbers.

The report rendered is a real one (tests/data/demo_report.json: `tinyprune demo --finetune-epochs 1 --sparsity 0 --prefer flash
--archive --plane`, so it has the LUT model, the archive and the information plane), plus variants
for what that run does not produce (a regression task's error metrics, a --fit search).
"""

from __future__ import annotations

import copy
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tinyprune.report import Report
from tinyprune.report.html import render_html
from tinyprune.report.render import HOST_TITLE, headline, to_markdown

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "demo_report.json"


def _norm(text: str) -> str:
    return " ".join(text.split())


def _unmark(text: str) -> str:
    """Markdown text as the HTML shows it: `code` and **bold** become tags, whose text is the same."""
    return _norm(text.replace("**", "").replace("`", "").replace("\\|", "|"))


class _Page(HTMLParser):
    """Headings, table rows, list items, image alts and the running text of a page."""

    _BREAKS = {"p", "br", "tr", "td", "th", "li", "h1", "h2", "div", "table", "ul", "img"}

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.h1: list[str] = []
        self.h2: list[str] = []
        self.rows: list[tuple[str, ...]] = []
        self.items: list[str] = []
        self.alts: list[str] = []
        self._open: dict[str, list[str]] = {}
        self._row: list[str] | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag in self._BREAKS:
            self.text.append("\n")
        if tag in ("h1", "h2", "td", "th", "li"):
            self._open[tag] = []
        elif tag == "tr":
            self._row = []
        elif tag == "img":
            self.alts.append(dict(attrs).get("alt") or "")

    def handle_endtag(self, tag):
        if tag in self._BREAKS:
            self.text.append("\n")
        text = _norm("".join(self._open.pop(tag, [])))
        if tag in ("h1", "h2"):
            getattr(self, tag).append(text)
        elif tag in ("td", "th") and self._row is not None:
            self._row.append(text)
        elif tag == "li":
            self.items.append(text)
        elif tag == "tr" and self._row is not None:
            self.rows.append(tuple(self._row))
            self._row = None

    def handle_data(self, data):
        self.text.append(data)
        for parts in self._open.values():
            parts.append(data)


def _cells(line: str) -> tuple[str, ...]:
    return tuple(_unmark(c) for c in re.split(r"(?<!\\)\|", line.strip())[1:-1])


def missing_from_html(md: str, page: str) -> list[str]:
    """The lines of ``md`` whose content ``page`` lacks (empty when the HTML shows all of it)."""
    html = _Page(page)
    text, rows, missing, headings = _norm("".join(html.text)), set(html.rows), [], []
    for line in md.splitlines():
        if not line.strip() or re.fullmatch(r"\|(---\|)+", line):
            continue
        image = re.fullmatch(r"!\[(.*)\]\((.*)\)", line)
        if line.startswith("## "):
            headings.append(_unmark(line[3:]))
            found = headings[-1] in html.h2
        elif line.startswith("# "):
            found = _unmark(line[2:]) in html.h1
        elif line.startswith("|"):
            found = _cells(line) in rows
        elif line.startswith("- "):
            found = _unmark(line[2:]) in html.items
        elif image:
            found = image.group(1) in html.alts or image.group(1) in text
        else:
            found = _unmark(line) in text
        if not found:
            missing.append(line)
    # the sections come in the same order
    order = [h for h in html.h2 if h in headings]
    if order != headings and not missing:
        missing.append(f"headings out of order: {headings} vs {order}")
    return missing


@pytest.fixture(scope="module")
def demo() -> dict:
    return json.loads(FIXTURE.read_text())


def _regression(report: dict) -> dict:
    """The same report as a regression run: the headline adds the task's error metrics."""
    r = copy.deepcopy(report)
    r["data"]["task"] = {"kind": "regress", "metric": "r2"}
    for s, (mse, mae) in zip(r["stages"], [(0.012, 0.08), (0.05, 0.17), (0.014, 0.09), (0.015, 0.09), (0.016, 0.1)]):
        s["quality"] = {"r2": s["accuracy"], "mse": mse, "mae": mae}
    return r


def _fit(report: dict) -> dict:
    """The same report as the outcome of a --fit search (the trials are shaped as tinyprune.fit writes them)."""
    r = copy.deepcopy(report)
    dep = r["deployed"]
    r["fit"] = {"limits": {"flash_bytes": 128 * 1024, "latency_ms": 90.0},
                "search": "bisection on the MAC reduction (0, then 90%, then 3 halvings)", "chosen": 1, "trials": [
                    {"sparsity": 0.0, "artifact": "model_int8_lut.tflite", "accuracy": 0.99, "flash_bytes": 148000,
                     "ram_bytes": 30000, "latency_ms": 91.0, "energy_uj": 1400.0, "fits": False,
                     "misses": {"flash_bytes": {"value": 148000, "limit": 131072, "over": 16928}}},
                    {"sparsity": 0.5, "artifact": dep["artifact"], "accuracy": dep["accuracy"],
                     "flash_bytes": 125000, "ram_bytes": 60000, "latency_ms": 83.0,
                     "energy_uj": 2098.0, "fits": True, "misses": {}}]}
    return r


def test_the_recorded_report_matches_the_current_schema(demo):
    from tinyprune.report.schema import validate

    validate(demo)  # regenerate tests/data/demo_report.json (see the module doc) when the schema moves on
    assert all(row.get("module") for row in demo["stages"][3]["details"]["measure"]["layers"])


@pytest.mark.parametrize("variant", [lambda r: r, _regression, _fit], ids=["demo", "regression", "fit"])
def test_everything_in_report_md_is_in_report_html(demo, variant):
    report = variant(demo)
    md = to_markdown(Report.from_dict(report))
    page = render_html(report)
    assert missing_from_html(md, page) == []
    # the headline sentences, word for word
    text = _norm("".join(_Page(page).text))
    for line in headline(Report.from_dict(report)):
        assert _unmark(line) in text
    if variant is _regression:
        assert "Task regress: mse 0.012 -> 0.016, mae 0.08 -> 0.1 (original float -> device)." in md
    if variant is _fit:
        assert "## --fit: accuracy vs deployed flash" in md


def test_the_check_fails_when_the_markdown_says_more(demo):
    """The comparison above can fail: a section, a sentence or a table row only in report.md is named."""
    md = to_markdown(Report.from_dict(demo))
    page = render_html(demo)
    extra = md + "\n## Only here\n\nA sentence only here.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    assert missing_from_html(extra, page) == ["## Only here", "A sentence only here.", "| a | b |", "| 1 | 2 |"]
    changed = md.replace("Verdict: fits", "Verdict: barely fits")
    assert [line for line in missing_from_html(changed, page)] == [
        line for line in changed.splitlines() if "barely" in line]


def _sections(md: str) -> dict[str, str]:
    return dict(re.findall(r"^## (.*?)\n(.*?)(?=^## |\Z)", md, re.S | re.M))


def test_host_timings_have_their_own_section_and_the_target_tables_do_not_mix_them_in(demo):
    md = to_markdown(Report.from_dict(demo))
    sections = _sections(md)
    host = sections.pop(HOST_TITLE)
    medians = []
    for stage in demo["stages"]:
        for runtime, t in ((stage["details"].get("measure") or {}).get("latency", {}).get("measured") or {}).items():
            if "median_ms" in t:
                assert f"| {stage['name']} | {runtime} | {t['median_ms']:.3f} |" in host
                medians.append(f"{t['median_ms']:.3f}")
    assert medians
    for title, body in sections.items():  # every other table holds numbers for the target
        for line in (line for line in body.splitlines() if line.startswith("|")):
            assert "host" not in line.lower() and "measured" not in line.lower(), (title, line)
            assert not set(_cells(line)) & set(medians), (title, line)
    page_sections = dict(re.findall(r"<h2>(.*?)</h2>(.*?)(?=<h2>|</body>)", render_html(demo), re.S))
    assert "<td>tflm</td>" in page_sections.pop(HOST_TITLE)
    for title, body in page_sections.items():  # nor do the other tables and plots of the page
        for part in re.findall(r"<table>.*?</table>|<img alt='[^']*'", body, re.S):
            assert "host" not in part.lower() and "measured" not in part.lower(), title


def test_per_layer_tables_name_the_pytorch_module_beside_the_tflite_op_and_tensor(demo):
    md = to_markdown(Report.from_dict(demo))
    sections = _sections(md)
    stage = next(s for s in reversed(demo["stages"]) if s["details"].get("measure"))  # the deployed model
    layers = sections[f"Layers of the {stage['name']} stage"]
    assert "| # | PyTorch module | TFLite op | tensor | output |" in layers
    rows = {l["index"]: l for l in stage["details"]["measure"]["layers"]}
    fidelity = {e["tensor"]: e["layer"] for e in demo["stages"][3]["details"]["fidelity"]["layers"]}
    for line in layers.splitlines():
        cells = _cells(line) if line.startswith("| ") and not line.startswith("| #") else None
        if cells:
            row = rows[int(cells[0])]
            assert cells[1:4] == (row["module"] or "n/a", row["op"], row["name"])
            if row["op"] == "TFLM_DECODE":  # a DECODE op restores the weight of the op that follows it here
                assert row["module"] == rows[row["index"] + 1]["module"] is not None
            elif row["name"] in fidelity:
                assert row["module"] == fidelity[row["name"]]
    assert "| PyTorch layer | int8 op | tensor |" in sections["int8 fidelity (per layer, dequantized int8 vs float)"]
    lut = next(t for t in sections if t.startswith("Deployable weight-shared model"))
    assert "| PyTorch module | tensor | ops |" in sections[lut]


def test_firmware_io_is_the_deployed_models_own_quantization(demo):
    """The LUT model is exported anew: its output scale differs from the plain int8 model's, and the
    Firmware I/O section must give the deployed one's (what model_lut_data.h declares)."""
    md = to_markdown(Report.from_dict(demo))
    line = md.split("## Firmware I/O (`model_int8_lut.tflite`)", 1)[1].strip().splitlines()[0]
    lut_io = next(s for s in demo["stages"] if s["name"] == "int8_lut")["details"]["measure"]["io"]["outputs"][0]
    plain_io = next(s for s in demo["stages"] if s["name"] == "int8")["details"]["io"]["output"]
    assert lut_io["scale"] != plain_io["scale"]
    assert f"scale {lut_io['scale']:.6g}, zero point {lut_io['zero_point']}." in line
    assert f"scale {plain_io['scale']:.6g}" not in line
