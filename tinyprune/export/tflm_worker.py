"""Run a model in the real TFLM interpreter, in its own process.

TFLM segfaults (rather than failing cleanly) when the arena is too small for its own
bookkeeping, so every run with an arena size that may be too small happens here, in a
child process whose crash cannot take the caller down.

    python -m tinyprune.export.tflm_worker MODEL.tflite ARENA_BYTES INPUTS.npy [OUTPUTS.npy] [--alt BYTES]

``--alt``: TFLM's alternate decompression memory, a separate region (another RAM bank) that the
DECODE kernel writes LUT-decompressed weights into instead of the arena.

Exit 0: allocation and every invoke succeeded (outputs written if asked); non-zero otherwise.
"""

import sys

import numpy as np


def main(argv: list[str]) -> int:
    alt = 0
    if "--alt" in argv:
        i = argv.index("--alt")
        alt = int(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
    model_path, arena, inputs_path = argv[0], int(argv[1]), argv[2]
    from tflite_micro.python.tflite_micro import runtime

    inputs = np.load(inputs_path)
    try:
        interp = runtime.Interpreter.from_bytes(open(model_path, "rb").read(), arena_size=arena,
                                                alt_decompression_memory_size=alt)
        outputs = []
        for x in inputs:
            interp.set_input(x[None], 0)
            interp.invoke()
            outputs.append(interp.get_output(0)[0].copy())
    except RuntimeError as exc:
        print(f"tflm: {exc}", file=sys.stderr)
        return 1
    if len(argv) > 3:
        np.save(argv[3], np.stack(outputs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
