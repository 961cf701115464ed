"""Human-readable views of a Report: the console's lines and the sections of report.md and report.html.

``sections(report)`` is the one list both files are written from (``document.to_markdown`` and
``tinyprune.report.html``), so a fact added here reaches both. Target numbers (measured in TFLM or
predicted for the board) and timings of this host are kept in separate sections.
"""

from __future__ import annotations

from tinyprune.export.firmware import saves_ram
from tinyprune.measure.deployed import of as deployed_of
from tinyprune.report import document
from tinyprune.report.document import Bullets, Image, Note, Section, Table
from tinyprune.report.records import Report


def _db(v, unit: bool = True) -> str:
    return "n/a" if v is None else f"{v:.1f}" + (" dB" if unit else "")


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f} %"


def _num(v: int | None) -> str:
    return "n/a" if v is None else f"{v:,}"


def _kib(v: int | None) -> str:
    return "n/a" if v is None else f"{v / 1024:.1f} KiB"


def summary_rows(report: Report) -> list[list[str]]:
    """Rows of the stage table: stage, params, MACs, accuracy, and the stage's deployed costs
    (firmware flash, RAM, predicted ms; float stages as their int8 conversion), seconds."""
    rows = []
    for s in report.stages:
        c = deployed_of(s.details.get("measure")) if s.details else None
        rows.append([s.name, _num(s.params), _num(s.nonzero_params), _num(s.macs), _pct(s.accuracy),
                     _kib(c.flash_bytes) if c else "n/a", _kib(c.ram_bytes) if c else "n/a",
                     f"{c.ms.value:.1f}" if c else "n/a", f"{s.seconds:.1f}"])
    return rows


HEADER = ["stage", "stored params", "nonzero", "MACs", "accuracy", "firmware flash", "RAM", "ms", "seconds"]

_LABELS = {"accuracy": "accuracy", "r2": "R²", "auc": "ROC AUC", "explained_variance": "explained variance"}


def score_label(data: dict) -> str:
    """What the stages' score is for this run's task (tinyprune.task): accuracy, R², ROC AUC..."""
    task = data.get("task")
    return _LABELS.get(task.get("metric"), "accuracy") if isinstance(task, dict) else "accuracy"


def header(report: Report) -> list[str]:
    return [score_label(report.data) if h == "accuracy" else h for h in HEADER]


def _quality_line(report: Report) -> list[str]:
    """For regression and reconstruction: the task's error metrics, float -> device."""
    task = report.data.get("task")
    if not isinstance(task, dict) or task.get("kind") == "classify":
        return []
    first, dep = report.stages[0].quality or {}, report.deployed or {}
    last = (report.stage(dep["stage"]).quality if dep else None) or {}
    parts = [f"{k.replace('_', ' ')} {first[k]:.4g} -> {last[k]:.4g}" for k in ("mse", "mae", "mse_anomalous")
             if k in first and k in last]
    return [f"Task {task['kind']}: " + ", ".join(parts) + " (original float -> device)."] if parts else []


def _decompression_line(stage) -> list[str]:
    """A LUT model's other RAM layout: decoded weights in TFLM's alternate decompression memory."""
    split = stage.details.get("decompression_memory") if stage.details else None
    if not split or not split.get("bit_exact") or not saves_ram(split):
        return []
    if split.get("required"):
        return [f"The decoded weights go to the target's separate decompression region (TFLM's alternate "
                f"decompression memory, `kDecompressionMemorySize`): {split['alt_bytes']:,} B there, beside the "
                f"{split['arena_bytes']:,} B arena (they do not fit in one arena of "
                f"{split['single_arena_bytes']:,} B), measured in TFLM with the same outputs on "
                f"{split['samples_checked']} samples."]
    return [f"With a separate RAM region for TFLM's alternate decompression memory (`kDecompressionMemorySize`): "
            f"{split['arena_bytes']:,} B arena + {split['alt_bytes']:,} B for the decoded weights, measured in TFLM "
            f"(the same outputs on {split['samples_checked']} samples)."]


