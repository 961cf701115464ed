"""report.html: one self-contained page (inline CSS, plots as base64 PNG), readable offline.

``write_html(report_dict, path)`` takes the dict of ``report.json`` (``Report.to_dict()``), whose
stages may carry ``details["measure"]`` (from ``tinyprune.measure.core.measure_stage``), or a
single measurement from ``tinyprune measure`` (``measure_file``). It only reads the dict: the
report never recomputes anything.

Rendering is checked in tests/e2e/test_measure_cli.py with headless Chromium, network off
(every embedded PNG decodes, the page is not blank). By hand::

    chromium --headless --no-sandbox --proxy-server=127.0.0.1:9 --window-size=1200,3000 \
        --screenshot=shot.png file:///path/to/report.html
"""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
from pathlib import Path

from tinyprune.report.render import score_label

ENERGY_NOTE = (
    "Two energy figures per inference. <b>45 nm floor</b>: the arithmetic (MACs and element-wise work "
    "at the layer's precision) plus reading every weight once and every activation once from an SRAM "
    "of the right size, with the per-operation energies of Horowitz (ISSCC 2014, 45 nm). It leaves out "
    "instruction fetch, control, leakage and the rest of the chip, so it is a floor: what the "
    "computation alone needs. <b>Target-calibrated estimate</b>: the target's measured energy per "
    "clock cycle (e.g. ~360 pJ/cycle for a Cortex-M4 board in MLPerf Tiny) times the predicted "
    "cycles: what the battery sees, within the accuracy of the latency prediction."
)
LATENCY_NOTE = (
    "<b>Predicted</b> latency is for the target: per op, MACs / (target MACs per cycle for that op kind) "
    "or elements x cycles per element, plus a per-op overhead, over the clock; the Cortex-M4 cost model "
    "is fitted to published MLPerf Tiny latencies (optimized = CMSIS-NN-class kernels, reference = "
    "TFLM's portable kernels). <b>Measured</b> latency is on this host (median of repeated runs, "
    "warm-up excluded): useful to compare stages and runtimes, not a device number."
)

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em} h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em} th,td{border:1px solid #ccc;padding:.25em .55em}
th{background:#f2f2f2} td.n{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#444;font-size:.9em;max-width:60em} .bad{color:#b00020;font-weight:bold} .ok{color:#0a7d28}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}
.headline{background:#f5f8fc;border:1px solid #c9d6e8;padding:.4em 1em;margin:1em 0} .headline p{margin:.35em 0}
"""


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
    per_panel = max(3.4, 0.5 * len(stages) + 1.2)
    cols = min(len(panels), 2 if len(stages) > 5 else 4)
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(per_panel * cols, 3.3 * rows_n), squeeze=False)
    for extra in axes.flat[len(panels):]:
        extra.set_visible(False)
    names = [s["name"] for s in stages]
    for ax, (key, label, scale) in zip(axes.flat, panels):
        vals = [s[key] / scale if s[key] is not None else 0.0 for s in stages]
        colors = ["#4c72b0" if s[key] is not None else "#dddddd" for s in stages]
        bars = ax.bar(range(len(vals)), vals, color=colors)
        prev = None
        for i, (b, s) in enumerate(zip(bars, stages)):
            if s[key] is None:
                ax.text(b.get_x() + b.get_width() / 2, 0, "n/a", ha="center", va="bottom", fontsize=7, color="#777")
                continue
            v = s[key] / scale
            txt = f"{v:,.0f}" if key != "accuracy" else f"{v:.1f}"
            if prev is not None and prev:
                txt += f"\n({100 * (v / prev - 1):+.0f}%)" if key != "accuracy" else f"\n({v - prev:+.1f})"
            ax.text(b.get_x() + b.get_width() / 2, b.get_height(), txt, ha="center", va="bottom", fontsize=6)
            prev = v
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.margins(y=0.25)
        if key == "accuracy":
            lo = min((s[key] / scale for s in stages if s[key] is not None), default=0)
            ax.set_ylim(max(0, lo - 15), 112)
    fig.suptitle("stage waterfall", fontsize=10)
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
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * max(ncols, 2), 0.28 * len(layers) + 1.6), sharey=True, squeeze=False)
    ax = axes[0]
    ax[0].barh(y, [l["macs"] for l in layers], color="#4c72b0")
    ax[0].set_title("MACs", fontsize=9)
    if has_bytes:
        ax[1].barh(y, [l["weight_bytes"] for l in layers], color="#dd8452", label="weights")
        ax[1].barh(y, [l["activation_bytes"] for l in layers], left=[l["weight_bytes"] for l in layers], color="#55a868",
                   label="activations (in+out)")
        ax[1].set_title("bytes", fontsize=9)
        ax[1].legend(fontsize=7, loc="lower right")
    if has_energy:
        ax[ncols - 1].barh(y, [l["energy_pj"] / 1e3 for l in layers], color="#c44e52")
        ax[ncols - 1].set_title("energy, 45 nm floor (nJ)", fontsize=9)
    ax[0].set_yticks(y, labels, fontsize=7)
    ax[0].invert_yaxis()
    for a in ax:
        a.tick_params(axis="x", labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _cost_rows(stages: list[dict]) -> list[dict]:
    rows = []
    for s in stages:
        m = s["measure"]
        if not m:
            continue
        p = m["latency"]["predicted"]
        e = m["energy"]
        rows.append({
            "stage": s["name"], "precision": m.get("precision", ""),
            "pred_opt": p["optimized"]["ms"], "pred_ref": p["reference"]["ms"],
            "measured": {k: v.get("median_ms") for k, v in m["latency"]["measured"].items()},
            "spread": {k: (v.get("p25_ms"), v.get("p75_ms")) for k, v in m["latency"]["measured"].items()},
            "floor_uj": e["floor_45nm"]["total_uj"],
            "est_uj": e.get("target_estimate", {}).get("total_uj"),
        })
    return rows


def _cost_plot(rows: list[dict], target: str) -> str | None:
    if not rows:
        return None
    plt = _plt()
    runtimes = sorted({k for r in rows for k, v in r["measured"].items() if v is not None})
    series = [("predicted " + target + " (optimized)", "pred_opt"), ("predicted " + target + " (reference)", "pred_ref")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    n = len(series) + len(runtimes)
    width = 0.8 / max(n, 1)
    x = range(len(rows))
    for i, (label, key) in enumerate(series):
        axes[0].bar([xi + i * width for xi in x], [r[key] for r in rows], width, label=label)
    for j, rt in enumerate(runtimes):
        vals = [r["measured"].get(rt) or 0 for r in rows]
        err = [[max((r["measured"].get(rt) or 0) - (r["spread"].get(rt, (None, None))[0] or 0), 0) for r in rows],
               [max((r["spread"].get(rt, (None, None))[1] or 0) - (r["measured"].get(rt) or 0), 0) for r in rows]]
        axes[0].bar([xi + (len(series) + j) * width for xi in x], vals, width, yerr=err, hatch="//",
                    label=f"measured on host: {rt}")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("ms per inference")
    axes[0].set_xticks([xi + width * (n - 1) / 2 for xi in x], [r["stage"] for r in rows], fontsize=8)
    axes[0].set_title("latency: predicted on the target vs measured on this host", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].bar([xi - 0.2 for xi in x], [r["floor_uj"] for r in rows], 0.4, label="45 nm floor", color="#8172b3")
    axes[1].bar([xi + 0.2 for xi in x], [r["est_uj"] or 0 for r in rows], 0.4, label=f"{target} estimate (pJ/cycle x cycles)",
                color="#937860")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("uJ per inference")
    axes[1].set_xticks(list(x), [r["stage"] for r in rows], fontsize=8)
    axes[1].set_title("energy: 45 nm floor vs target-calibrated estimate", fontsize=9)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _table(header: list[str], rows: list[list], numeric_from: int = 1) -> str:
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            cls = ' class="n"' if i >= numeric_from else ""
            cells.append(f"<td{cls}>{c}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>"


def render_html(report: dict) -> str:
    """The page as a string (see ``write_html``)."""
    is_measure = report.get("schema", "").startswith("tinyprune.measure")
    stages = _stages(report)
    target = report["target"]
    tname = target.get("name", "target")
    model_path = report.get("model", {}).get("path", "model")
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>tinyprune report: {_e(Path(model_path).name)}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>tinyprune {'measurement' if is_measure else 'report'}: {_e(Path(model_path).name)}</h1>"]
    parts.append(f"<p>Model <code>{_e(model_path)}</code>; target <b>{_e(tname)}</b>"
                 + (f" ({_e(target.get('reference_board', ''))})" if target.get("reference_board") else "")
                 + f": {_size(target.get('flash_bytes'))} flash, {_size(target.get('ram_bytes'))} RAM, "
                 f"{target.get('clock_hz', 0) / 1e6:g} MHz.</p>")

    if not is_measure and report.get("deployed"):
        from tinyprune.report.records import Report, StageRecord
        from tinyprune.report.render import headline

        fields = {k: report[k] for k in ("tool_version", "model", "data", "target", "config", "layers", "artifacts")}
        top = headline(Report(**fields, stages=[StageRecord(**s) for s in report["stages"]],
                              compression=report.get("compression"), deployed=report["deployed"]))
        parts.append("<div class='headline'>" + "".join(
            f"<p>{'<b>' if i == 0 else ''}{_e(line).replace('`', '')}{'</b>' if i == 0 else ''}</p>"
            for i, line in enumerate(top)) + "</div>")
    dep = report.get("deployed")
    if dep:
        sharing = (dep.get("weight_sharing") or {}).get("reason", "")
        parts.append(f"<p><b>Deployed:</b> <code>{_e(dep['artifact'])}</code>, {_size(dep['flash_bytes'])} flash, "
                     f"{_size(dep['arena_bytes'])} arena, {_e(score_label(report['data']))} "
                     f"{100 * dep['accuracy']:.2f} % in TFLM "
                     f"({-dep['accuracy_drop_points']:+.2f} points against the original; loss budget "
                     f"{dep['max_accuracy_drop_points']:g}: {'held' if dep['within_accuracy_budget'] else 'EXCEEDED'})."
                     + (f" Weight sharing: {_e(sharing)}." if sharing else "") + "</p>")
    fit = report.get("fit")
    if fit:
        from tinyprune.fit import pareto_figure

        parts.append("<h2>--fit: accuracy vs deployed flash</h2>")
        parts.append(f"<p>{_e(fit['search'])}. Limits: " + ", ".join(f"{_e(k)} {v:,.4g}" for k, v in fit["limits"].items())
                     + ".</p>")
        parts.append(f"<img alt='--fit trials: accuracy vs deployed flash' src='{_png(pareto_figure(fit))}'>")
        rows = [[f"{t['sparsity']:.0%}" + (" (chosen)" if i == fit["chosen"] else ""), _e(t["artifact"]),
                 f"{100 * t['accuracy']:.2f} %", _size(t["flash_bytes"]), _size(t["arena_bytes"]),
                 "n/a" if t["latency_ms"] is None else f"{t['latency_ms']:.2f}",
                 "yes" if t["fits"] else "no: " + _e(", ".join(t["misses"]))] for i, t in enumerate(fit["trials"])]
        parts.append(_table(["MACs removed", "deployed", "accuracy (TFLM)", "flash", "arena", "predicted ms", "fits"],
                            rows))
    parts.append("<h2>Stages</h2>")
    rows = []
    for s in stages:
        acc = "n/a" if s["accuracy"] is None else f"{100 * s['accuracy']:.2f} %"
        rows.append([_e(s["name"]), _num(s["params"]), _num(s.get("nonzero")), _num(s["macs"]), acc, _size(s["flash"]),
                     _size(s["arena"])])
    parts.append(_table(["stage", "stored params", "nonzero", "MACs", score_label(report.get("data") or {}), "flash",
                         "TFLM arena"], rows))
    fits = report.get("fits_target")
    if fits:
        parts.append("<p>Fits " + _e(tname) + ": flash " + ("<span class='ok'>yes</span>" if fits.get("flash") else "<span class='bad'>NO</span>")
                     + ", RAM " + ("<span class='ok'>yes</span>" if fits.get("ram") else "<span class='bad'>NO</span>") + ".</p>")
    img = _waterfall(stages)
    if img:
        parts.append(f"<img alt='stage waterfall: params, flash, arena, accuracy per stage' src='{img}'>")
        parts.append("<p class='note'>Flash of float stages (where shown) is their parameter bytes at float32, an "
                     "estimate; the int8 stage's flash is the flatbuffer and its arena the smallest with which the "
                     "real TFLM interpreter allocates and invokes the model.</p>")

    cost = _cost_rows(stages)
    if cost:
        parts.append("<h2>Cost model vs measured latency</h2>")
        runtimes = sorted({k for r in cost for k in r["measured"]})
        rows = []
        for r in cost:
            meas = []
            for rt in runtimes:
                v = r["measured"].get(rt)
                lo, hi = r["spread"].get(rt, (None, None))
                meas.append("n/a" if v is None else f"{v:.3f} ({lo:.3f}-{hi:.3f})")
            rows.append([_e(r["stage"]), _e(r["precision"]), f"{r['floor_uj']:.4g}",
                         "n/a" if r["est_uj"] is None else f"{r['est_uj']:.4g}", f"{r['pred_opt']:.3f}",
                         f"{r['pred_ref']:.3f}", *meas])
        header = ["stage", "precision", "energy 45 nm floor (uJ)", f"energy {tname} estimate (uJ)",
                  f"predicted {tname} ms (optimized)", f"predicted {tname} ms (reference)",
                  *[f"measured host ms: {rt} (IQR)" for rt in runtimes]]
        parts.append(_table(header, rows, numeric_from=2))
        img = _cost_plot(cost, tname)
        if img:
            parts.append(f"<img alt='predicted and measured latency, energy floor and estimate per stage' src='{img}'>")
        parts.append(f"<p class='note'>{LATENCY_NOTE}</p><p class='note'>{ENERGY_NOTE}</p>")

    final = next((s for s in reversed(stages) if s["measure"]), None)
    if final is not None:
        m = final["measure"]
        layers = m["layers"]
        parts.append(f"<h2>Layers of the {_e(final['name'])} stage</h2>")
        img = _layer_bars(layers, f"per layer: {final['name']} ({m.get('precision', '')}) on {tname}")
        if img:
            parts.append(f"<img alt='per-layer MACs, bytes and energy' src='{img}'>")
        rows = [[_e(l["index"]), _e(l["op"]), _e(l["name"][-40:]), _e("x".join(map(str, l["output_shapes"][0])) if l["output_shapes"] else ""),
                 _num(l["params"]), _num(l["macs"]), _num(l["weight_bytes"]), _num(l["activation_bytes"]),
                 f"{l.get('energy_pj', 0) / 1e3:.2f}", f"{l.get('latency_us', 0):.1f}"] for l in layers]
        parts.append(_table(["#", "op", "name", "output", "params", "MACs", "weight B", "activation B",
                             "energy nJ (45 nm)", f"predicted us ({tname})"], rows, numeric_from=4))
        t = m["totals"]
        parts.append(f"<p>Flash: model {_size(t['flash_bytes'])} ({_e(t['flash_source'])}) + runtime code "
                     f"{_size(t['runtime_flash_bytes'])} = {_size(t['flash_total_bytes'])}. RAM: {_size(t['ram_bytes'])} "
                     f"({_e(t['ram_source'])}) + runtime {_size(t['runtime_ram_bytes'])} = {_size(t['ram_total_bytes'])}.</p>")
        if m.get("unsupported_ops"):
            parts.append(f"<p class='bad'>Ops {_e(tname)}'s TFLM runtime lacks: {_e(', '.join(m['unsupported_ops']))}</p>")
        parts.append("<p class='note'>MACs: multiply-accumulates of conv, depthwise and fully-connected ops (FLOPs = 2 x "
                     "MACs); other ops count the elements they produce. Weight bytes are the constant tensors an op reads; "
                     "activation bytes its input and output tensors.</p>")
    else:
        ops = next((s.get("ops") for s in reversed(stages) if s.get("ops")), None)
        if ops:
            parts.append("<h2>Layers (int8 graph)</h2>")
            layers = [{"index": i, "op": o["op"], "macs": o["macs"], "weight_bytes": 0, "activation_bytes": 0}
                      for i, o in enumerate(ops)]
            img = _layer_bars(layers, "MACs per op of the int8 graph")
            if img:
                parts.append(f"<img alt='per-op MACs' src='{img}'>")
    parts.append(f"<p class='note'>Generated by tinyprune {_e(report.get('tool_version', ''))}; self-contained, no "
                 "network access needed.</p></body></html>")
    return "\n".join(parts)


def write_html(report_dict: dict, path) -> Path:
    """Write the self-contained page to ``path`` atomically (temp file + rename); return the path."""
    path = Path(path)
    page = render_html(report_dict)
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
