"""The pipeline's device side: int8 export, weight sharing that pays on the device, the archive.

* ``export_stage``: the fine-tuned float model -> ONNX -> full-int8 TFLite, verified in TFLM
  (the accuracy of record) with LiteRT as a cross-check and a per-layer fidelity table;
* ``share_stage``: Deep Compression's trained quantization where the deployed model gains
  (``tinyprune.deepcompress.deploy``): LUT-compressed int8 for TFLM, within the accuracy budget;
* ``archive_stage`` (``--archive``): the paper's whole pipeline (weight pruning, weight sharing,
  Huffman) into ``model.tpz``, a storage/OTA product with its own bytes and accuracy.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass


from tinyprune.config import CompressConfig
from tinyprune.export.firmware import firmware_files
from tinyprune.errors import ExportError, UnsupportedOp
from tinyprune.report import StageRecord
from tinyprune.state import RunState, measure

# float -> int8 accuracy change (points) beyond which the console names the layer that lost most SQNR
FIDELITY_TOLERANCE_POINTS = 0.5


@dataclass
class Converted:
    int8: bytes
    source: object  # the float model the int8 graph was built from (after the float-exact rewrites)
    onnx_diff: float
    rewritten: list
    equalized: list


def to_int8(model, state: RunState, cfg: CompressConfig, workdir, keep_weight_values: bool = False) -> Converted:
    """ONNX then int8 TFLite of ``model`` with the float-exact rewrites; ``model.onnx`` in ``workdir``.

    ``keep_weight_values``: leave every Conv/Linear weight's values per output channel as they
    are (no input-channel scaling), so that a weight-shared model still LUT-compresses."""
    import torch

    from tinyprune.export import rewrite, tflite
    from tinyprune.export.onnx import export_onnx

    source, equalized, rewritten = model, [], []
    if cfg.export.equalize_concats:
        source, equalized = rewrite.equalize_concats(model, torch.from_numpy(state.splits.x_calib),
                                                     absorb_in_convs=not keep_weight_values)
    if cfg.export.bn_as_depthwise:
        source, rewritten = rewrite.for_int8(source, state.example)
    onnx_diff = export_onnx(source, state.splits.x_train[:1], workdir / "model.onnx", cfg.export.opset)
    int8 = tflite.to_int8_tflite(workdir / "model.onnx", state.splits.x_calib, workdir / "_work")
    shutil.rmtree(workdir / "_work")
    return Converted(int8, source, onnx_diff, rewritten, equalized)


def _last_float_accuracy(state: RunState) -> float:
    return next(r.accuracy for r in reversed(state.records) if r.accuracy is not None)


def export_stage(state: RunState, cfg: CompressConfig):
    import torch

    from tinyprune.export import micro, tflite, verify
    from tinyprune.export.fidelity import compare_layers, name_layers
    from tinyprune.measure.core import unsupported_tflite_ops
    from tinyprune.measure.macs import count_tflite

    t = time.perf_counter()
    tmp, splits, target = state.tmp, state.splits, state.target
    tuned = state.model.eval()
    state.finetuned = tuned
    try:
        program = torch.export.export(tuned, (state.example,))
        torch.export.save(program, str(tmp / "model_pruned.pt2"))
    except Exception as exc:
        raise ExportError(f"saving the pruned model with torch.export failed: {str(exc).splitlines()[0][:200]}") from None
    state.declare("model_pruned.pt2")
    state.progress(0, 3, "int8 conversion: ONNX, onnx2tf")
    conv = to_int8(tuned, state, cfg, tmp)
    state.declare("model.onnx")
    state.progress(1, 3, "TFLM check: arena, per-layer fidelity, held-out accuracy")
    int8_bytes = conv.int8
    io = tflite.io_details(int8_bytes)
    missing = unsupported_tflite_ops(int8_bytes, target)
    if missing:
        raise UnsupportedOp(f"the int8 model uses op(s) that {target.name}'s TFLM runtime lacks: {', '.join(missing)}")
    arena = micro.smallest_arena(int8_bytes, tflite.device_input(int8_bytes, splits.x_eval[:1]))
    layers = compare_layers(conv.source, int8_bytes, splits.x_calib)
    device, tflm_out = verify.device_accuracy(int8_bytes, splits.x_eval, splits.y_eval, arena, splits.task,
                                              splits.anomaly_eval)
    if verify.collapsed(tflm_out):
        where = next((e for e in layers["layers"] if e["constant_over_samples"]), layers["blame"])
        raise ExportError("the int8 model gives the same output for every input"
                          + (f"; its activations stop depending on the input at {where['layer']} ({where['op']})"
                             if where else "") + "; check the calibration data and the layer's value range")
    verify.check_agreement(device)
    float_acc = _last_float_accuracy(state)
    moved = (device["score"] - float_acc) * 100
    fidelity = {"float_accuracy": float_acc, "moved_points": moved, "batchnorms_as_depthwise": conv.rewritten,
                "concat_inputs_equalized": conv.equalized,
                "moved_beyond_tolerance": abs(moved) > FIDELITY_TOLERANCE_POINTS, **layers}
    state.write("model_int8.tflite", int8_bytes)
    counted = count_tflite(int8_bytes)
    for name, text in firmware_files(int8_bytes, arena, io).items():
        state.write(name, text)
    state.int8 = {"bytes": int8_bytes, "y": splits.y_eval, "tflm_out": tflm_out, "arena": arena,
                  "accuracy": device["score"], "fidelity_layers": layers["layers"]}
    state.progress(2, 3, "measuring the int8 model")
    measured = name_layers(measure(int8_bytes, state, arena_bytes=arena, onnx_model=tmp / "model.onnx"), int8_bytes,
                           layers["layers"])
    state.progress(3, 3, "measuring the int8 model")
    if target.npu:  # what the firmware holds on an Ethos-U part: the model as Vela compiled it
        from tinyprune.measure.npu import compile_model

        vela = compile_model(int8_bytes, target)
        state.write("model_vela.tflite", vela.model)
        for name, text in firmware_files(vela.model, vela.sram_bytes, io, "model_vela").items():
            state.write(name, text)
    return state, StageRecord(
        "int8", counted["params"], counted["macs"], device["score"], time.perf_counter() - t,
        flash_bytes=len(int8_bytes), arena_bytes=arena, nonzero_params=counted.get("nonzero_params"),
        quality={k: v for k, v in verify.task_metrics(int8_bytes, tflm_out, splits.y_eval, splits.task,
                                                      splits.anomaly_eval).items() if k != "score"},
        details={
            "onnx_max_abs_diff": conv.onnx_diff,
            "io": io,
            "tflm": device,
            "fidelity": fidelity,
            "ops": counted["layers"],
            "measure": measured,
        },
    )


def accuracy_floor(state: RunState, cfg: CompressConfig) -> float:
    """The lowest held-out accuracy the budget allows: the original model's minus --max-accuracy-drop."""
    return state.records[0].accuracy - cfg.max_accuracy_drop / 100