def _sharing_line(report: Report) -> list[str]:
    """Why the deployed file is the plain or the LUT model: the decision, in one line."""
    dep = report.deployed or {}
    sharing = dep.get("weight_sharing") or {}
    if not sharing:
        return []
    if dep["artifact"] == "model_vela.tflite":
        return [f"Deployed the int8 model compiled by Vela for the NPU ({sharing.get('reason', '')})."]
    if dep["stage"] == "int8_lut":
        plain, lut = report.costs("int8"), report.costs("int8_lut")
        trade = ""
        if plain and lut:
            trade = (f": firmware flash {plain.flash_bytes:,} -> {lut.flash_bytes:,} B, RAM {plain.ram_bytes:,} -> "
                     f"{lut.ram_bytes:,} B")
        return [f"Deployed the LUT model ({sharing.get('reason', '')}){trade}."]
    return [f"Deployed the plain int8 model: {sharing.get('reason', 'weight sharing not deployed')}."]


def headline(report: Report) -> list[str]:
    """What a firmware engineer needs first: the file to flash, the arena to reserve, what the
    firmware takes of the target, accuracy float -> device, time and energy, and the verdict."""
    from tinyprune.export.firmware import arena_size

    dep, t = report.deployed, report.target
    if not dep:
        return []
    stage = report.stage(dep["stage"])
    c = report.costs()
    prefix = {"model_int8_lut.tflite": "model_lut", "model_vela.tflite": "model_vela"}.get(dep["artifact"], "model")
    kind = "Vela's SRAM for the feature maps" if prefix == "model_vela" else "measured in TFLM"
    float_acc = report.stage("original").accuracy
    metric = score_label(report.data)
    label = metric[0].upper() + metric[1:]
    fits = c.fits if c else False
    return [
        f"Flash `{dep['artifact']}` (C array: `{prefix}_data.cc/.h`, ops: `{prefix}_ops.h`); reserve a "
        f"{arena_size(dep['arena_bytes']):,} B tensor arena (`kTensorArenaSize`: {dep['arena_bytes']:,} B {kind} "
        "+ margin).",
        *(c.lines(t["name"]) if c else []),
        f"{label} {_pct(float_acc)} (original, float) -> {_pct(dep['accuracy'])} on the device (TFLM, "
        f"{report.data['eval']} held-out samples).",
        *_quality_line(report),
        *_sharing_line(report),
        *_decompression_line(stage),
        f"Verdict: {'fits' if fits else 'DOES NOT FIT'} {t['name']}"
        + ("" if fits or not c else f" ({'; '.join(c.misses())})")
        + f"; {metric} {'within' if dep['within_accuracy_budget'] else 'OVER'} the "
        f"{dep['max_accuracy_drop_points']:g}-point budget.",
    ]


LATENCY_NOTE = (
    "**Predicted** for the target, one figure per stage (the deployed costs: the headline, `--fit` and `check` read "
    "the same): TFLM + CMSIS-NN instructions predicted per operator from its shape (fitted on exact counts of real "
    "firmware on emulated Cortex-M cores), times the runtime's cycles per instruction on the core (fitted on "
    "published MLPerf Tiny latencies), over the clock. The range is an interval of the stated coverage, checked on "
    "MLPerf Tiny boards left out of the fit. Float stages are costed as their int8 conversion."
)
ENERGY_NOTE = (
    "**Energy** is the predicted cycles times the target board's energy per cycle (measured MLPerf Tiny energy where "
    "the board has it, else a datasheet figure), with the product of both ranges. The **45 nm floor** is a different "
    "quantity: the arithmetic plus reading every weight and activation once from an SRAM of the right size "
    "(Horowitz, ISSCC 2014, 45 nm); it leaves out instruction fetch, control, leakage and the rest of the chip, so it "
    "is what the computation alone needs, not what the board spends."
)
HOST_TITLE = "Host timings (this machine, not the target)"


def measured_stages(report: Report) -> list[tuple[str, dict]]:
    """(stage name, its measurement) for every stage that carries one, in stage order."""
    return [(s.name, s.details["measure"]) for s in report.stages if s.details.get("measure")]


