"""Firmware file generation: TFLM resolver method names, the arena constant, and the example
application (examples/firmware/main.cc) built against every generated set."""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tinyprune.export.firmware import arena_size, firmware_files, resolver_method, saves_ram

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "firmware" / "main.cc"


@pytest.mark.parametrize("op, method", [
    ("CONV_2D", "AddConv2D"), ("DEPTHWISE_CONV_2D", "AddDepthwiseConv2D"), ("FULLY_CONNECTED", "AddFullyConnected"),
    ("MAX_POOL_2D", "AddMaxPool2D"), ("AVERAGE_POOL_2D", "AddAveragePool2D"), ("RELU6", "AddRelu6"),
    ("HARD_SWISH", "AddHardSwish"), ("CONCATENATION", "AddConcatenation"), ("TFLM_DECODE", "AddDecode"),
    ("BATCH_MATMUL", "AddBatchMatMul"), ("L2_NORMALIZATION", "AddL2Normalization"), ("MEAN", "AddMean"),
])
def test_resolver_methods_are_tflms(op, method):
    assert resolver_method(op) == method


def test_arena_constant_has_a_margin_and_tflm_alignment():
    assert arena_size(7680) == 8704  # 7680 + 1 KiB (10 % would be less)
    assert arena_size(100_000) == 110_000  # 10 %, already a multiple of 16
    assert all(arena_size(n) % 16 == 0 and arena_size(n) >= n + 1024 for n in (1, 17, 4095, 123_457))


# ------------------------------------------------------------------ the example against the generated files

# Declarations of exactly the TFLM API examples/firmware/main.cc uses, as TFLM spells them, so
# that the example and the generated files are compiled together without a TFLM checkout: a name
# the generated files do not declare (the array, a constant, RegisterModelOps) fails the build.
_STUB = """\
#ifndef TINYPRUNE_TFLM_STUB_H_
#define TINYPRUNE_TFLM_STUB_H_
#include <cstddef>
#include <cstdint>
#include <initializer_list>
typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
typedef struct { union { int8_t* int8; float* f; } data; } TfLiteTensor;
namespace tflite {
struct Model;
inline const Model* GetModel(const void* buffer) { return static_cast<const Model*>(buffer); }
class MicroOpResolver {};
template <unsigned int tOpCount> class MicroMutableOpResolver : public MicroOpResolver {
 public:
%s
};
struct MicroContext { struct AlternateMemoryRegion { void* address; size_t bytes; }; };
class MicroInterpreter {
 public:
  MicroInterpreter(const Model*, const MicroOpResolver&, uint8_t*, size_t) {}
  TfLiteStatus SetDecompressionMemory(const std::initializer_list<MicroContext::AlternateMemoryRegion>&) {
    return kTfLiteOk;
  }
  TfLiteStatus AllocateTensors() { return kTfLiteOk; }
  TfLiteStatus Invoke() { return kTfLiteOk; }
  TfLiteTensor* input(size_t) { return nullptr; }
  TfLiteTensor* output(size_t) { return nullptr; }
};
}  // namespace tflite
#endif
"""


