"""Firmware files for TFLM: the flatbuffer as a C array, what the application must know about it,
and the op resolver that registers exactly the model's operators.

``model_data.h`` declares the array and its length (and ``kModelData``, the same array under a name
shared by every prefix), ``kTensorArenaSize`` (the arena measured by
bisection in the real interpreter plus ``ARENA_MARGIN``, because a different TFLM build or
target may plan its buffers a little differently), the input and output shapes, types, scales
and zero points, and the ops as a comment. ``model_ops.h`` defines ``RegisterModelOps()`` for a
``tflite::MicroMutableOpResolver<kModelOpCount>``: one ``Add...()`` per distinct op, DECODE
included for LUT-compressed models.
"""

from __future__ import annotations

ARENA_MARGIN_FRACTION = 0.10  # kTensorArenaSize = measured * 1.1, rounded up to 16 bytes
ARENA_MARGIN_MIN = 1024  # and at least 1 KiB more than measured
_RESOLVER_NAMES = {"TFLM_DECODE": "Decode", "BATCH_MATMUL": "BatchMatMul", "PADV2": "PadV2", "CUMSUM": "CumSum",
                   "UNIDIRECTIONAL_SEQUENCE_LSTM": "UnidirectionalSequenceLSTM", "L2_POOL_2D": "L2Pool2D",
                   "RESIZE_NEAREST_NEIGHBOR": "ResizeNearestNeighbor", "SPACE_TO_BATCH_ND": "SpaceToBatchNd",
                   "BATCH_TO_SPACE_ND": "BatchToSpaceNd", "ethos-u": "EthosU"}
_C_TYPES = {"int8": "kTfLiteInt8", "uint8": "kTfLiteUInt8", "int16": "kTfLiteInt16", "int32": "kTfLiteInt32",
            "float32": "kTfLiteFloat32"}


def resolver_method(op: str) -> str:
    """TFLM's ``MicroMutableOpResolver`` method for an op: CONV_2D -> AddConv2D, TFLM_DECODE -> AddDecode."""
    name = _RESOLVER_NAMES.get(op) or "".join(part.capitalize() if not part[0].isdigit() else part.upper()
                                              for part in op.split("_"))
    return f"Add{name}"


def model_ops(model_bytes: bytes) -> list[str]:
    """The distinct operators of the model's main graph, in order of first use."""
    from tinyprune.measure.graph import read_graph

    seen: list[str] = []
    for op in read_graph(model_bytes).ops:
        if op.op not in seen:
            seen.append(op.op)
    return seen


def arena_size(measured: int) -> int:
    padded = max(int(measured * (1 + ARENA_MARGIN_FRACTION)), measured + ARENA_MARGIN_MIN)
    return (padded + 15) // 16 * 16


def _dims(values) -> str:
    return "{" + ", ".join(str(int(v)) for v in values) + "}"


def saves_ram(split: dict | None) -> bool:
    """Whether a LUT model's layout with TFLM's alternate decompression memory is worth offering:
    required on the target, or arena + decompression memory below the single arena. DECODE's own
    scratch can make the split arena larger than the single one (measured: 36,608 + 16 > 36,592 B),
    and advice that costs RAM is worse than none."""
    if not split:
        return False
    if split.get("required"):
        return True
    single = split.get("single_arena_bytes")
    return single is not None and split["arena_bytes"] + split["alt_bytes"] < single


def _decompression_lines(split: dict | None) -> str:
    if not saves_ram(split):
        return ""
    if split.get("required"):
        return (
            "// The decoded weights do not fit beside the arena, so this is required on this target: give TFLM\n"
            "// an alternate decompression memory (the MicroInterpreter's alt_decompression_memory) in the\n"
            "// target's separate RAM region. kTensorArenaSize above is the arena without the decoded weights.\n"
            f"// Measured: {split['arena_bytes']} bytes of arena + {split['alt_bytes']} bytes of decompression memory"
            f" ({'bit-exact' if split['bit_exact'] else 'NOT bit-exact'} on {split['samples_checked']} samples).\n"
            f"constexpr unsigned int kDecompressionMemorySize = {split['alt_bytes']};\n"
            "#define TINYPRUNE_DECOMPRESSION_MEMORY_REQUIRED 1  // examples/firmware/main.cc sets the region up\n"
            f"constexpr unsigned int kTensorArenaSizeWithoutDecompressionMemory = "
            f"{arena_size(split['single_arena_bytes'])};\n\n"
        )
    return (
        "// Or give TFLM an alternate decompression memory (the MicroInterpreter's alt_decompression_memory,\n"
        "// e.g. in a second RAM bank): DECODE then writes the decoded weights there, and the arena shrinks.\n"
        f"// Measured: {split['arena_bytes']} bytes of arena + {split['alt_bytes']} bytes of decompression memory"
        f" ({'bit-exact' if split['bit_exact'] else 'NOT bit-exact'} on {split['samples_checked']} samples).\n"
        f"constexpr unsigned int kDecompressionMemorySize = {split['alt_bytes']};\n"
        f"constexpr unsigned int kTensorArenaSizeWithDecompressionMemory = {arena_size(split['arena_bytes'])};\n\n"
    )