def predicted_section(views: list[tuple[str, dict]], tname: str) -> Section | None:
    """Time and energy predicted on the target, per measured stage: nothing measured on this host."""
    rows = []
    for name, m in views:
        c = deployed_of(m)
        if c is None:
            continue
        rows.append([name, m.get("precision", ""), _kib(c.flash_bytes), _kib(c.ram_bytes), f"{c.instructions:,}",
                     f"{c.ms.value:.3f} ({c.ms.low:.3f}-{c.ms.high:.3f})",
                     f"{c.energy_uj.value:.4g} ({c.energy_uj.low:.4g}-{c.energy_uj.high:.4g})",
                     f"{m['energy']['floor_45nm']['total_uj']:.4g}"])
    if not rows:
        return None
    runtime = deployed_of(views[-1][1])
    return Section("predicted", f"Predicted on {tname} ({runtime.runtime_label})", [
        Table(["stage", "precision", "firmware flash", "RAM", "instructions", f"ms ({int(100 * runtime.coverage)} %)",
               "energy uJ", "45 nm floor uJ (not the board)"], rows, numeric_from=2),
        Note(LATENCY_NOTE), Note(ENERGY_NOTE)])


def host_section(views: list[tuple[str, dict]], tname: str) -> Section | None:
    """What the runtimes took on the machine that ran tinyprune: kept apart from the target's numbers."""
    rows = []
    for name, m in views:
        for runtime, t in (m["latency"].get("measured") or {}).items():
            if "error" in t:
                rows.append([name, runtime, f"failed: {t['error']}", "", ""])
            else:
                rows.append([name, runtime, f"{t['median_ms']:.3f}", f"{t['p25_ms']:.3f}-{t['p75_ms']:.3f}",
                             f"{t['repeats']} (+{t['warmup']} warm-up)"])
    if not rows:
        return None
    return Section("host", HOST_TITLE, [
        Note(f"Wall time per inference on the machine that ran tinyprune, not on {tname}: the median of repeated "
             "runs after warm-up, with the interquartile range. They compare stages and runtimes on this host; the "
             "target's latency is the predicted one."),
        Table(["stage", "runtime", "median ms", "IQR ms", "timed runs"], rows, numeric_from=2)])


def layers_section(name: str, m: dict, tname: str) -> Section:
    """Per op of one measured stage: what it computes, its size and its predicted cost on the target."""
    layers, fmt = m["layers"], m.get("format")
    named = fmt == "tflite" and any(l.get("module") for l in layers)
    if fmt == "tflite":
        head = ["#", *(["PyTorch module"] if named else []), "TFLite op", "tensor"]
        first = [[str(l["index"]), *([l.get("module") or "n/a"] if named else []), l["op"], l["name"]] for l in layers]
    else:
        head = ["#", "PyTorch module" if fmt == "pytorch" else "ONNX node", "op"]
        first = [[str(l["index"]), l["name"], l["op"]] for l in layers]
    rows = [[*f, "x".join(map(str, l["output_shapes"][0])) if l["output_shapes"] else "", _num(l["params"]),
             _num(l["macs"]), _num(l["weight_bytes"]), _num(l["activation_bytes"]),
             f"{l.get('energy_pj', 0) / 1e3:.2f}", f"{l.get('latency_us', 0):.1f}"] for f, l in zip(first, layers)]
    c = deployed_of(m)
    blocks = [Table([*head, "output", "params", "MACs", "weight B", "activation B", "energy nJ (45 nm floor)",
                     f"predicted us ({tname})"], rows, numeric_from=len(head) + 1),
              *(c.lines(tname)[:1] if c else [])]
    if m.get("unsupported_ops"):
        blocks.append(f"**Ops {tname}'s TFLM runtime lacks: {', '.join(m['unsupported_ops'])}**")
    if named:
        blocks.append(Note("PyTorch module: the layer of the float model whose output the op computes, as the int8 "
                           "fidelity comparison paired them; a DECODE op belongs to the layer whose weights it "
                           "restores; n/a: an op the float model has no tensor for."))
    elif fmt == "tflite":
        blocks.append(Note("Ops are named by their TFLite output tensors only: this measurement carries no PyTorch "
                           "module names (a .tflite measured on its own, or a report written before they were "
                           "recorded)."))
    blocks.append(Note("MACs: multiply-accumulates of conv, depthwise and fully-connected ops (FLOPs = 2 x MACs); "
                       "other ops count the elements they produce. Weight bytes are the constant tensors an op reads; "
                       "activation bytes its input and output tensors."))
    return Section("layer_costs", f"Layers of the {name} stage", blocks)