def share_stage(state: RunState, cfg: CompressConfig):
    """Weight sharing where it pays on the device: LUT-compressed int8 (TFLM DECODE), bits searched."""
    if cfg.sharing is None:
        return state, []
    import tempfile
    from pathlib import Path

    from tinyprune.deepcompress.deploy import flash_for_ram, search
    from tinyprune.export import micro, tflite, verify
    from tinyprune.export.fidelity import name_layers, torch_modules
    from tinyprune.export.lut import decompression_memory, verify_bit_exact
    from tinyprune.measure.deployed import decode_code_bytes, firmware_flash, of, ram_outside_arena
    from tinyprune.measure.graph import read_graph
    from tinyprune.measure.macs import count_tflite

    t = time.perf_counter()
    splits, target, y = state.splits, state.target, state.int8["y"]
    if target.npu:  # Vela encodes the weights itself; a TFLM DECODE op would only run on the host CPU
        from tinyprune.deepcompress.deploy import Plan

        state.sharing = Plan([], [], None, f"not on {target.name}: Vela compresses the NPU's weights itself")
        return state, []

    def export(shared) -> bytes:
        with tempfile.TemporaryDirectory(prefix="tinyprune-share-", dir=state.tmp) as work:
            return to_int8(shared, state, cfg, Path(work), keep_weight_values=True).int8

    def evaluate(int8: bytes, lut: bytes):
        check, lut_out = verify_bit_exact(int8, lut, tflite.device_input(int8, splits.x_eval))
        found = verify.task_metrics(lut, lut_out, y, splits.task, splits.anomaly_eval)
        return check, lut_out, found["score"], check["arena_after"]

    def split_layout(lut: bytes, arena: int) -> dict | None:
        """The decoded weights in a separate RAM region instead of the arena (TFLM's alternate
        decompression memory), measured and checked against the outputs without it."""
        x_dev = tflite.device_input(lut, splits.x_eval[:64])
        return decompression_memory(lut, x_dev, micro.tflm_outputs(lut, x_dev, arena))

    int8_ops = [op.op for op in read_graph(state.int8["bytes"]).ops]
    plan = search(state.finetuned, cfg.sharing, x_train=splits.x_train, y_train=splits.y_train,
                  x_eval=splits.x_eval, y_eval=splits.y_eval, accuracy_floor=accuracy_floor(state, cfg),
                  task=splits.task, anomaly=splits.anomaly_eval,
                  base_flash=firmware_flash(state.int8["bytes"], target),
                  flash_of=lambda model: firmware_flash(model, target),
                  decode_code_bytes=decode_code_bytes(int8_ops, target),
                  ram_limit=target.ram_bytes - ram_outside_arena(),
                  seed=cfg.seed, export=export, evaluate=evaluate, progress=state.progress,
                  decompression_limit=target.decompression_ram_bytes, split=split_layout)
    state.sharing = plan
    if plan.chosen is None:
        return state, []
    lut, check = plan.lut, plan.check
    # the search measured the split when the target needs it; else it is measured for the header
    split = plan.split or split_layout(lut.model, check["arena_after"])
    arena = check["arena_after"]
    if split is not None:
        # the header and the report offer the split layout only where it saves RAM (firmware.saves_ram)
        split["required"], split["single_arena_bytes"] = plan.split is not None, arena
        if split["required"]:  # the decoded weights are in the target's separate region: the arena is without them
            arena = split["arena_bytes"]
    fidelity = state.int8["fidelity_layers"]
    measured = name_layers(measure(lut.model, state, arena_bytes=arena,
                                   decompression=split if split and split["required"] else None),
                           lut.model, fidelity)
    plain_costs = of(next(r for r in state.records if r.name == "int8").details.get("measure"))
    lut_costs = of(measured)
    if plain_costs is not None and lut_costs is not None:
        take, trade = flash_for_ram(cfg.prefer, target, plain_costs, lut_costs)
        if not take:
            plan.chosen, plan.reason = None, trade
            return state, []
        if trade:
            plan.reason += f"; {trade}"
    state.write("model_int8_lut.tflite", lut.model)
    for name, text in firmware_files(lut.model, arena, tflite.io_details(lut.model), "model_lut",
                                     decompression=split).items():
        state.write(name, text)
    counted = count_tflite(plan.int8)  # the DECODE graph computes the same layers
    lut_details = lut.to_dict()
    _, weight_layers = torch_modules(plan.int8, fidelity)  # the graph the LUT tensor indices refer to
    for entry in lut_details["tensors"]:
        entry["module"] = weight_layers.get(entry["tensor"])
    return state, StageRecord(
        "int8_lut", counted["params"], counted["macs"], plan.chosen.int8_accuracy, time.perf_counter() - t,
        flash_bytes=len(lut.model), arena_bytes=arena, nonzero_params=counted.get("nonzero_params"),
        details={"sharing": plan.to_dict(), "lut": lut_details, "tflm_check": check,
                 "decompression_memory": split,
                 "bought": {"flash_bytes": len(lut.model) - len(state.int8["bytes"]),
                            "arena_bytes": arena - state.int8["arena"],
                            "accuracy_points": (plan.chosen.int8_accuracy - state.int8["accuracy"]) * 100},
                 "measure": measured,
                 "accuracy_measured_on": f"all {check['samples']} held-out samples in TFLM"},
    )


