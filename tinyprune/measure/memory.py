"""Memory: flash and RAM of a model, and the planned peak of live activations.

The RAM number that counts for a TFLite model is the smallest TFLM arena with which allocate and
invoke succeed, found by bisection in the real interpreter (``tinyprune.export.micro.smallest_arena``).
The planned peak computed here (the largest sum of simultaneously live activation tensors in
execution order) is a lower bound on that arena, shown beside it and used where no arena can be
measured (ONNX and PyTorch graphs, or an op TFLM lacks).
"""

from __future__ import annotations

import numpy as np


def _peak(order_len: int, tensors: dict[str, tuple[int, int, int]]) -> int:
    """tensors: name -> (bytes, first op index it is live at, last op index it is live at)."""
    if order_len == 0:
        return sum(b for b, _, _ in tensors.values())
    live = np.zeros(order_len, dtype=np.int64)
    for nbytes, first, last in tensors.values():
        live[max(first, 0):max(last, first, 0) + 1] += nbytes
    return int(live.max())


def tflite_peak_activations(graph) -> int:
    """Peak bytes of live non-constant tensors over the ops of the main subgraph."""
    n = len(graph.ops)
    spans: dict[str, list[int]] = {}

    def touch(t: int, i: int):
        info = graph.tensors[t]
        if info.constant:
            return
        span = spans.setdefault(t, [i, i, info.nbytes])
        span[0], span[1] = min(span[0], i), max(span[1], i)

    for t in graph.inputs:
        touch(t, 0)
    for i, op in enumerate(graph.ops):
        for t in list(op.inputs) + list(op.outputs):
            if t >= 0:
                touch(t, i)
    for t in graph.outputs:
        touch(t, n - 1)
    return _peak(n, {k: (v[2], v[0], v[1]) for k, v in spans.items()})


def onnx_peak_activations(model, layers: list[dict]) -> int:
    """Peak bytes of live activations of an ONNX graph (shapes from the layer records)."""
    g = model.graph
    consts = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    nodes = [n for n in g.node if n.op_type != "Constant"]
    sizes: dict[str, int] = {}
    for node, layer in zip(nodes, layers):
        acts = [x for x in node.input if x and x not in consts]
        per_elem = max(layer["activation_bytes"], 1) / max(
            sum(int(np.prod(s)) for s in layer["input_shapes"] + layer["output_shapes"]), 1)
        for name, shape in zip(acts, layer["input_shapes"]):
            sizes.setdefault(name, int(np.prod(shape) * per_elem))
        for name, shape in zip([o for o in node.output if o], layer["output_shapes"]):
            sizes[name] = int(np.prod(shape) * per_elem)
    spans: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in [x for x in list(node.input) + list(node.output) if x and x not in consts]:
            span = spans.setdefault(name, [i, i])
            span[0], span[1] = min(span[0], i), max(span[1], i)
    for o in g.output:
        if o.name in spans:
            spans[o.name][1] = len(nodes) - 1
    return _peak(len(nodes), {k: (sizes.get(k, 0), v[0], v[1]) for k, v in spans.items()})


def layer_peak_activations(layers: list[dict]) -> int:
    """Largest input + output activation bytes of one layer (no graph: skip connections ignored)."""
    return max((l["activation_bytes"] for l in layers), default=0)