def _stages_section(r: Report) -> Section:
    orig, int8 = r.stage("original"), r.stage("int8")
    dev = r.stage(r.deployed["stage"]) if r.deployed else int8
    t, c = r.target, r.costs(dev.name)
    blocks = [
        Table(header(r), summary_rows(r)),
        f"MACs: {_num(orig.macs)} -> {_num(int8.macs)} ({1 - int8.macs / orig.macs:.1%} removed); "
        f"params: {_num(orig.params)} -> {_num(int8.params)} ({1 - int8.params / orig.params:.1%} removed).\n"
        + (f"Fits {t['name']} ({dev.name} stage, firmware): flash {'yes' if c.fits_flash else 'NO'} "
           f"({_kib(c.flash_bytes)} of {_kib(c.flash_limit)}), RAM {'yes' if c.fits_ram else 'NO'} "
           f"({_kib(c.ram_bytes)} of {_kib(c.ram_limit)}). Firmware flash, RAM and ms are each stage's deployed "
           "costs (float stages as their int8 conversion); the model file and its measured arena alone are in "
           "report.json (`stages[].flash_bytes`, `arena_bytes`)." if c else ""),
        "Accuracy is measured on the held-out split: float stages in PyTorch, the int8 stages in the real TFLM "
        "interpreter (what the microcontroller runs), on every held-out sample. The arena is the smallest with which "
        "TFLM allocates and invokes the model (found by bisection). MACs of the int8 stage are counted on the TFLite "
        "graph itself.",
    ]
    tflm = int8.details.get("tflm", {})
    if "agreement_with_litert" in tflm:
        text = (f"LiteRT cross-check on the same {tflm['samples']} samples: its reference kernels (TFLM's) predict "
                f"the same class as TFLM on {_pct(tflm['agreement_with_litert'])} of them")
        if "outputs_identical_to_litert" in tflm:
            text += f" (identical outputs on {_pct(tflm['outputs_identical_to_litert'])})"
        if "agreement_with_litert_optimized" in tflm:
            text += (f"; its optimized kernels, which round differently, on "
                     f"{_pct(tflm['agreement_with_litert_optimized'])} (accuracy "
                     f"{_pct(tflm.get('litert_optimized_score'))})")
        blocks.append(text + ".")
    return Section("stages", "Stages", blocks)


def _fidelity_section(r: Report) -> Section | None:
    int8 = r.stage("int8")
    fid = int8.details.get("fidelity")
    if not fid:
        return None
    text = (f"Float {_pct(fid['float_accuracy'])} -> int8 in TFLM {_pct(int8.accuracy)} ({fid['moved_points']:+.2f} "
            f"points). Compared on {fid['samples']} calibration samples; SQNR of the output {_db(fid['output_sqnr_db'])}.")
    if fid.get("blame"):
        b = fid["blame"]
        text += (f"\nLargest SQNR loss: {b['layer']} ({b['op']}), {_db(b['sqnr_lost_db'])} lost, "
                 f"{_db(b['sqnr_db'])} after it.")
    rows = [[e["layer"], e["op"], e.get("tensor", ""), _db(e["sqnr_db"], unit=False), _db(e["sqnr_lost_db"], unit=False),
             f"{e['cosine']:.4f}"] for e in fid["layers"]]
    return Section("fidelity", "int8 fidelity (per layer, dequantized int8 vs float)", [
        text, Table(["PyTorch layer", "int8 op", "tensor", "SQNR dB", "lost dB", "cosine"], rows, numeric_from=3)])


