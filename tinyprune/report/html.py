"""report.html: one self-contained page (inline CSS, plots as base64 PNG), readable offline.

``write_html(report_dict, path)`` takes the dict of ``report.json`` (``Report.to_dict()``), whose
stages may carry ``details["measure"]`` (from ``tinyprune.measure.core.measure_stage``), or a
single measurement from ``tinyprune measure`` (``measure_file``). It only reads the dict: the
report never recomputes anything. Its text is report.md's: both are written from
``tinyprune.report.render.sections`` (tests/unit/test_report_parity.py checks that nothing of the
markdown is missing here); this module adds the plots.

Rendering is checked in tests/e2e/test_measure_cli.py with headless Chromium, network off
(every embedded PNG decodes, the page is not blank, no table or cell runs past the text column);
plot sizes and fonts in tests/unit/test_measure_report.py. By hand::

    chromium --headless --no-sandbox --proxy-server=127.0.0.1:9 --window-size=1200,3000 \
        --screenshot=shot.png file:///path/to/report.html
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
import tempfile
from dataclasses import replace
from pathlib import Path

from tinyprune.report.document import Bullets, Image, Note, Section, Table
from tinyprune.report.records import Report
from tinyprune.report.render import host_section, layers_section, predicted_section, sections

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em} h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em;max-width:100%}
th,td{border:1px solid #ccc;padding:.25em .55em;overflow-wrap:anywhere}
th{background:#f2f2f2} td.n{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#444;font-size:.9em;max-width:60em} .bad{color:#b00020;font-weight:bold} .ok{color:#0a7d28}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}
.headline{background:#f5f8fc;border:1px solid #c9d6e8;padding:.4em 1em;margin:1em 0} .headline p{margin:.35em 0}
td.n{white-space:nowrap}
"""
# A numeric cell keeps its number on one line; longer text in a numeric column (a runtime's error,
# "failed: ..." with LiteRT's message) wraps like any other, or it widens the table past the page.
_NUMERIC_CELL_CHARS = 40
# The text column is about 1,068 px (body max-width 1,100 px less its padding) and plots are PNGs
# at 100 dpi: a figure at most 10.6 in wide is shown unscaled at 100 % zoom, where 9 pt is 12.5 px,
# above the 10 px floor for labels (tests/unit/test_measure_report.py measures every figure).
FIG_MAX_WIDTH_IN = 10.6
FONT_PT = 9  # the smallest text in a plot



def _e(x) -> str:
    return html.escape(str(x))


def _size(n) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{int(n)} B"


def _num(n, fmt="{:,}") -> str:
    return "n/a" if n is None else fmt.format(n)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _stages(report: dict) -> list[dict]:
    """Uniform stage views: name, params, macs, accuracy, flash, arena, measure (or None)."""
    if report.get("schema", "").startswith("tinyprune.measure"):
        t = report["totals"]
        return [{"name": report["format"], "params": t["params"], "macs": t["macs"], "accuracy": None,
                 "flash": t["flash_bytes"], "arena": t["arena_bytes"], "measure": report}]
    out = []
    for s in report.get("stages", []):
        m = (s.get("details") or {}).get("measure")
        flash = s.get("flash_bytes") if s.get("flash_bytes") is not None else (m["totals"]["flash_bytes"] if m else None)
        arena = s.get("arena_bytes") if s.get("arena_bytes") is not None else (m["totals"]["arena_bytes"] if m else None)
        out.append({"name": s["name"], "params": s.get("params"), "nonzero": s.get("nonzero_params"),
                    "macs": s.get("macs"), "accuracy": s.get("accuracy"),
                    "flash": flash, "arena": arena, "measure": m, "ops": (s.get("details") or {}).get("ops")})
    return out


