"""Issue 5 benchmark: Deep Compression on LeNet-300-100 and LeNet-5 / MNIST, against the paper's Table 1.

Train the dense model, then tinyprune's Deep Compression stage (magnitude pruning with masks
held during fine-tune -> k-means weight sharing with trained centroids -> Huffman archive),
then the deployable model: int8 TFLite of the clustered weights, LUT-compressed for TFLM,
checked bit-exact in the TFLM interpreter, accuracy measured in TFLM on the test images.
Prints error and compression ratio at each step (P, P+Q, P+Q+H) beside the paper's.

    python -m benchmarks.deepcompress_mnist --model lenet_300_100
    python -m benchmarks.deepcompress_mnist --model lenet5
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import MODELS, REPO, load_dataset, markdown_table
from tinyprune.config import FinetuneConfig
from tinyprune.deepcompress.stage import DeepCompressConfig, run_deepcompress
from tinyprune.export import micro, tflite
from tinyprune.export.lut import lut_compress, verify_bit_exact
from tinyprune.export.onnx import export_onnx
from tinyprune.train import accuracy, fit

# Han et al. 2016, Table 1 / Tables 2-3: weights kept and bits as in the paper
PAPER = {
    "lenet_300_100": {"sparsity": 0.92, "bits": "fc=6", "error": (1.64, 1.58), "ratio": 40},
    "lenet5": {"sparsity": 0.92, "bits": "conv=8,fc=5", "error": (0.80, 0.74), "ratio": 39},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="lenet_300_100", choices=sorted(PAPER))
    ap.add_argument("--train-epochs", type=int, default=6)
    ap.add_argument("--tflm-samples", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    paper = PAPER[args.model]
    xtr, ytr, xte, yte = load_dataset("mnist")
    torch.manual_seed(0)
    t = time.perf_counter()
    base = fit(MODELS[args.model](), xtr, ytr, FinetuneConfig(epochs=args.train_epochs, lr=2e-3, batch_size=128), 0)
    base_err = 100 * (1 - accuracy(base, xte, yte))
    train_s = time.perf_counter() - t
    cfg = DeepCompressConfig(weight_sparsity=paper["sparsity"], bits=paper["bits"], prune_epochs=3,
                             centroid_epochs=2, lut_ready=True)
    t = time.perf_counter()
    res = run_deepcompress(base, xtr, ytr, xte, yte, cfg, seed=0)
    stage_s = time.perf_counter() - t
    errs = {r.name: 100 * (1 - r.accuracy) for r in res.records}
    ratios = res.ratios

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "m.onnx"
        export_onnx(res.model, xtr[:1], onnx_path)
        int8 = tflite.to_int8_tflite(onnx_path, xtr[:300], Path(tmp) / "work")
    lut = lut_compress(int8, max_bits=paper["bits"])
    io = tflite.io_details(int8)
    xq = tflite.quantize(tflite.to_device_layout(xte[:args.tflm_samples]), io["input"]["scale"], io["input"]["zero_point"])
    check, out = verify_bit_exact(int8, lut.model, xq)
    out = out.reshape(len(xq), -1)
    tflm_err = 100 * (1 - (out.argmax(1) == yte[:len(xq)]).mean())

    rows = [
        ["dense (ours / paper)", f"{base_err:.2f} / {paper['error'][0]:.2f}", "1x", ""],
        ["P: pruned", f"{errs['weight_pruned']:.2f}", f"{ratios['P']:.1f}x", ""],
        ["P+Q: + trained quantization", f"{errs['clustered']:.2f}", f"{ratios['P+Q']:.1f}x", ""],
        ["P+Q+H: + Huffman (archive)", f"{errs['huffman']:.2f} / {paper['error'][1]:.2f}", f"{ratios['P+Q+H']:.1f}x",
         f"{paper['ratio']}x"],
        ["deployable int8 + TFLM LUT", f"{tflm_err:.2f} (TFLM, {len(xq)} imgs)",
         f"flash {len(int8):,} -> {len(lut.model):,} B", f"bit-exact: {check['bit_exact']}"],
    ]
    print(f"# {args.model}: weights kept {1 - paper['sparsity']:.0%}, bits {paper['bits']}; "
          f"training {train_s:.0f} s, Deep Compression stage {stage_s:.0f} s")
    print(markdown_table(["step", "test error % (ours / paper)", "compression vs fp32", "paper"], rows))
    print()
    print(markdown_table(["layer", "weights", "kept %", "clusters", "index bits Huffman", "entropy", "bytes"],
                         [[r["name"], r["weights"], f"{r['kept_pct']:.1f}", r["clusters"], f"{r['index_bits_huffman']:.2f}",
                           f"{r['index_entropy']:.2f}", r["bytes"]] for r in res.table]))
    print(f"LUT tensors: " + "; ".join(f"{t.name}: {'%d bits' % t.bits if t.compressed else t.reason}" for t in lut.tensors))
    print(f"TFLM arena {check['arena_before']:,} -> {check['arena_after']:,} B")
    (REPO / "benchmarks" / "out").mkdir(parents=True, exist_ok=True)
    (REPO / "benchmarks" / "out" / f"deepcompress_{args.model}.json").write_text(json.dumps(
        {"base_error": base_err, "errors": errs, "ratios": ratios, "tflm_error": tflm_err, "lut": lut.to_dict(),
         "check": check, "stage_seconds": stage_s}, indent=1))


if __name__ == "__main__":
    main()