def _io_section(r: Report) -> Section | None:
    """The deployed model's own quantization of its input and output (a LUT model is exported anew,
    so its scales are not the plain int8 model's)."""
    stage = r.stage(r.deployed["stage"]) if r.deployed else r.stage("int8")
    io = (stage.details.get("measure") or {}).get("io")
    if io and io.get("inputs") and io.get("outputs"):
        i, o = io["inputs"][0], io["outputs"][0]
    elif r.stage("int8").details.get("io"):
        i, o = r.stage("int8").details["io"]["input"], r.stage("int8").details["io"]["output"]
    else:
        return None
    artifact = r.deployed["artifact"] if r.deployed else "model_int8.tflite"

    def quant(t: dict) -> str:
        if t.get("scale") is None:
            return "not quantized"
        return f"scale {t['scale']:.6g}, zero point {t['zero_point']}"
    return Section("io", f"Firmware I/O (`{artifact}`)", [
        f"Input {i['dtype']} {i['shape']} (NHWC) with {quant(i)}: q = round(x / scale) + zero_point; output "
        f"{o['dtype']} {o['shape']} with {quant(o)}."])


def _npu_section(r: Report) -> Section | None:
    """Ethos-U targets: Vela's compilation, its cycles per operator, and what stays on the host."""
    c = r.costs()
    if c is None or not c.npu:
        return None
    n = c.npu
    clock = n["npu_clock_hz"]
    rows = [[l["op"], l["npu_op"], l["target"], _num(l["cycles"]), f"{l['cycles'] / clock * 1e6:.2f}", _num(l["macs"]),
             l["name"]] for l in n["layers"]]
    host = ", ".join(sorted(set(n["cpu_ops"]))) or "none"
    return Section("npu", f"NPU: {n['accelerator']} (Vela, {n['system_config']}, {n['memory_mode']})", [
        f"Vela-compiled flatbuffer {n['compiled_bytes']:,} B (flash: {n['flash_bytes']:,} B of encoded weights and "
        f"command stream), SRAM {n['sram_bytes']:,} B, {n['npu_cycles']:,} NPU cycles at {clock / 1e6:g} MHz "
        f"({n['npu_cycles'] / clock * 1e3:.3f} ms); {n['npu_ops']} operators on the NPU; on the host CPU: {host}.",
        Table(["TFLite op", "NPU op", "runs on", "cycles", "us", "MACs", "tensor"], rows, numeric_from=3),
        Note(n["source"] + ": the cycles are Vela's estimate for this configuration.")])


def _cost_section(r: Report) -> Section | None:
    steps = cost_and_gain(r)
    if not steps:
        return None
    rows = [[s["stage"], f"{s['accuracy_points']:+.2f}", s["macs"], s["flash"], s["arena"], s["ms"], s["uj"]]
            for s in steps]
    return Section("cost", "What each step cost and bought (on the target)", [
        Table(["stage", "accuracy change (points)", "MACs", "firmware flash", "RAM", "predicted ms", "predicted uJ"],
              rows),
        Note("Changes against the previous measured stage, in the deployed costs (firmware flash and RAM, time and "
             "energy on the target). Float stages are costed as their int8 conversion.")])


def _fit_section(r: Report) -> Section | None:
    fit = r.fit
    if not fit:
        return None
    rows = [[f"{t['sparsity']:.0%}" + (" (chosen)" if i == fit["chosen"] else ""), f"`{t['artifact']}`",
             _pct(t["accuracy"]), _kib(t["flash_bytes"]), _kib(t["ram_bytes"]),
             "n/a" if t.get("latency_ms") is None else f"{t['latency_ms']:.2f}",
             "n/a" if t.get("energy_uj") is None else f"{t['energy_uj']:.1f}",
             "yes" if t["fits"] else "no: " + ", ".join(t["misses"])] for i, t in enumerate(fit["trials"])]
    return Section("fit", "--fit: accuracy vs deployed flash", [
        f"{fit['search']}. Limits: " + ", ".join(f"{k} {v:,.4g}" for k, v in fit["limits"].items()) + ".",
        Table(["MACs removed", "deployed", "accuracy (TFLM)", "firmware flash", "RAM", "predicted ms", "predicted uJ",
               "fits"],
              rows)])