def _waterfall(stages: list[dict]) -> str | None:
    plt = _plt()
    panels = [("params", "parameters", 1), ("flash", "flash (KiB)", 1024), ("arena", "TFLM arena (KiB)", 1024),
              ("accuracy", "accuracy (%)", 0.01)]
    panels = [p for p in panels if any(s[p[0]] is not None for s in stages)]
    if not panels:
        return None
    cols = min(len(panels), 2)  # four panels in a row would be shrunk below readable on the page
    per_panel = min(FIG_MAX_WIDTH_IN / cols, max(3.4, 0.5 * len(stages) + 1.2))
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(per_panel * cols, 3.3 * rows_n), squeeze=False)
    for extra in axes.flat[len(panels):]:
        extra.set_visible(False)
    names = [s["name"] for s in stages]
    for ax, (key, label, scale) in zip(axes.flat, panels):
        vals = [s[key] / scale if s[key] is not None else 0.0 for s in stages]
        colors = ["#4c72b0" if s[key] is not None else "#dddddd" for s in stages]
        bars = ax.bar(range(len(vals)), vals, color=colors)
        accuracy = key == "accuracy"
        if accuracy:  # the axis ends at 100 %, what accuracy can reach; the values go inside the bars
            lo = min((s[key] / scale for s in stages if s[key] is not None), default=0)
            ax.set_ylim(max(0, lo - 15), 100)
        else:
            ax.margins(y=0.3)
        bottom = ax.get_ylim()[0]
        prev = None
        for i, (b, s) in enumerate(zip(bars, stages)):
            x = b.get_x() + b.get_width() / 2
            if s[key] is None:
                ax.text(x, bottom, "n/a", ha="center", va="bottom", fontsize=FONT_PT, color="#777")
                continue
            v = s[key] / scale
            txt = f"{v:,.0f}" if not accuracy else f"{v:.1f}"
            if prev is not None and prev:
                txt += f"\n({100 * (v / prev - 1):+.0f}%)" if not accuracy else f"\n({v - prev:+.1f})"
            inside = accuracy and v - bottom > 0.2 * (100 - bottom)  # a short bar has its value above it
            ax.text(x, b.get_height(), txt, ha="center", va="top" if inside else "bottom", fontsize=FONT_PT,
                    color="white" if inside else "#222")
            prev = v
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=FONT_PT)
        ax.tick_params(axis="y", labelsize=FONT_PT)
        ax.set_title(label, fontsize=FONT_PT + 1)
    fig.suptitle("stage waterfall", fontsize=FONT_PT + 2)
    fig.tight_layout()
    return _png(fig)


def _layer_bars(layers: list[dict], title: str) -> str | None:
    if not layers:
        return None
    plt = _plt()
    labels = [f"{l['index']} {l['op']}"[:28] for l in layers]
    y = list(range(len(layers)))
    has_energy = all("energy_pj" in l for l in layers)
    has_bytes = any(l["weight_bytes"] or l["activation_bytes"] for l in layers)
    ncols = 1 + has_bytes + has_energy
    fig, axes = plt.subplots(1, ncols, figsize=(min(FIG_MAX_WIDTH_IN, 4.2 * max(ncols, 2)), 0.3 * len(layers) + 1.6),
                             sharey=True, squeeze=False)
    ax = axes[0]
    ax[0].barh(y, [l["macs"] for l in layers], color="#4c72b0")
    ax[0].set_title("MACs", fontsize=FONT_PT + 1)
    if has_bytes:
        ax[1].barh(y, [l["weight_bytes"] for l in layers], color="#dd8452", label="weights")
        ax[1].barh(y, [l["activation_bytes"] for l in layers], left=[l["weight_bytes"] for l in layers], color="#55a868",
                   label="activations (in+out)")
        ax[1].set_title("bytes", fontsize=FONT_PT + 1)
        ax[1].legend(fontsize=FONT_PT, loc="lower right")
    if has_energy:
        ax[ncols - 1].barh(y, [l["energy_pj"] / 1e3 for l in layers], color="#c44e52")
        ax[ncols - 1].set_title("energy, 45 nm floor (nJ)", fontsize=FONT_PT + 1)
    ax[0].set_yticks(y, labels, fontsize=FONT_PT)
    ax[0].invert_yaxis()
    for a in ax:
        a.tick_params(axis="x", labelsize=FONT_PT)
        a.xaxis.get_offset_text().set_fontsize(FONT_PT)
    fig.suptitle(title, fontsize=FONT_PT + 2)
    fig.tight_layout()
    return _png(fig)


