"""Time ``invoke`` in the real TFLM interpreter, in its own process (TFLM can crash its process).

    python -m tinyprune.measure.tflm_timing MODEL.tflite ARENA_BYTES REPEATS WARMUP [BUDGET_S]

Sets every input to random in-range data, runs WARMUP untimed invokes, then up to REPEATS timed
ones (fewer when BUDGET_S seconds have passed after five), and prints one JSON line
``{"seconds": [...]}`` on stdout. Exit 0 on success, 1 when allocation or invoke fails.
"""

import json
import sys
import time


def main(argv: list[str]) -> int:
    model_path, arena, repeats, warmup = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    budget = float(argv[4]) if len(argv) > 4 else 5.0
    import numpy as np
    from tflite_micro.python.tflite_micro import runtime

    from tinyprune.measure.graph import read_graph
    from tinyprune.measure.latency import random_input

    data = open(model_path, "rb").read()
    graph = read_graph(data)
    try:
        interp = runtime.Interpreter.from_bytes(data, arena_size=arena)
        for i, t in enumerate(graph.inputs):
            info = graph.tensors[t]
            dtype = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8, "int16": np.int16,
                     "int32": np.int32, "bool": np.bool_}.get(info.dtype, np.float32)
            interp.set_input(random_input(info.shape, dtype, seed=i), i)
        for _ in range(warmup):
            interp.invoke()
        seconds, start = [], time.perf_counter()
        for n in range(repeats):
            t0 = time.perf_counter()
            interp.invoke()
            seconds.append(time.perf_counter() - t0)
            if n >= 4 and time.perf_counter() - start > budget:
                break
    except RuntimeError as exc:
        print(f"tflm: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
