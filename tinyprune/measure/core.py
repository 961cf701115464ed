"""``measure``: per-layer and total flash, RAM, MACs, energy and latency of one model.

Entry points (all return a JSON-ready dict, documented by ``tinyprune/report/schema.json``,
``$defs/measurement``; they print nothing):

* ``measure_file(path, target, ...)`` - any ``.tflite``, ``.onnx`` or PyTorch file;
* ``measure_tflite(model_bytes, target, ...)``, ``measure_onnx(...)``, ``measure_torch(...)``;
* ``measure_stage(model, target, ...)`` - what ``compress`` calls for each stage.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tinyprune.errors import ConfigError, DataError, TinypruneError, UnsupportedModel, UnsupportedOp
from tinyprune.load import check_model_file
from tinyprune.measure import energy as energy_mod
from tinyprune.measure import latency as lat
from tinyprune.measure import memory as mem

MEASURE_SCHEMA = "tinyprune.measure/1"
TFLITE_SECONDS = 120  # parsing, arena bisection and timing of a .tflite file; past it, exit 2


def _target(target):
    from tinyprune import targets

    return targets.load(target) if isinstance(target, str) else target


def _error_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def unsupported_ops(op_names, target) -> list[str]:
    """Ops of the model that the target's TFLM build lacks (sorted, each once)."""
    return sorted({op for op in op_names if not target.supports(op)})


def unsupported_tflite_ops(model_bytes: bytes, target) -> list[str]:
    """Ops of a TFLite flatbuffer (all subgraphs) that the target's TFLM build lacks; for
    ``compress`` to fail early with UnsupportedOp, before TFLM is asked to run the model."""
    from tinyprune.measure.graph import read_graph

    g = read_graph(model_bytes)
    return unsupported_ops([op.op for op in g.ops] + g.other_subgraph_ops, _target(target))


def _assemble(fmt: str, layers: list[dict], target, *, flash_bytes: int, flash_source: str,
              peak_bytes: int, arena_bytes: int | None, arena_note: str | None, timing: dict,
              unsupported: list[str] | None, extra: dict, decompression: dict | None = None) -> dict:
    from tinyprune.measure import deployed

    working_set = arena_bytes if arena_bytes else peak_bytes
    energy = energy_mod.summary(layers, working_set)
    for i, layer in enumerate(layers):
        layer["energy_pj"] = energy["per_layer_pj"][i]
    ram = arena_bytes if arena_bytes is not None else peak_bytes
    ram_source = ("smallest TFLM arena (bisection, real interpreter)" if arena_bytes is not None else
                  f"planned peak of live activations (estimate{'; ' + arena_note if arena_note else ''})")
    if decompression:
        ram_source = (f"smallest TFLM arena with the decoded weights in the target's separate "
                      f"{target.decompression_ram_bytes:,} B decompression region (real interpreter)")
    totals = {
        "params": sum(l["params"] for l in layers),
        "macs": sum(l["macs"] for l in layers),
        "flops": sum(l["flops"] for l in layers),
        "elements": sum(l["elements"] for l in layers),
        "weight_bytes": sum(l["weight_bytes"] for l in layers),
        "activation_bytes": sum(l["activation_bytes"] for l in layers),
        "peak_activation_bytes": int(peak_bytes),
        "flash_bytes": int(flash_bytes),
        "flash_source": flash_source,
        "arena_bytes": arena_bytes,
        "ram_bytes": int(ram),
        "ram_source": ram_source,
        # a LUT model's decoded weights in the target's separate region (None: in the arena)
        "decompression_bytes": decompression["alt_bytes"] if decompression else None,
    }
    if fmt == "tflite":
        from tinyprune.export.firmware import arena_size

        # the firmware reserves the generated header's kTensorArenaSize: the measured arena + margin
        reserved = arena_size(ram) if arena_bytes is not None else ram
        source = (f"kTensorArenaSize: {ram_source}, {ram:,} B, + margin" if arena_bytes is not None else ram_source)
        if getattr(target, "npu", "") and not unsupported:
            costs = deployed.compute_npu(extra["model_bytes"], target)
        else:
            costs = deployed.compute(layers, target, channels_last=True, model_bytes=flash_bytes, arena_bytes=reserved,
                                     arena_source=source, basis="int8 TFLite model",
                                     decompression_bytes=totals["decompression_bytes"])
    else:  # what its int8 conversion would cost: one byte per parameter and per activation element
        width = max(1, round(np.mean([energy_mod._bytes_per_element(l["dtype"]) for l in layers
                                      if l["activation_bytes"]] or [4])))
        costs = deployed.compute(layers, target, channels_last=False, model_bytes=totals["params"],
                                 arena_bytes=int(peak_bytes) // width, basis=f"{fmt} model as its int8 conversion "
                                 "(estimate: 1 byte per parameter and per activation element)",
                                 arena_source="planned peak of live activations, 1 byte per element (estimate)")
    precisions = sorted({energy_mod.precision_of(l["dtype"]) for l in layers if l["macs"]})
    return {
        "schema": MEASURE_SCHEMA,
        "format": fmt,
        "precision": precisions[0] if len(precisions) == 1 else ("mixed" if precisions else "none"),
        "target": {"name": target.name, "clock_hz": target.clock_hz, "flash_bytes": target.flash_bytes,
                   "ram_bytes": target.ram_bytes, "kernels": target.kernels, "pj_per_cycle": target.pj_per_cycle},
        "layers": layers,
        "totals": totals,
        "deployed": costs.to_dict(),
        "unsupported_ops": unsupported,
        "energy": {k: v for k, v in energy.items() if k != "per_layer_pj"},
        "latency": {"measured": timing},
        **{k: v for k, v in extra.items() if k != "model_bytes"},
    }


