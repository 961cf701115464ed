// Running a tinyprune model with TensorFlow Lite for Microcontrollers (docs/firmware.md).
//
// Copy model_data.cc, model_data.h and model_ops.h from the compress output folder into your
// project next to this file, and build it with TFLM. When report.json's "deployed" names
// model_int8_lut.tflite, copy the model_lut_* files instead and change the two #include lines to
// "model_lut_data.h" and "model_lut_ops.h"; nothing else changes, because every generated header
// names its array kModelData as well. The LUT model needs TFLM built with compression
// (USE_TFLM_COMPRESSION) for its DECODE kernel.
#include <cmath>
#include <cstdint>
#include <initializer_list>

#include "model_data.h"
#include "model_ops.h"
#include "tensorflow/lite/micro/micro_interpreter.h"

namespace {
alignas(16) uint8_t tensor_arena[kTensorArenaSize];  // the measured arena plus a margin

#ifdef TINYPRUNE_DECOMPRESSION_MEMORY_REQUIRED
// The LUT model's decoded weights do not fit beside the arena on this target: they go to its
// separate RAM region. Place this array there with your linker script (a section attribute).
alignas(16) uint8_t decompression_memory[kDecompressionMemorySize];
// TFLM reads the list for as long as the interpreter lives, so it is static too.
const std::initializer_list<tflite::MicroContext::AlternateMemoryRegion> decompression_regions = {
    {decompression_memory, kDecompressionMemorySize}};
#endif

bool Allocate(tflite::MicroInterpreter& interpreter) {
#ifdef TINYPRUNE_DECOMPRESSION_MEMORY_REQUIRED
  // before AllocateTensors, which plans the arena without the decoded weights
  if (interpreter.SetDecompressionMemory(decompression_regions) != kTfLiteOk) return false;
#endif
  return interpreter.AllocateTensors() == kTfLiteOk;
}
}  // namespace

// Classifies one input (floats in the model's NHWC layout); returns the class, or -1 on error.
int Classify(const float* x, int n) {
  static tflite::MicroMutableOpResolver<kModelOpCount> resolver;
  static bool registered = RegisterModelOps(resolver) == kTfLiteOk;  // exactly the model's ops
  if (!registered) return -1;
  static tflite::MicroInterpreter interpreter(tflite::GetModel(kModelData), resolver, tensor_arena,
                                              kTensorArenaSize);
  static bool allocated = Allocate(interpreter);
  if (!allocated) return -1;

  TfLiteTensor* input = interpreter.input(0);
  for (int i = 0; i < n; ++i) {  // q = round(x / scale) + zero_point, clamped to int8
    long q = std::lround(x[i] / kInputScale) + kInputZeroPoint;
    input->data.int8[i] = static_cast<int8_t>(q < -128 ? -128 : (q > 127 ? 127 : q));
  }
  if (interpreter.Invoke() != kTfLiteOk) return -1;

  const TfLiteTensor* output = interpreter.output(0);
  int best = 0;
  for (int c = 1; c < kOutputDims[1]; ++c) {  // the scale is positive: argmax on int8 is argmax on x
    if (output->data.int8[c] > output->data.int8[best]) best = c;
  }
  return best;
}
