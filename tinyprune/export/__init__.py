"""Export: PyTorch -> ONNX -> full-int8 TFLite -> TFLM check and C array."""