def _deployed_section(r: Report) -> Section | None:
    dep = r.deployed
    if not dep:
        return None
    sharing = dep.get("weight_sharing") or {}
    lines = [f"On the device: `{dep['artifact']}`, {_num(dep['flash_bytes'])} B flash, {_num(dep['arena_bytes'])} B "
             f"arena, {_pct(dep['accuracy'])} held-out accuracy in TFLM: {-dep['accuracy_drop_points']:+.2f} points "
             f"against the original model, {'within' if dep['within_accuracy_budget'] else 'OVER'} the budget of "
             f"{dep['max_accuracy_drop_points']:g} points of loss (`--max-accuracy-drop`)."]
    pruned = next((s for s in r.stages if s.name == "pruned"), None)
    backoff = pruned.details.get("backoff") if pruned is not None else None
    if backoff and len(backoff["tried"]) > 1:
        lines.append(f"Structured pruning backed off from {backoff['asked']:.0%} to {backoff['used']:.0%} of the MACs "
                     "to stay within the budget: " + "; ".join(
                         f"{t['sparsity']:.0%} -> {_pct(t['finetuned_accuracy'])}" for t in backoff["tried"]) + ".")
    if sharing:
        lines.append(f"Weight sharing (LUT-compressed int8 for TFLM): {sharing.get('reason', '')}.")
    blocks = ["\n".join(lines)]
    if sharing.get("trials"):
        blocks.append(Table(["LUT bits", "float accuracy", "int8 accuracy (TFLM)", "flash", "arena", "verdict"], [
            [str(t["bits"]), _pct(t["float_accuracy"]), _pct(t["int8_accuracy"]), _num(t["flash_bytes"]),
             _num(t["arena_bytes"]), t["verdict"]] for t in sharing["trials"]]))
    return Section("deployed", "Deployed model and accuracy budget", blocks)


def _archive_section(r: Report) -> Section | None:
    c = r.compression
    if not c:
        return None
    ratios = c["sizes"]["ratios"]
    rows = [[str(row.get("name", row.get("layer", "total"))), str(row.get("weights", "")),
             f"{row.get('kept_pct', 0):.1f} %", str(row.get("clusters", "")),
             f"{row.get('index_bits_huffman', float('nan')):.2f}", f"{row.get('index_entropy', float('nan')):.2f}",
             f"{row.get('gap_bits_huffman', float('nan')):.2f}", str(row.get("bytes", ""))] for row in c["table"]]
    return Section("archive", "Deep Compression archive (`model.tpz`, storage/OTA; not what the device runs)", [
        f"Dense fp32 {c['sizes']['dense_bytes']:,} B -> archive {c['archive_bytes']:,} B. Compression vs fp32: "
        f"pruning {ratios['P']:.1f}x, + quantization {ratios['P+Q']:.1f}x, + Huffman {ratios['P+Q+H']:.1f}x "
        "(the paper's P / P+Q / P+Q+H). `tinyprune unpack model.tpz --out DIR` rebuilds the exact weights.",
        Table(["layer", "weights", "kept", "clusters", "index bits (Huffman)", "entropy bound", "gap bits (Huffman)",
               "bytes"], rows)])


def _lut_section(r: Report) -> Section | None:
    stage = next((s for s in r.stages if s.name == "int8_lut"), None)
    if stage is None:
        return None
    lut, check = stage.details["lut"], stage.details["tflm_check"]
    rows = [[t.get("module") or "n/a", t["name"], ", ".join(t["ops"]), str(t["shape"]), str(t["distinct_max"]),
             str(t["bits"]), "yes" if t["compressed"] else "no", t["reason"] or ""] for t in lut["tensors"]]
    return Section("lut", "Deployable weight-shared model (`model_int8_lut.tflite`, TFLM DECODE/LUT)", [
        f"Flash {lut['flash_before']:,} -> {lut['flash_after']:,} B; arena {check['arena_before']:,} -> "
        f"{check['arena_after']:,} B (decoded weights live in the arena). Outputs bit-exact with the int8 model in "
        f"TFLM on {check['samples']} held-out samples: {'yes' if check['bit_exact'] else 'NO'}.",
        Table(["PyTorch module", "tensor", "ops", "shape", "values/channel", "bits", "compressed", "why not"], rows,
              numeric_from=4)])