def _cost_plot(views: list[tuple[str, dict]], target: str) -> str | None:
    """Time and energy predicted on the target per stage (the deployed costs, with their intervals),
    beside the 45 nm floor, which is labelled as the different quantity it is."""
    from tinyprune.measure.deployed import of

    costs = [(name, of(m), m) for name, m in views if of(m) is not None]
    if not costs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(FIG_MAX_WIDTH_IN, 4))
    x = list(range(len(costs)))
    names = [name for name, _, _ in costs]

    def bars(ax, values, color, label, offset=0.0, width=0.6):
        ax.bar([xi + offset for xi in x], [b.value for b in values], width, color=color, label=label,
               yerr=[[b.value - b.low for b in values], [b.high - b.value for b in values]], capsize=4)

    cov = int(100 * costs[0][1].coverage)
    bars(axes[0], [c.ms for _, c, _ in costs], "#4c72b0", f"{costs[0][1].runtime_label} ({cov} % interval)")
    axes[0].set_ylabel("ms per inference", fontsize=11)
    axes[0].set_title(f"latency predicted on {target}", fontsize=12)
    bars(axes[1], [c.energy_uj for _, c, _ in costs], "#937860", f"{target} board (pJ/cycle x cycles)", -0.2, 0.4)
    axes[1].bar([xi + 0.2 for xi in x], [m["energy"]["floor_45nm"]["total_uj"] for _, _, m in costs], 0.4,
                label="45 nm floor (arithmetic only, not the board)", color="#8172b3")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("uJ per inference", fontsize=11)
    axes[1].set_title("energy per inference", fontsize=12)
    for ax in axes:
        ax.set_xticks(x, names, fontsize=10)
        ax.tick_params(labelsize=10)
        ax.legend(fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    """A table of cells already in HTML."""
    out = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>"]
    numeric = ' class="n"'
    for row in rows:
        out.append("<tr>" + "".join(f"<td{numeric if i >= numeric_from and len(c) <= _NUMERIC_CELL_CHARS else ''}>"
                                    f"{c}</td>" for i, c in enumerate(row)) + "</tr>")
    return "\n".join(out) + "</table>"


def _inline(text, breaks: bool = False) -> str:
    """The two marks report text carries (see tinyprune.report.document): `code` and **bold**.
    ``breaks``: a line may break after / and ; (TFLite tensor names run to a hundred characters)."""
    out = _e(text)
    if breaks:
        out = re.sub(r"([/;])(?=[^\s])", r"\1<wbr>", out)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)


def _embedded(base: Path | None, path: str) -> str | None:
    """A PNG written beside the report, as a data URI, so the page stays self-contained."""
    file = Path(path) if Path(path).is_absolute() or base is None else base / path
    if file.suffix.lower() != ".png" or not file.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(file.read_bytes()).decode("ascii")


def _block(block, base: Path | None) -> str:
    if isinstance(block, Table):
        return _table([_inline(h) for h in block.header], [[_inline(c, breaks=True) for c in row] for row in block.rows],
                      block.numeric_from)
    if isinstance(block, Image):
        src = _embedded(base, block.path)
        if src is not None:
            return f"<img alt='{_e(block.alt)}' src='{src}'>"
        return f"<p class='note'>{_e(block.alt)}: <code>{_e(block.path)}</code> (not found beside this page)</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in block.items) + "</ul>"
    text, cls = (block.text, " class='note'") if isinstance(block, Note) else (str(block), "")
    return f"<p{cls}>" + "<br>".join(_inline(line) for line in text.split("\n")) + "</p>"


