"""ONNX -> full-integer int8 TFLite with onnx2tf, calibrated on the user's data, offline.

onnx2tf fetches a sample image file from the internet when the model input looks like a
small batch of RGB images, even when calibration data is given (``download_test_image_data``).
We hand it the user's own calibration images instead and make any other HTTP call from
onnx2tf fail loudly, so export never needs, nor silently uses, the network.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import numpy as np

from tinyprune.fd_output import captured_output
from tinyprune.errors import DataError, ExportError


def to_device_layout(x: np.ndarray) -> np.ndarray:
    """PyTorch's channels-first -> TFLite's channels-last, as onnx2tf converts every model input:
    NCHW -> NHWC for images, NCL -> NLC for 1-D signals; [N, F] is unchanged."""
    if x.ndim == 4:
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    if x.ndim == 3:
        return np.ascontiguousarray(x.transpose(0, 2, 1))
    return x


def _no_network(*args, **kwargs):
    raise ExportError("onnx2tf tried to reach the network during export; this is a bug in tinyprune, please report it")


@contextlib.contextmanager
def _offline(calib_device: np.ndarray):
    import onnx2tf.onnx2tf as core
    import onnx2tf.utils.common_functions as common

    saved = core.download_test_image_data, common.requests.get
    core.download_test_image_data = lambda: calib_device.copy()
    common.requests.get = _no_network
    try:
        yield
    finally:
        core.download_test_image_data, common.requests.get = saved


@contextlib.contextmanager
def _interrupt_after():
    """onnx2tf catches KeyboardInterrupt inside its conversion and carries on. Hold a SIGINT
    while it runs and raise it when it returns, so an interrupt always ends the run (exit 130)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hits: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: hits.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if hits:
        raise KeyboardInterrupt


def _failing_op(log: str) -> str:
    names = re.findall(r"onnx_op_name:\s*(\S+)", log)
    types = re.findall(r"onnx_op_type:\s*(\S+)", log)
    if names:
        return f" at ONNX op {names[-1]}" + (f" ({types[-1]})" if types else "")
    return ""


def _check_calibration(onnx_path: Path, calib: np.ndarray) -> None:
    """Calibration data the converter would silently turn into a broken model: refuse it (exit 2)."""
    import onnx

    calib = np.asarray(calib)
    if calib.ndim < 2 or len(calib) == 0:
        raise DataError(f"the calibration set must hold samples along its first axis, got shape {calib.shape}")
    if not np.issubdtype(calib.dtype, np.number) or not np.isfinite(calib).all():
        raise DataError("the calibration set holds NaN or inf values; pass finite data")
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    dims = [d.dim_value if d.HasField("dim_value") else None for d in graph.input[0].type.tensor_type.shape.dim]
    want = tuple(dims[1:])
    if len(want) != calib.ndim - 1 or any(w is not None and w != g for w, g in zip(want, calib.shape[1:])):
        raise DataError(f"calibration samples have shape {tuple(calib.shape[1:])}, the model takes "
                        f"{tuple('?' if w is None else w for w in want)}")


