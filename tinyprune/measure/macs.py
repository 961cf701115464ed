"""MAC counts, on the PyTorch model and on the TFLite graph the device runs.

A MAC is one multiply-accumulate of a conv / depthwise conv / fully connected layer; pooling,
activations, adds and (de)quantization are not MACs. FLOPs = 2 x MACs for these ops.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn


def count_torch(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) of ``model`` for one input sample.

    MACs are counted with forward hooks on the conv and linear modules, by the same rule as
    ``count_tflite`` uses on the exported graph, so the two agree once batch norm is folded.
    Parameters are every parameter of the model (batch-norm scales included).
    """
    macs = 0

    def hook(module, inputs, output):
        nonlocal macs
        per_sample = output.numel() // output.shape[0]
        if isinstance(module, nn.Linear):
            macs += per_sample * module.in_features
        else:
            macs += per_sample * (module.in_channels // module.groups) * int(np.prod(module.kernel_size))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    try:
        with torch.no_grad():
            model.eval()(example[:1])
    finally:
        for h in handles:
            h.remove()
    return int(macs), int(sum(p.numel() for p in model.parameters()))


def _shape(tensors: dict, index: int) -> tuple[int, ...]:
    return tuple(int(d) for d in tensors[index]["shape"])


def count_tflite(model_bytes: bytes) -> dict:
    """Per-op MACs and total parameters of a TFLite flatbuffer, read from its own graph."""
    from tinyprune.export.tflite import litert_interpreter

    it = litert_interpreter(model_bytes)
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    layers = []
    params = 0
    weight_ids: set[int] = set()
    for op in it._get_ops_details():
        name = op["op_name"]
        ins = [i for i in op["inputs"] if i >= 0]
        out = _shape(tensors, op["outputs"][0])
        macs = 0
        if name == "CONV_2D":
            kh, kw, cin = _shape(tensors, ins[1])[1:]
            macs = int(np.prod(out)) * kh * kw * cin
        elif name == "DEPTHWISE_CONV_2D":
            _, kh, kw, _ = _shape(tensors, ins[1])
            macs = int(np.prod(out)) * kh * kw
        elif name == "FULLY_CONNECTED":
            units, depth = _shape(tensors, ins[1])
            rows = int(np.prod(out)) // units
            macs = rows * units * depth
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            for i in ins[1:]:
                if i not in weight_ids:
                    weight_ids.add(i)
                    params += int(np.prod(_shape(tensors, i)))
        layers.append({"op": name, "output_shape": list(out), "macs": macs})
    return {"macs": sum(l["macs"] for l in layers), "params": params, "layers": layers}