def _measurement_sections(m: dict, tname: str) -> list[Section]:
    """``tinyprune measure --html``: one model, no pipeline stages."""
    t, target = m["totals"], m["target"]
    views = [(m["format"], m)]
    intro = Section("intro", "", [
        f"Model `{m.get('model', {}).get('path', 'model')}` ({m['format']}, {m.get('precision', '')}); target "
        f"**{tname}**: {_size(target.get('flash_bytes'))} flash, {_size(target.get('ram_bytes'))} RAM, "
        f"{target.get('clock_hz', 0) / 1e6:g} MHz."])
    from tinyprune.measure.deployed import of

    c = of(m)
    totals = Section("stages", "Totals", [Table(
        ["model", "params", "MACs", "firmware flash", "RAM", f"fits {tname}"],
        [[m["format"], _num(t["params"]), _num(t["macs"]), _size(c.flash_bytes), _size(c.ram_bytes),
          "yes" if c.fits else "NO: " + "; ".join(c.misses())]]), *c.lines(tname)])
    layers = replace(layers_section(m["format"], m, tname), title="Layers")
    return [s for s in (intro, totals, predicted_section(views, tname), host_section(views, tname), layers)
            if s is not None]


def render_html(report: dict, base: Path | None = None) -> str:
    """The page as a string (see ``write_html``); ``base``: the folder images named in the report are in."""
    is_measure = report.get("schema", "").startswith("tinyprune.measure")
    stages = _stages(report)
    target = report["target"]
    tname = target.get("name", "target")
    model_path = report.get("model", {}).get("path", "model")
    if is_measure:
        title, secs = f"tinyprune measurement: {Path(model_path).name}", _measurement_sections(report, tname)
    else:
        title, secs = f"tinyprune report: {model_path}", sections(Report.from_dict(report))
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
             f"<style>{_CSS}</style></head><body>", f"<h1>{_e(title)}</h1>"]
    for sec in secs:
        body = "\n".join(_block(b, base) for b in sec.blocks)
        if sec.key == "headline":
            parts.append(f"<div class='headline'>{body}</div>")
            continue
        if sec.title:
            parts.append(f"<h2>{_inline(sec.title)}</h2>")
        parts.append(body)
        parts += _plots(sec.key, report, stages, tname)
    if not any(s.key == "layer_costs" for s in secs):
        ops = next((s.get("ops") for s in reversed(stages) if s.get("ops")), None)
        if ops:
            parts.append("<h2>Ops of the int8 graph</h2>")
            layers = [{"index": i, "op": o["op"], "macs": o["macs"], "weight_bytes": 0, "activation_bytes": 0}
                      for i, o in enumerate(ops)]
            img = _layer_bars(layers, "MACs per op of the int8 graph")
            if img:
                parts.append(f"<img alt='per-op MACs' src='{img}'>")
    parts.append(f"<p class='note'>Generated by tinyprune {_e(report.get('tool_version', ''))}; self-contained, no "
                 "network access needed.</p></body></html>")
    return "\n".join(parts)


def _plots(key: str, report: dict, stages: list[dict], tname: str) -> list[str]:
    """The figures the HTML adds to a section (report.md has the same section without them)."""
    if key == "stages":
        img = _waterfall(stages)
        if img is None:
            return []
        return [f"<img alt='stage waterfall: params, flash, arena, accuracy per stage' src='{img}'>",
                "<p class='note'>Flash of float stages (where shown) is their parameter bytes at float32, an estimate; "
                "the int8 stage's flash is the flatbuffer and its arena the smallest with which the real TFLM "
                "interpreter allocates and invokes the model.</p>"]
    if key == "fit":
        from tinyprune.fit import pareto_figure

        return [f"<img alt='--fit trials: accuracy vs deployed flash' src='{_png(pareto_figure(report['fit']))}'>"]
    views = [(s["name"], s["measure"]) for s in stages if s["measure"]]
    if key == "predicted":
        img = _cost_plot(views, tname)
        return [f"<img alt='latency and energy predicted on the target per stage' src='{img}'>"] if img else []
    if key == "layer_costs" and views:
        name, m = views[-1]
        img = _layer_bars(m["layers"], f"per layer: {name} ({m.get('precision', '')}) on {tname}")
        return [f"<img alt='per-layer MACs, bytes and energy' src='{img}'>"] if img else []
    return []


def write_html(report_dict: dict, path) -> Path:
    """Write the self-contained page to ``path`` atomically (temp file + rename); return the path.
    Images the report names (the information plane) are read from ``path``'s folder and embedded."""
    path = Path(path)
    page = render_html(report_dict, base=path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a report is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