def archive_stage(state: RunState, cfg: CompressConfig):
    """Deep Compression's storage product (``--archive``): pruned, shared and Huffman-coded weights."""
    if cfg.deepcompress is None:
        return state, []
    from tinyprune.deepcompress.stage import run_deepcompress

    s = state.splits
    state.deep = run_deepcompress(state.finetuned, s.x_train, s.y_train, s.x_eval, s.y_eval, cfg.deepcompress,
                                  cfg.seed, state.progress, task=s.task, anomaly=s.anomaly_eval)
    state.write("model.tpz", state.deep.archive)
    return state, state.deep.records


def deployed(state: RunState, cfg: CompressConfig) -> dict:
    """Which artifact goes on the device, what it costs, and whether the accuracy budget held."""
    lut = next((r for r in state.records if r.name == "int8_lut"), None)
    int8 = next(r for r in state.records if r.name == "int8")
    chosen = lut or int8
    original = state.records[0].accuracy
    drop = (original - chosen.accuracy) * 100
    out = {"artifact": "model_int8_lut.tflite" if lut else "model_int8.tflite", "stage": chosen.name,
           "flash_bytes": chosen.flash_bytes, "arena_bytes": chosen.arena_bytes, "accuracy": chosen.accuracy,
           "accuracy_runtime": "tflm", "max_accuracy_drop_points": cfg.max_accuracy_drop,
           "accuracy_drop_points": drop, "within_accuracy_budget": drop <= cfg.max_accuracy_drop + 1e-9}
    costs = (chosen.details.get("measure") or {}).get("deployed") or {}
    if costs.get("npu"):  # an Ethos-U part flashes the Vela-compiled model; TFLM's accuracy is its int8 model's
        out.update(artifact="model_vela.tflite", flash_bytes=costs["model_bytes"], arena_bytes=costs["arena_bytes"],
                   accuracy_runtime="tflm (the int8 model Vela compiled; the NPU runs the same int8 graph)")
    split = chosen.details.get("decompression_memory") if lut else None
    if split and split.get("required"):  # the decoded weights in the target's separate region, not the arena
        out["decompression_bytes"] = split["alt_bytes"]
    if state.sharing is not None:
        out["weight_sharing"] = state.sharing.to_dict()
    elif cfg.sharing is None:
        out["weight_sharing"] = {"deployed": False, "reason": "off (--no-deepcompress)"}
    return out
