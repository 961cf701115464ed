// Running a tinyprune model with TensorFlow Lite for Microcontrollers.
//
// Copy model_data.cc, model_data.h and model_ops.h from the compress output folder (or the
// model_lut_* files when report.json's "deployed" names model_int8_lut.tflite, and include those
// instead) into your project next to this file, and build it with TFLM.
#include <cmath>
#include <cstdint>

#include "model_data.h"
#include "model_ops.h"
#include "tensorflow/lite/micro/micro_interpreter.h"

namespace {
alignas(16) uint8_t tensor_arena[kTensorArenaSize];  // the measured arena plus a margin
}

// Classifies one input (floats in the model's NHWC layout); returns the class, or -1 on error.
int Classify(const float* x, int n) {
  static tflite::MicroMutableOpResolver<kModelOpCount> resolver;
  static bool registered = RegisterModelOps(resolver) == kTfLiteOk;  // exactly the model's ops
  if (!registered) return -1;
  static tflite::MicroInterpreter interpreter(tflite::GetModel(g_model_data), resolver, tensor_arena,
                                              kTensorArenaSize);
  static bool allocated = interpreter.AllocateTensors() == kTfLiteOk;
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