def _timed(name: str, fn, timing: dict) -> None:
    try:
        timing[name] = fn()
    except TinypruneError as exc:
        timing[name] = {"error": _error_line(exc)}
    except Exception as exc:  # a runtime that cannot run this model: say so, keep the rest
        timing[name] = {"error": f"{type(exc).__name__}: {_error_line(exc)}"}


def measure_tflite(model_bytes: bytes, target, *, arena_bytes: int | None = None, find_arena: bool = True,
                   timing: bool = True, repeats: int = 50, onnx_model=None, decompression: dict | None = None) -> dict:
    """Measure a TFLite flatbuffer: the graph the device runs.

    ``arena_bytes``: an arena already measured (skips the bisection); ``find_arena=False`` skips
    it altogether (RAM is then the planned peak). ``onnx_model``: a float ONNX file/bytes of the
    same model to time in ONNX Runtime beside LiteRT and TFLM. On a target with a separate
    decompression region (``decompression_ram_bytes``) a LUT model's decoded weights go there when
    they fit: the arena is then measured without them (``decompression``: that layout, already
    measured, with ``arena_bytes`` its arena).
    """
    from tinyprune.measure.graph import read_graph
    from tinyprune.measure.macs import tflite_layers

    target = _target(target)
    graph = read_graph(model_bytes)
    layers = tflite_layers(model_bytes, graph)
    unsupported = unsupported_ops([op.op for op in graph.ops] + graph.other_subgraph_ops, target)
    peak = mem.tflite_peak_activations(graph)
    note = None
    if unsupported:
        arena_bytes, note = None, f"TFLM cannot run {', '.join(unsupported)}"
    elif arena_bytes is None and find_arena:
        from tinyprune.export.micro import smallest_arena

        info = graph.tensors[graph.inputs[0]]
        sample = lat.random_input(info.shape, _np_dtype(info.dtype))
        arena_bytes = smallest_arena(model_bytes, sample)
        decompression = _separate_region(model_bytes, graph, sample, arena_bytes, target)
        if decompression:  # timing below runs with everything in one arena, as measured first
            decompression = {**decompression, "single_arena_bytes": arena_bytes}
            arena_bytes = decompression["arena_bytes"]
    elif arena_bytes is None:
        note = "arena not measured"
    times: dict = {}
    if timing:
        _timed("litert", lambda: lat.time_litert(model_bytes, repeats), times)
        if not unsupported:
            arena = (decompression or {}).get("single_arena_bytes") or arena_bytes or max(4 * peak, 64 * 1024)
            _timed("tflm", lambda: lat.time_tflm(model_bytes, arena, max(5, repeats // 2)), times)
        if onnx_model is not None:
            _timed("onnxruntime", lambda: lat.time_onnxruntime(onnx_model, repeats), times)
    io = {"inputs": [_io(graph.tensors[t]) for t in graph.inputs],
          "outputs": [_io(graph.tensors[t]) for t in graph.outputs]}
    return _assemble("tflite", layers, target, flash_bytes=len(model_bytes), flash_source="flatbuffer bytes",
                     peak_bytes=peak, arena_bytes=arena_bytes, arena_note=note, timing=times,
                     unsupported=unsupported, extra={"io": io, "subgraphs": graph.subgraphs, "model_bytes": model_bytes},
                     decompression=decompression)


def _separate_region(model_bytes: bytes, graph, sample, arena: int, target) -> dict | None:
    """The layout with a LUT model's decoded weights in the target's separate decompression region,
    when the target has one, the model decodes weights, and they fit it with the same outputs."""
    if not target.decompression_ram_bytes or not any(op.op == "TFLM_DECODE" for op in graph.ops):
        return None
    from tinyprune.export.lut import decompression_memory
    from tinyprune.export.micro import tflm_outputs

    split = decompression_memory(model_bytes, sample, tflm_outputs(model_bytes, sample, arena))
    if split and split["bit_exact"] and split["alt_bytes"] <= target.decompression_ram_bytes:
        return split
    return None


def _io(t) -> dict:
    return {"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "scale": t.scale, "zero_point": t.zero_point}


def _np_dtype(name: str):
    return {"float32": np.float32, "int8": np.int8, "uint8": np.uint8, "int16": np.int16, "int32": np.int32,
            "int64": np.int64, "bool": np.bool_, "float16": np.float16}.get(name, np.float32)


def measure_onnx(model_path_or_proto, target, *, input_shape: tuple[int, ...] | None = None,
                 timing: bool = True, repeats: int = 50) -> dict:
    """Measure a float ONNX graph: counts on the graph itself; RAM is the planned activation peak
    (no TFLM arena: the device runs the TFLite model made from it)."""
    import onnx

    from tinyprune.measure.macs import onnx_layers

    target = _target(target)
    if isinstance(model_path_or_proto, (str, Path)):
        path = Path(model_path_or_proto)
        try:
            model = onnx.load(str(path))
        except Exception as exc:
            raise UnsupportedModel(f"{path.name} is not a readable ONNX model ({_error_line(exc)})") from None
    else:
        path, model = None, model_path_or_proto
    if input_shape is not None and model.graph.input:
        dims = model.graph.input[0].type.tensor_type.shape.dim
        full = list(input_shape)
        if len(full) == len(dims) - 1:
            full = [1] + full
        if len(full) != len(dims):
            raise DataError(f"--input-shape {tuple(input_shape)} does not match the ONNX input rank {len(dims)}")
        for d, v in zip(dims, full):
            d.dim_value = int(v)
    layers = onnx_layers(model)
    if not layers:
        raise UnsupportedModel("the ONNX graph has no nodes")
    peak = mem.onnx_peak_activations(model, layers)
    times: dict = {}
    if timing:
        src = model.SerializeToString()
        _timed("onnxruntime", lambda: lat.time_onnxruntime(src, repeats), times)
    wbytes = sum(l["weight_bytes"] for l in layers)
    return _assemble("onnx", layers, target, flash_bytes=wbytes, flash_source="weight bytes at the graph's precision (estimate: not a TFLite model)",
                     peak_bytes=peak, arena_bytes=None, arena_note="ONNX graph, no TFLM arena", timing=times,
                     unsupported=None, extra={"file_bytes": path.stat().st_size if path else None})


def measure_torch(model, example, target, *, timing: bool = True, repeats: int = 50, onnx_model=None) -> dict:
    """Measure a PyTorch module on one sample (``example`` with batch dimension)."""
    from tinyprune.measure.macs import torch_layers

    target = _target(target)
    try:
        layers = torch_layers(model, example[:1])
    except TinypruneError:
        raise
    except Exception as exc:
        raise DataError(f"the model does not run on an input of shape {tuple(example.shape)}: {_error_line(exc)}") from None
    params = sum(p.numel() for p in model.parameters())
    pbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    times: dict = {}
    if timing:
        _timed("torch", lambda: lat.time_torch(model, example, repeats), times)
        if onnx_model is not None:
            _timed("onnxruntime", lambda: lat.time_onnxruntime(onnx_model, repeats), times)
    result = _assemble("pytorch", layers, target, flash_bytes=pbytes,
                       flash_source="parameter bytes at the model's precision (estimate: not a TFLite model)",
                       peak_bytes=mem.layer_peak_activations(layers), arena_bytes=None,
                       arena_note="PyTorch model, no TFLM arena; largest layer input+output", timing=times,
                       unsupported=None, extra={"input_shape": list(example.shape)})
    result["totals"]["model_params"] = int(params)
    return result


def measure_stage(model, target, *, example=None, arena_bytes: int | None = None, onnx_model=None,
                  timing: bool = True, repeats: int = 30, decompression: dict | None = None) -> dict:
    """The measurement ``compress`` attaches to one stage record (``details["measure"]``).

    ``model``: an ``nn.Module`` (float stages; needs ``example``, one input sample with batch
    dimension) or TFLite flatbuffer bytes (int8 stage; pass the ``arena_bytes`` already found so
    it is not bisected twice). ``onnx_model``: path/bytes of the stage's ONNX export, timed in
    ONNX Runtime when given. ``decompression``: a LUT model's layout with its decoded weights in the
    target's separate region, when deployed that way (measure_tflite).
    """
    if isinstance(model, (bytes, bytearray)):
        return measure_tflite(bytes(model), target, arena_bytes=arena_bytes, find_arena=arena_bytes is None,
                              timing=timing, repeats=repeats, onnx_model=onnx_model, decompression=decompression)
    if example is None:
        raise ConfigError("measure_stage needs an example input for a PyTorch model")
    return measure_torch(model, example, target, timing=timing, repeats=repeats, onnx_model=onnx_model)


def _sniff(path: Path) -> str:
    head = path.read_bytes()[:8] if path.exists() else b""
    suffix = path.suffix.lower()
    if suffix == ".tflite" or (len(head) >= 8 and head[4:8] == b"TFL3"):
        return "tflite"
    if suffix == ".onnx":
        return "onnx"
    return "pytorch"


def measure_file(path, target="cortex-m4", *, input_shape: tuple[int, ...] | None = None, arch: str | None = None,
                 trust_code: bool = False, timing: bool = True, find_arena: bool = True, repeats: int = 50,
                 int8: bool = False, calib: np.ndarray | None = None, workdir: Path | None = None) -> dict:
    """Measure the model in ``path`` (format from its content/extension).

    ``int8=True`` converts an ONNX or PyTorch model to full-int8 TFLite first (tinyprune's export
    pipeline, calibrated on ``calib`` in the model's layout, or on random normal data: sizes,
    MACs and latency do not depend on it, accuracy does) and measures what the device would run.
    """
    target = _target(target)
    path = check_model_file(path)
    kind = _sniff(path)
    t0 = time.perf_counter()
    if kind == "tflite":
        from tinyprune import limits

        with limits.bounded(f"measuring {path.name}", TFLITE_SECONDS):  # a hostile flatbuffer can loop in LiteRT
            result = measure_tflite(path.read_bytes(), target, find_arena=find_arena, timing=timing, repeats=repeats)
    elif kind == "onnx":
        if int8:
            result = _int8_from_onnx(path, target, input_shape, calib, workdir, timing, find_arena, repeats)
        else:
            result = measure_onnx(path, target, input_shape=input_shape, timing=timing, repeats=repeats)
    else:
        result = _measure_torch_file(path, target, input_shape, arch, trust_code, timing, find_arena, repeats,
                                     int8, calib, workdir)
    result["model"] = {"path": str(path), "bytes": path.stat().st_size, "format": result["format"]}
    result["seconds"] = time.perf_counter() - t0
    return result


def _example(input_shape, path: Path):
    import torch

    if input_shape is None:
        raise ConfigError(f"{path.name} is a PyTorch model: pass --input-shape with one sample's shape, e.g. 1,28,28")
    return torch.zeros((1, *input_shape), dtype=torch.float32).normal_(generator=torch.Generator().manual_seed(0))


def _measure_torch_file(path, target, input_shape, arch, trust_code, timing, find_arena, repeats, int8, calib,
                        workdir):
    from tinyprune.lift import to_module
    from tinyprune.load import load_model

    loaded = load_model(path, arch=arch, trust_code=trust_code)
    example = _example(input_shape, path)
    try:
        model = to_module(loaded, example)
    except TinypruneError:
        raise
    except Exception as exc:
        raise DataError(f"{path.name} does not run on an input of shape {tuple(example.shape)}: {_error_line(exc)}") from None
    if not int8:
        result = measure_torch(model, example, target, timing=timing, repeats=repeats)
        result["source_format"] = loaded.format
        return result
    import tempfile

    from tinyprune.export.onnx import export_onnx

    with tempfile.TemporaryDirectory(prefix="tinyprune-measure-", dir=workdir) as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(model, example.numpy(), onnx_path)
        result = _int8_from_onnx(onnx_path, target, None, calib, Path(tmp), timing, find_arena, repeats,
                                 shape=tuple(example.shape))
    result["source_format"] = loaded.format
    return result


def _int8_from_onnx(onnx_path, target, input_shape, calib, workdir, timing, find_arena, repeats, shape=None):
    import tempfile

    import onnx

    from tinyprune.export.tflite import to_int8_tflite

    if shape is None:
        dims = onnx.load(str(onnx_path)).graph.input[0].type.tensor_type.shape.dim
        shape = tuple(d.dim_value if d.dim_value > 0 else 1 for d in dims)
        if input_shape is not None:
            shape = (1, *input_shape) if len(input_shape) == len(shape) - 1 else tuple(input_shape)
    given = calib is not None
    if calib is None:
        calib = np.random.default_rng(0).standard_normal((32, *shape[1:])).astype(np.float32)
    elif tuple(calib.shape[1:]) != tuple(shape[1:]):
        raise DataError(f"calibration data has samples of shape {tuple(calib.shape[1:])}, the model takes {tuple(shape[1:])}")
    with tempfile.TemporaryDirectory(prefix="tinyprune-measure-", dir=workdir) as tmp:
        tfl = to_int8_tflite(Path(onnx_path), calib, Path(tmp) / "work")
    result = measure_tflite(tfl, target, find_arena=find_arena, timing=timing, repeats=repeats, onnx_model=str(onnx_path))
    result["converted"] = {"from": "onnx", "calibration": "given data" if given else "random normal (accuracy not meaningful)",
                           "tflite_bytes": len(tfl)}
    return result


def check_supported(result: dict) -> None:
    """Raise UnsupportedOp when the measured TFLite model uses ops the target lacks."""
    ops = result.get("unsupported_ops") or []
    if ops:
        raise UnsupportedOp(f"the model uses op(s) that {result['target']['name']}'s TFLM runtime lacks: {', '.join(ops)}")


__all__ = ["measure_file", "measure_tflite", "measure_onnx", "measure_torch", "measure_stage", "unsupported_ops",
           "unsupported_tflite_ops", "check_supported"]
