"""Human-readable views of a Report."""

from __future__ import annotations

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
    """Rows of the stage table: stage, params, MACs, accuracy, flash, arena, seconds."""
    return [
        [s.name, _num(s.params), _num(s.nonzero_params), _num(s.macs), _pct(s.accuracy), _kib(s.flash_bytes),
         _kib(s.arena_bytes), f"{s.seconds:.1f}"]
        for s in report.stages
    ]


HEADER = ["stage", "stored params", "nonzero", "MACs", "accuracy", "flash", "TFLM arena", "seconds"]

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
    if not split or not split.get("bit_exact"):
        return []
    return [f"With a separate RAM region for TFLM's alternate decompression memory (`kDecompressionMemorySize`): "
            f"{split['arena_bytes']:,} B arena + {split['alt_bytes']:,} B for the decoded weights, measured in TFLM "
            f"(the same outputs on {split['samples_checked']} samples)."]


def headline(report: Report) -> list[str]:
    """What a firmware engineer needs first: the file to flash, the arena to reserve, what it uses
    of the target, accuracy float -> device, predicted time and energy, and the verdict."""
    from tinyprune.export.firmware import arena_size

    dep, t = report.deployed, report.target
    if not dep:
        return []
    stage = report.stage(dep["stage"])
    runtime_flash, runtime_ram = t.get("runtime_flash_bytes", 0), t.get("runtime_ram_bytes", 0)
    flash_used = dep["flash_bytes"] + runtime_flash
    ram_used = arena_size(dep["arena_bytes"]) + runtime_ram
    m = stage.details.get("measure") or {}
    latency = m.get("latency") or {}
    pred = (latency.get("predicted") or {}).get("optimized") or {}
    runtime = latency.get("predicted_runtime")
    engine = "X-CUBE-AI 7.3-fitted rates"
    if runtime:  # the engine the file runs on, from the cost model fitted to MLPerf Tiny results
        pred = runtime
        engine = (f"{runtime['runtime']} (MLPerf Tiny fit, +-{100 * runtime['band']:.0f} %"
                  + (", extrapolated" if runtime["extrapolated"] else "") + ")")
    uj = ((m.get("energy") or {}).get("target_estimate") or {}).get("total_uj")
    if runtime and t.get("pj_per_cycle"):
        uj = runtime["cycles"] * t["pj_per_cycle"] * 1e-6  # the same cycles as the time
    fits = flash_used <= t["flash_bytes"] and ram_used <= t["ram_bytes"]
    prefix = "model_lut" if dep["stage"] == "int8_lut" else "model"
    float_acc = report.stage("original").accuracy
    metric = score_label(report.data)
    label = metric[0].upper() + metric[1:]
    return [
        f"Flash `{dep['artifact']}` (C array: `{prefix}_data.cc/.h`, ops: `{prefix}_ops.h`); reserve a "
        f"{arena_size(dep['arena_bytes']):,} B tensor arena (`kTensorArenaSize`: {dep['arena_bytes']:,} B measured "
        "in TFLM + margin).",
        f"On {t['name']}: flash {_kib(flash_used)} of {_kib(t['flash_bytes'])} ({_kib(t['flash_bytes'] - flash_used)} "
        f"free), RAM {_kib(ram_used)} of {_kib(t['ram_bytes'])} ({_kib(t['ram_bytes'] - ram_used)} free), runtime "
        f"code and RAM included ({_kib(runtime_flash)} / {_kib(runtime_ram)}).",
        f"{label} {_pct(float_acc)} (original, float) -> {_pct(dep['accuracy'])} on the device (TFLM, "
        f"{report.data['eval']} held-out samples). Predicted on {t['name']} at {t['clock_hz'] / 1e6:g} MHz for "
        f"{engine}: {pred['ms']:.2f} ms, {uj:.1f} uJ per inference."
        if pred.get("ms") is not None and uj is not None else
        f"{label} {_pct(float_acc)} (original, float) -> {_pct(dep['accuracy'])} on the device (TFLM).",
        *_quality_line(report),
        *_decompression_line(stage),
        f"Verdict: {'fits' if fits else 'DOES NOT FIT'} {t['name']}; {metric} "
        f"{'within' if dep['within_accuracy_budget'] else 'OVER'} the {dep['max_accuracy_drop_points']:g}-point budget.",
    ]