def _plane_section(r: Report) -> Section | None:
    tuned = next((s for s in r.stages if s.name == "finetuned"), None)
    plane = tuned.details.get("plane") if tuned is not None else None
    if not plane:
        return None
    rows = [[name, str(v["dim"]), m, f"{d['ixt_first']:.2f} -> {d['ixt_last']:.2f}",
             f"{d['ity_first']:.2f} -> {d['ity_last']:.2f}"]
            for name, v in plane["layers"].items() for m, d in v.items() if m != "dim"]
    return Section("plane", "Information plane (fine-tuning of the pruned model)", [
        f"I(X;T) and I(T;Y) in nats per layer, epoch 0 -> {plane['epochs']}, on {plane['samples']} training samples "
        f"(bounds: ln N = {plane['ln_samples']:.2f}, H(Y) = {plane['label_entropy']:.2f}); all epochs in "
        f"`{plane['json']}`. A value at ln N and H(Y) means the estimator tells every sample apart (usual for layers "
        "of more than a few units), not that nothing changed.",
        Image("information plane", plane["png"]),
        Table(["layer", "dim", "method", "I(X;T)", "I(T;Y)"], rows, numeric_from=3)])


def sections(report: Report) -> list[Section]:
    """The report's sections, in order: what report.md and report.html both show."""
    r, t = report, report.target
    out = []
    top = headline(r)
    if top:
        out.append(Section("headline", "", ["**" + top[0] + "**", *(["\n".join(top[1:])] if top[1:] else [])]))
    out.append(Section("intro", "", [
        f"Target **{t['name']}** ({t['reference_board']}): {_kib(t['flash_bytes'])} flash, {_kib(t['ram_bytes'])} "
        f"RAM, {t['clock_hz'] / 1e6:g} MHz.\nModel format: {r.model['format']}; input {r.model['input_shape']} "
        f"(PyTorch layout), {r.model['classes']} classes. Data: {r.data['source']} ({r.data['train']} train / "
        f"{r.data['eval']} held-out / {r.data['calibration']} calibration)."]))
    views = measured_stages(r)
    out += [_fit_section(r), _stages_section(r), _fidelity_section(r), _io_section(r), _npu_section(r),
            _cost_section(r),
            predicted_section(views, t["name"]), host_section(views, t["name"]), _deployed_section(r),
            _archive_section(r), _lut_section(r), _plane_section(r),
            layers_section(*views[-1], t["name"]) if views else None]
    if r.layers:
        out.append(Section("channels", "Channels per layer (structured pruning)", [Table(
            ["layer", "channels before", "channels after"],
            [[l["name"], str(l["channels_before"]), str(l["channels_after"])] for l in r.layers])]))
    out.append(Section("artifacts", "Artifacts", [Bullets([f"`{a}`" for a in r.artifacts])]))
    return [s for s in out if s is not None]


def to_markdown(report: Report) -> str:
    return document.to_markdown(f"tinyprune report: {report.model['path']}", sections(report))


def _delta(now, before, fmt) -> str:
    if now is None:
        return "n/a"
    if before is None:
        return fmt(now)
    return f"{fmt(now)} ({'+' if now >= before else '-'}{fmt(abs(now - before))})"


def cost_and_gain(report: Report) -> list[dict]:
    """Per measured stage: the accuracy it cost and the MACs, firmware flash, RAM, ms and uJ it bought."""
    rows, prev = [], None
    for s in report.stages:
        m = s.details.get("measure")
        if not m or s.accuracy is None:
            continue
        c = deployed_of(m)
        cur = {"macs": s.macs, "flash": c.flash_bytes if c else None, "arena": c.ram_bytes if c else None,
               "ms": c.ms.value if c else None, "uj": c.energy_uj.value if c else None, "accuracy": s.accuracy}
        p = prev or {}
        rows.append({"stage": s.name, "accuracy_points": (s.accuracy - p["accuracy"]) * 100 if prev else 0.0,
                     "macs": _delta(cur["macs"], p.get("macs"), lambda v: f"{v:,.0f}"),
                     "flash": _delta(cur["flash"], p.get("flash"), lambda v: f"{v / 1024:.1f} KiB"),
                     "arena": _delta(cur["arena"], p.get("arena"), lambda v: f"{v / 1024:.1f} KiB"),
                     "ms": _delta(cur["ms"], p.get("ms"), lambda v: f"{v:.2f}"),
                     "uj": _delta(cur["uj"], p.get("uj"), lambda v: f"{v:.2f}")})
        prev = cur
    return rows
