"""Tiny models built in code, for tests, docs and the built-in example."""

from tinyprune.testing.models import MODELS, SAMPLE_SHAPES, cnn_bn, concat_net, digits_cnn, dw_residual, mlp

__all__ = ["MODELS", "SAMPLE_SHAPES", "cnn_bn", "concat_net", "digits_cnn", "dw_residual", "mlp"]