def to_markdown(report: Report) -> str:
    r = report
    orig, int8 = r.stage("original"), r.stage("int8")
    top = headline(r)
    lines = [
        f"# tinyprune report: {r.model['path']}",
        "",
        *(["**" + top[0] + "**", "", *top[1:], ""] if top else []),
        f"Target **{r.target['name']}** ({r.target['reference_board']}): "
        f"{_kib(r.target['flash_bytes'])} flash, {_kib(r.target['ram_bytes'])} RAM, {r.target['clock_hz'] / 1e6:g} MHz.",
        f"Model format: {r.model['format']}; input {r.model['input_shape']} (PyTorch layout), "
        f"{r.model['classes']} classes. Data: {r.data['source']} "
        f"({r.data['train']} train / {r.data['eval']} held-out / {r.data['calibration']} calibration).",
        "",
        "## Stages",
        "",
        "| " + " | ".join(header(r)) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(r)]
    fits = r.fits
    lines += [
        "",
        f"MACs: {_num(orig.macs)} -> {_num(int8.macs)} ({1 - int8.macs / orig.macs:.1%} removed); "
        f"params: {_num(orig.params)} -> {_num(int8.params)} ({1 - int8.params / orig.params:.1%} removed).",
        f"Fits {r.target['name']}: flash {'yes' if fits['flash'] else 'NO'} "
        f"({_kib(int8.flash_bytes)} of {_kib(r.target['flash_bytes'])}), "
        f"RAM {'yes' if fits['ram'] else 'NO'} ({_kib(int8.arena_bytes)} arena of {_kib(r.target['ram_bytes'])}). "
        "Runtime code and stack are not included.",
        "",
        "Accuracy is measured on the held-out split: float stages in PyTorch, the int8 stages in "
        "the real TFLM interpreter (what the microcontroller runs), on every held-out sample. The "
        "arena is the smallest with which TFLM allocates and invokes the model (found by "
        "bisection). MACs of the int8 stage are counted on the TFLite graph itself.",
    ]
    tflm = int8.details.get("tflm", {})
    if "agreement_with_litert" in tflm:
        lines += [
            "",
            f"LiteRT cross-check on the same {tflm['samples']} samples: its reference kernels (TFLM's) predict "
            f"the same class as TFLM on {_pct(tflm['agreement_with_litert'])} of them (identical outputs on "
            f"{_pct(tflm['outputs_identical_to_litert'])}); its optimized kernels, which round differently, on "
            f"{_pct(tflm['agreement_with_litert_optimized'])} (accuracy {_pct(tflm['litert_optimized_score'])}).",
        ]
    fid = int8.details.get("fidelity")
    if fid:
        lines += ["", "## int8 fidelity (per layer, dequantized int8 vs float)", "",
                  f"Float {_pct(fid['float_accuracy'])} -> int8 in TFLM {_pct(int8.accuracy)} "
                  f"({fid['moved_points']:+.2f} points). Compared on {fid['samples']} calibration samples; "
                  f"SQNR of the output {_db(fid['output_sqnr_db'])}."]
        if fid.get("blame"):
            b = fid["blame"]
            lines.append(f"Largest SQNR loss: {b['layer']} ({b['op']}), {_db(b['sqnr_lost_db'])} lost, "
                         f"{_db(b['sqnr_db'])} after it.")
        lines += ["", "| int8 op | PyTorch layer | SQNR dB | lost dB | cosine |", "|---|---|---|---|---|"]
        for e in fid["layers"]:
            lines.append(f"| {e['op']} | {e['layer']} | {_db(e['sqnr_db'], unit=False)} | "
                         f"{_db(e['sqnr_lost_db'], unit=False)} | {e['cosine']:.4f} |")
    io = int8.details.get("io")
    if io:
        i, o = io["input"], io["output"]
        lines += [
            "",
            f"Firmware I/O: input {i['dtype']} {i['shape']} (NHWC) with scale {i['scale']:.6g}, zero point "
            f"{i['zero_point']}: q = round(x / scale) + zero_point; output {o['dtype']} {o['shape']} "
            f"with scale {o['scale']:.6g}, zero point {o['zero_point']}.",
        ]
    steps = cost_and_gain(r)
    if steps:
        lines += ["", "## What each step cost and bought (on the target)", "",
                  "| stage | accuracy change (points) | MACs | flash | arena | predicted ms | predicted uJ |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {s['stage']} | {s['accuracy_points']:+.2f} | {s['macs']} | {s['flash']} | {s['arena']} | "
                  f"{s['ms']} | {s['uj']} |" for s in steps]
        lines.append("Changes against the previous measured stage. Float stages: flash and arena are their "
                     "float32 weights and peak activations (what an fp32 build would need); latency and energy "
                     "are predicted with the target's cost model (optimized kernels).")
    dep = r.deployed
    if dep:
        sharing = dep.get("weight_sharing") or {}
        lines += ["", "## Deployed model and accuracy budget", "",
                  f"On the device: `{dep['artifact']}`, {_num(dep['flash_bytes'])} B flash, {_num(dep['arena_bytes'])} B "
                  f"arena, {_pct(dep['accuracy'])} held-out accuracy in TFLM: {-dep['accuracy_drop_points']:+.2f} points "
                  f"against the original model, {'within' if dep['within_accuracy_budget'] else 'OVER'} the budget of "
                  f"{dep['max_accuracy_drop_points']:g} points of loss (`--max-accuracy-drop`)."]
        pruned = next((s for s in r.stages if s.name == "pruned"), None)
        backoff = pruned.details.get("backoff") if pruned is not None else None
        if backoff and len(backoff["tried"]) > 1:
            lines.append(f"Structured pruning backed off from {backoff['asked']:.0%} to {backoff['used']:.0%} of the "
                         "MACs to stay within the budget: " + "; ".join(
                             f"{t['sparsity']:.0%} -> {_pct(t['finetuned_accuracy'])}" for t in backoff["tried"]) + ".")
        if sharing:
            lines.append(f"Weight sharing (LUT-compressed int8 for TFLM): {sharing.get('reason', '')}.")
            if sharing.get("trials"):
                lines += ["", "| LUT bits | float accuracy | int8 accuracy (TFLM) | flash | arena | verdict |",
                          "|---|---|---|---|---|---|"]
                lines += [f"| {t['bits']} | {_pct(t['float_accuracy'])} | {_pct(t['int8_accuracy'])} | "
                          f"{_num(t['flash_bytes'])} | {_num(t['arena_bytes'])} | {t['verdict']} |" for t in sharing["trials"]]
    if r.compression:
        c = r.compression
        ratios = c["sizes"]["ratios"]
        lines += [
            "",
            "## Deep Compression archive (`model.tpz`, storage/OTA; not what the device runs)",
            "",
            f"Dense fp32 {c['sizes']['dense_bytes']:,} B -> archive {c['archive_bytes']:,} B. Compression vs fp32: "
            f"pruning {ratios['P']:.1f}x, + quantization {ratios['P+Q']:.1f}x, + Huffman {ratios['P+Q+H']:.1f}x "
            "(the paper's P / P+Q / P+Q+H). `tinyprune unpack model.tpz --out DIR` rebuilds the exact weights.",
            "",
            "| layer | weights | kept | clusters | index bits (Huffman) | entropy bound | gap bits (Huffman) | bytes |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in c["table"]:
            lines.append(
                f"| {row.get('name', row.get('layer', 'total'))} | {row.get('weights', '')} | {row.get('kept_pct', 0):.1f} % | "
                f"{row.get('clusters', '')} | {row.get('index_bits_huffman', float('nan')):.2f} | "
                f"{row.get('index_entropy', float('nan')):.2f} | {row.get('gap_bits_huffman', float('nan')):.2f} | "
                f"{row.get('bytes', '')} |")
    lut_stage = next((s for s in r.stages if s.name == "int8_lut"), None)
    if lut_stage is not None:
        lut = lut_stage.details["lut"]
        check = lut_stage.details["tflm_check"]
        lines += [
            "",
            "## Deployable weight-shared model (`model_int8_lut.tflite`, TFLM DECODE/LUT)",
            "",
            f"Flash {lut['flash_before']:,} -> {lut['flash_after']:,} B; arena {check['arena_before']:,} -> "
            f"{check['arena_after']:,} B (decoded weights live in the arena). Outputs bit-exact with the int8 "
            f"model in TFLM on {check['samples']} held-out samples: {'yes' if check['bit_exact'] else 'NO'}.",
            "",
            "| tensor | ops | shape | values/channel | bits | compressed | why not |",
            "|---|---|---|---|---|---|---|",
        ]
        for t in lut["tensors"]:
            lines.append(f"| {t['name']} | {', '.join(t['ops'])} | {t['shape']} | {t['distinct_max']} | {t['bits']} | "
                         f"{'yes' if t['compressed'] else 'no'} | {t['reason'] or ''} |")
    tuned = next((s for s in r.stages if s.name == "finetuned"), None)
    plane = tuned.details.get("plane") if tuned is not None else None
    if plane:
        lines += ["", "## Information plane (fine-tuning of the pruned model)", "",
                  f"I(X;T) and I(T;Y) in nats per layer, epoch 0 -> {plane['epochs']}, on {plane['samples']} training "
                  f"samples (bounds: ln N = {plane['ln_samples']:.2f}, H(Y) = {plane['label_entropy']:.2f}); "
                  f"all epochs in `{plane['json']}`. A value at ln N and H(Y) means the estimator tells "
                  "every sample apart (usual for layers of more than a few units), not that nothing changed.", "", f"![information plane]({plane['png']})", "",
                  "| layer | dim | method | I(X;T) | I(T;Y) |", "|---|---|---|---|---|"]
        for name, v in plane["layers"].items():
            for m, d in v.items():
                if m != "dim":
                    lines.append(f"| {name} | {v['dim']} | {m} | {d['ixt_first']:.2f} -> {d['ixt_last']:.2f} | "
                                 f"{d['ity_first']:.2f} -> {d['ity_last']:.2f} |")
    if r.layers:
        lines += ["", "## Layers", "", "| layer | channels before | channels after |", "|---|---|---|"]
        lines += [f"| {l['name']} | {l['channels_before']} | {l['channels_after']} |" for l in r.layers]
    lines += ["", "## Artifacts", ""] + [f"- `{a}`" for a in r.artifacts] + [""]
    return "\n".join(lines)


def _delta(now, before, fmt) -> str:
    if now is None:
        return "n/a"
    if before is None:
        return fmt(now)
    return f"{fmt(now)} ({'+' if now >= before else '-'}{fmt(abs(now - before))})"


def cost_and_gain(report: Report) -> list[dict]:
    """Per measured stage: the accuracy it cost and the MACs, flash, arena, ms and uJ it bought."""
    rows, prev = [], None
    for s in report.stages:
        m = s.details.get("measure")
        if not m or s.accuracy is None:
            continue
        t = m["totals"]
        pred = (m.get("latency") or {}).get("predicted", {}).get("optimized") or {}
        uj = ((m.get("energy") or {}).get("target_estimate") or {}).get("total_uj")
        cur = {"macs": s.macs, "flash": s.flash_bytes if s.flash_bytes is not None else t.get("flash_bytes"),
               "arena": s.arena_bytes if s.arena_bytes is not None else t.get("arena_bytes"),
               "ms": pred.get("ms"), "uj": uj, "accuracy": s.accuracy}
        p = prev or {}
        rows.append({"stage": s.name, "accuracy_points": (s.accuracy - p["accuracy"]) * 100 if prev else 0.0,
                     "macs": _delta(cur["macs"], p.get("macs"), lambda v: f"{v:,.0f}"),
                     "flash": _delta(cur["flash"], p.get("flash"), lambda v: f"{v / 1024:.1f} KiB"),
                     "arena": _delta(cur["arena"], p.get("arena"), lambda v: f"{v / 1024:.1f} KiB"),
                     "ms": _delta(cur["ms"], p.get("ms"), lambda v: f"{v:.2f}"),
                     "uj": _delta(cur["uj"], p.get("uj"), lambda v: f"{v:.2f}")})
        prev = cur
    return rows