def to_int8_tflite(onnx_path: Path, calib_nchw: np.ndarray, workdir: Path) -> bytes:
    """Convert and return the full-int8 flatbuffer (int8 input and output tensors)."""
    _check_calibration(onnx_path, calib_nchw)
    workdir.mkdir(parents=True, exist_ok=True)
    calib = to_device_layout(calib_nchw.astype(np.float32))
    calib_path = workdir / "calibration.npy"
    np.save(calib_path, calib)
    # mean 0 / std 1: the data is already what the model expects; onnx2tf must not rescale it
    zeros = np.zeros([1] * calib.ndim, np.float32)
    ones = np.ones([1] * calib.ndim, np.float32)
    out_dir = workdir / "onnx2tf"
    error: BaseException | None = None
    with captured_output() as log:
        try:
            import onnx2tf
            import tensorflow as tf

            from tinyprune.export.onnx import INPUT_NAME  # torch: the light install reads .tflite files only

            # Keras numbers its layer names per process (model_2/flatten_3/...) and those names
            # land in the flatbuffer: reset them, so a conversion's bytes do not depend on how many
            # ran before it in the same process (--fit trials, sweep cells, the tests)
            tf.keras.backend.clear_session()
            with _offline(calib), _interrupt_after():
                onnx2tf.convert(
                    input_onnx_file_path=str(onnx_path),
                    output_folder_path=str(out_dir),
                    output_integer_quantized_tflite=True,
                    quant_type="per-channel",
                    custom_input_op_name_np_data_path=[[INPUT_NAME, str(calib_path), zeros, ones]],
                    input_quant_dtype="int8",
                    output_quant_dtype="int8",
                    non_verbose=True,
                    copy_onnx_input_output_names_to_tflite=True,
                )
        except (Exception, SystemExit) as exc:  # onnx2tf calls sys.exit(1) on conversion errors
            error = exc
    if isinstance(error, ExportError):
        raise error
    produced = sorted(out_dir.glob("*_full_integer_quant.tflite"))
    produced = [p for p in produced if "int16" not in p.name]
    if error is not None or not produced:
        tail = [line for line in log.text.splitlines() if "ERROR" in line or "Error" in line]
        reason = tail[-1].strip()[:200] if tail else (str(error).splitlines()[0][:200] if error and str(error) else "no int8 model produced")
        raise ExportError(f"onnx2tf int8 conversion failed{_failing_op(log.text)}: {reason}")
    return produced[0].read_bytes()


def litert_interpreter(model_bytes: bytes, reference: bool = False, keep_tensors: bool = False):
    """LiteRT with its default (optimized, XNNPACK) kernels, or its reference kernels, which are
    the ones TFLM runs; ``keep_tensors`` keeps every intermediate tensor readable."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = OpResolverType.BUILTIN_REF if reference else OpResolverType.AUTO
    with captured_output():  # LiteRT announces its XNNPACK delegate on stderr when allocating
        it = Interpreter(model_content=model_bytes, experimental_op_resolver_type=kind,
                         experimental_preserve_all_tensors=keep_tensors)
        it.allocate_tensors()
    return it


def io_details(model_bytes: bytes) -> dict:
    """Shapes, dtypes and quantization of the model's input and output (what firmware needs).

    Read from the flatbuffer, not an interpreter, so that models with TFLM-only ops (DECODE) work."""
    from tinyprune.measure.graph import read_graph

    graph = read_graph(model_bytes)

    def one(index: int) -> dict:
        t = graph.tensors[index]
        return {"shape": [int(s) for s in t.shape], "dtype": t.dtype,
                "scale": float(t.scale or 0.0), "zero_point": int(t.zero_point or 0)}

    return {"input": one(graph.inputs[0]), "output": one(graph.outputs[0])}


def quantize(x_device: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return np.clip(np.round(x_device / scale) + zero_point, -128, 127).astype(np.int8)


def device_input(model_bytes: bytes, x_nchw: np.ndarray) -> np.ndarray:
    """Samples as the device model takes them: device layout, quantized when its input is int8."""
    inp = io_details(model_bytes)["input"]
    x = to_device_layout(np.asarray(x_nchw, np.float32))
    if inp["dtype"] == "int8":
        return quantize(x, inp["scale"], inp["zero_point"])
    return x.astype(inp["dtype"])


def litert_outputs(model_bytes: bytes, x_device: np.ndarray, reference: bool = False) -> np.ndarray:
    """Raw outputs of the model in LiteRT for each sample of ``x_device`` (batch is fixed to 1)."""
    it = litert_interpreter(model_bytes, reference)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    outputs = []
    for i in range(len(x_device)):
        it.set_tensor(inp["index"], x_device[i:i + 1])
        it.invoke()
        outputs.append(it.get_tensor(out["index"])[0].copy())
    return np.stack(outputs)


def litert_predict(model_bytes: bytes, x_nchw: np.ndarray) -> np.ndarray:
    """Class predictions of the model in LiteRT, one sample at a time."""
    out = litert_outputs(model_bytes, device_input(model_bytes, x_nchw))
    return out.reshape(len(out), -1).argmax(1)