def firmware_files(model_bytes: bytes, arena_bytes: int, io: dict, prefix: str = "model",
                   decompression: dict | None = None) -> dict[str, str]:
    """{file name: text} of ``<prefix>_data.cc``, ``<prefix>_data.h`` and ``<prefix>_ops.h``.

    ``decompression``: a LUT model's measured split with TFLM's alternate decompression memory
    (tinyprune.export.lut.decompression_memory), declared in the header beside the plain arena."""
    symbol, header_name, ops_name = f"g_{prefix}_data", f"{prefix}_data.h", f"{prefix}_ops.h"
    macro = prefix.upper()
    ops = model_ops(model_bytes)
    guard = f"TINYPRUNE_{macro}_DATA_H_"
    i, o = io["input"], io["output"]
    header = (
        "// Generated by tinyprune. TFLite flatbuffer for TensorFlow Lite for Microcontrollers.\n"
        f"#ifndef {guard}\n#define {guard}\n\n"
        f"extern const unsigned char {symbol}[];\n"
        f"extern const unsigned int {symbol}_len;\n"
        "// The same array under one name for every generated set (model_data.h, model_lut_data.h, ...), so\n"
        "// that an application switches models by its #include lines alone.\n"
        f"constexpr const unsigned char* kModelData = {symbol};\n\n"
        f"// Smallest arena with which TFLM allocated and ran this model: {arena_bytes} bytes (bisection in the\n"
        f"// real interpreter); reserve it with a margin of {ARENA_MARGIN_FRACTION:.0%} (at least "
        f"{ARENA_MARGIN_MIN} bytes) for other TFLM builds.\n"
        f"constexpr unsigned int kArenaMeasured = {arena_bytes};\n"
        f"constexpr unsigned int kTensorArenaSize = {arena_size(arena_bytes)};\n\n"
        + _decompression_lines(decompression) +
        "// Input: q = round(x / scale) + zero_point, NHWC for images. Output: x = (q - zero_point) * scale.\n"
        f"constexpr int kInputDims[] = {_dims(i['shape'])};\n"
        f"constexpr float kInputScale = {i['scale']:.9g}f;\n"
        f"constexpr int kInputZeroPoint = {i['zero_point']};\n"
        f"constexpr int kOutputDims[] = {_dims(o['shape'])};\n"
        f"constexpr float kOutputScale = {o['scale']:.9g}f;\n"
        f"constexpr int kOutputZeroPoint = {o['zero_point']};\n"
        f"// Input type {_C_TYPES.get(i['dtype'], i['dtype'])}, output type {_C_TYPES.get(o['dtype'], o['dtype'])}.\n\n"
        f"// Operators ({len(ops)}): {', '.join(ops)}. {ops_name} registers exactly these.\n"
        f"constexpr int kModelOpCount = {len(ops)};\n\n"
        f"#endif  // {guard}\n"
    )
    rows = ["  " + ", ".join(f"0x{b:02x}" for b in model_bytes[k:k + 12]) + "," for k in range(0, len(model_bytes), 12)]
    source = (
        "// Generated by tinyprune. TFLite flatbuffer for TensorFlow Lite for Microcontrollers.\n"
        f'#include "{header_name}"\n\n'
        "// TFLM reads the flatbuffer in place: it must be 16-byte aligned.\n"
        f"alignas(16) const unsigned char {symbol}[] = {{\n" + "\n".join(rows) + "\n};\n"
        f"const unsigned int {symbol}_len = {len(model_bytes)};\n"
    )
    ops_guard = f"TINYPRUNE_{macro}_OPS_H_"
    calls = "\n".join(f"  if (resolver.{resolver_method(op)}() != kTfLiteOk) return kTfLiteError;" for op in ops)
    ops_header = (
        "// Generated by tinyprune: registers exactly the operators the model uses.\n"
        f"#ifndef {ops_guard}\n#define {ops_guard}\n\n"
        '#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"\n'
        f'#include "{header_name}"\n\n'
        f"inline TfLiteStatus RegisterModelOps(tflite::MicroMutableOpResolver<kModelOpCount>& resolver) {{\n"
        f"{calls}\n  return kTfLiteOk;\n}}\n\n#endif  // {ops_guard}\n"
    )
    return {f"{prefix}_data.cc": source, header_name: header, ops_name: ops_header}