def compile_example(files: Path, prefix: str, work: Path) -> None:
    """Build examples/firmware/main.cc against ``files``' ``<prefix>_data.*`` and ``<prefix>_ops.h``
    with its #include lines switched to them, as a user does, and nothing else changed."""
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:  # .ci/run installs one; the checks on the generated text ran before this
        pytest.skip("no C++ compiler to build the example with")
    methods = re.findall(r"resolver\.(Add\w+)\(\)", (files / f"{prefix}_ops.h").read_text())
    stub = _STUB % "\n".join(f"  TfLiteStatus {m}() {{ return kTfLiteOk; }}" for m in methods)
    for name in ("micro_interpreter.h", "micro_mutable_op_resolver.h"):
        header = work / "tflm" / "tensorflow" / "lite" / "micro" / name
        header.parent.mkdir(parents=True, exist_ok=True)
        header.write_text(stub)
    source = EXAMPLE.read_text()
    assert '#include "model_data.h"' in source and '#include "model_ops.h"' in source
    main = work / f"main_{prefix}.cc"
    main.write_text(source.replace('"model_data.h"', f'"{prefix}_data.h"').replace('"model_ops.h"', f'"{prefix}_ops.h"'))
    for src in (main, files / f"{prefix}_data.cc"):
        run = subprocess.run([compiler, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-I", str(files),
                              "-I", str(work / "tflm"), "-c", str(src), "-o", str(work / f"{src.stem}.o")],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr


def _fc_model() -> bytes:
    """An int8 FULLY_CONNECTED built in code (no converter) whose weights take 4 values per channel,
    so TFLM's compressor turns it into a LUT model with a DECODE op."""
    from tflite_micro.tensorflow.lite.micro.compression import model_editor as me
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as s

    t, q = s.TensorType, me.Quantization
    w = np.random.default_rng(0).choice(np.array([-3, 5, 7, -9], np.int8), size=(10, 256))
    x = me.Tensor(shape=(1, 256), dtype=t.INT8, quantization=q(scales=0.02, zero_points=-1), name="x")
    y = me.Tensor(shape=(1, 10), dtype=t.INT8, quantization=q(scales=0.1, zero_points=3), name="y")
    weight = me.Tensor(shape=(10, 256), dtype=t.INT8, data=w, name="w",
                       quantization=q(scales=[0.01] * 10, zero_points=[0] * 10, axis=0))
    bias = me.Tensor(shape=(10,), dtype=t.INT32, data=np.zeros(10, np.int32), name="b",
                     quantization=q(scales=[0.0002] * 10, zero_points=[0] * 10))
    m = me.Model()
    m.add_subgraph(operators=[me.Operator(opcode=s.BuiltinOperator.FULLY_CONNECTED, inputs=[x, weight, bias],
                                          outputs=[y])], inputs=[x], outputs=[y])
    return bytes(m.build())


@pytest.fixture(scope="module")
def models():
    from tinyprune.export.lut import lut_compress

    int8 = _fc_model()
    lut = lut_compress(int8, 4).model
    assert len(lut) < len(int8)
    return int8, lut


def _write(folder: Path, files: dict) -> Path:
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_the_example_builds_against_the_plain_and_the_lut_files(models, tmp_path):
    from tinyprune.export.tflite import io_details

    int8, lut = models
    plain = firmware_files(int8, 1488, io_details(int8))
    shared = firmware_files(lut, 4112, io_details(lut), "model_lut")
    assert sorted(plain) == ["model_data.cc", "model_data.h", "model_ops.h"]
    assert sorted(shared) == ["model_lut_data.cc", "model_lut_data.h", "model_lut_ops.h"]
    # each set declares its own array and the shared name the example uses
    assert "extern const unsigned char g_model_data[];" in plain["model_data.h"]
    assert "constexpr const unsigned char* kModelData = g_model_data;" in plain["model_data.h"]
    assert "extern const unsigned char g_model_lut_data[];" in shared["model_lut_data.h"]
    assert "constexpr const unsigned char* kModelData = g_model_lut_data;" in shared["model_lut_data.h"]
    assert "AddDecode()" in shared["model_lut_ops.h"] and "AddDecode()" not in plain["model_ops.h"]
    compile_example(_write(tmp_path / "plain", plain), "model", tmp_path)
    compile_example(_write(tmp_path / "lut", shared), "model_lut", tmp_path)


def test_the_example_sets_up_a_required_decompression_region(models, tmp_path):
    from tinyprune.export.tflite import io_details

    _, lut = models
    split = {"arena_bytes": 1488, "alt_bytes": 2576, "single_arena_bytes": 4112, "required": True,
             "bit_exact": True, "samples_checked": 4}
    files = firmware_files(lut, 1488, io_details(lut), "model_lut", decompression=split)
    header = files["model_lut_data.h"]
    assert "kDecompressionMemorySize = 2576;" in header and "#define TINYPRUNE_DECOMPRESSION_MEMORY_REQUIRED" in header
    compile_example(_write(tmp_path / "lut", files), "model_lut", tmp_path)


@pytest.mark.parametrize("arena, alt, single, required, offered", [
    (10_464, 36_864, 43_216, False, False),  # the recorded demo: 47,328 B in two regions against 43,216 in one
    (36_608, 16, 36_592, False, False),  # a larger arena and 16 B more (issue 30)
    (20_000, 8_000, 43_216, False, True),
    (20_000, 30_000, 43_216, True, True),  # required on the target: the arena alone does not fit
])
def test_decompression_advice_only_where_it_saves_ram(models, arena, alt, single, required, offered):
    from tinyprune.export.tflite import io_details
    from tinyprune.report.render import _decompression_line

    _, lut = models
    split = {"arena_bytes": arena, "alt_bytes": alt, "single_arena_bytes": single, "required": required,
             "bit_exact": True, "samples_checked": 64, "decoded_tensors": 1, "decoded_bytes": alt}
    assert saves_ram(split) is offered
    header = firmware_files(lut, single if not required else arena, io_details(lut), "model_lut",
                            decompression=split)["model_lut_data.h"]
    assert ("kDecompressionMemorySize" in header) is offered

    class Stage:
        details = {"decompression_memory": split}

    assert bool(_decompression_line(Stage())) is offered
    assert not saves_ram({k: v for k, v in split.items() if k != "single_arena_bytes"} | {"required": False})
