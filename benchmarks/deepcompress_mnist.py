"""Deep Compression on LeNet-300-100 and Caffe's LeNet-5 / MNIST against Han, Mao, Dally 2016.

Train the dense model, then tinyprune's Deep Compression stage as the paper runs it: iterative
magnitude pruning toward the per-layer rates of the paper's Tables 2 and 3 (prune-retrain
rounds, masks held), k-means weight sharing at the paper's bits with trained centroids, Huffman
coding. Then the deployable model: int8 TFLite of the clustered weights, LUT-compressed for
TFLM, checked bit-exact in the TFLM interpreter, its error measured in TFLM on the whole test
set beside the clustered float model's on the same images.

    python -m benchmarks.deepcompress_mnist --model lenet_300_100
    python -m benchmarks.deepcompress_mnist --model lenet5_caffe

The same settings from the CLI (after training the dense model yourself):
    tinyprune compress lenet.pt --data mnist.npz --sparsity 0 --archive --weight-sparsity 0.92 \
        --layer-sparsity 1=0.92,3=0.91,5=0.74 --prune-rounds 4 --prune-epochs 4 --bits 6
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import REPO, cached_fit, load_dataset, markdown_table
from tinyprune.config import FinetuneConfig
from tinyprune.deepcompress.stage import DeepCompressConfig, run_deepcompress
from tinyprune.export import tflite
from tinyprune.export.lut import lut_compress, verify_bit_exact
from tinyprune.export.onnx import export_onnx
from tinyprune.train import accuracy, predict

# Han et al. 2016: Table 2 (LeNet-300-100) and Table 3 (LeNet-5), weights removed per layer
# (module name -> fraction), bits per layer kind, index (gap) bits, errors and the ratio.
PAPER = {
    "lenet_300_100": {"layers": {"1": 0.92, "3": 0.91, "5": 0.74}, "kept_pct": {"1": 8, "3": 9, "5": 26},
                      "bits": "fc=6", "gap_bits": "5", "error": (1.64, 1.58), "ratio": 40},
    "lenet5_caffe": {"layers": {"0": 0.34, "3": 0.88, "7": 0.92, "9": 0.81},
                     "kept_pct": {"0": 66, "3": 12, "7": 8, "9": 19},
                     "bits": "conv=8,fc=5", "gap_bits": "5", "error": (0.80, 0.74), "ratio": 39},
}
OUT = REPO / "benchmarks" / "out"


def dense_model(name: str, xtr, ytr, cfg: FinetuneConfig, seed: int = 0):
    """The trained dense model, kept in benchmarks/out so a rerun of the compression skips it."""
    tag = "" if cfg.optimizer == "adam" else f"_sgd{cfg.lr:g}_wd{cfg.weight_decay:g}"
    return cached_fit(name, xtr, ytr, cfg, seed, OUT / f"dc_dense_{name}_{cfg.epochs}ep{tag}_s{seed}.pt")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="lenet_300_100", choices=sorted(PAPER))
    ap.add_argument("--train-epochs", type=int, default=20)
    ap.add_argument("--train-optimizer", choices=("adam", "sgd"), default="adam",
                    help="dense training: adam (lr 1e-3) or sgd (Caffe's solver: --train-lr, momentum 0.9, --weight-decay)")
    ap.add_argument("--train-lr", type=float, default=1e-3)
    ap.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="of the pruning rounds")
    ap.add_argument("--weight-decay", type=float, default=0.0, help="L2, dense training and pruning rounds")
    ap.add_argument("--rounds", type=int, default=4, help="prune-retrain rounds")
    ap.add_argument("--round-epochs", type=int, default=4, help="masked fine-tune epochs per round")
    ap.add_argument("--centroid-epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=5e-4, help="learning rate of the pruning rounds")
    ap.add_argument("--bits", default=None, help="override the paper's bits")
    ap.add_argument("--tflm-samples", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0, help="of the dense training and of the compression")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    paper = PAPER[args.model]
    bits = args.bits or paper["bits"]
    t_all = time.perf_counter()
    xtr, ytr, xte, yte = load_dataset("mnist")
    base, train_s = dense_model(args.model, xtr, ytr, FinetuneConfig(
        epochs=args.train_epochs, lr=args.train_lr, batch_size=128, optimizer=args.train_optimizer,
        weight_decay=args.weight_decay if args.train_optimizer == "sgd" else 0.0), args.seed)
    base_err = 100 * (1 - accuracy(base, xte, yte))
    cfg = DeepCompressConfig(weight_sparsity=max(paper["layers"].values()), overrides=paper["layers"], bits=bits,
                             gap_bits=paper["gap_bits"], prune_rounds=args.rounds, prune_epochs=args.round_epochs,
                             centroid_epochs=args.centroid_epochs, lr=args.lr, batch_size=64, lut_ready=True,
                             optimizer=args.optimizer, weight_decay=args.weight_decay)
    t = time.perf_counter()
    res = run_deepcompress(base, xtr, ytr, xte, yte, cfg, seed=args.seed)
    stage_s = time.perf_counter() - t
    errs = {r.name: 100 * (1 - r.accuracy) for r in res.records}
    ratios = res.ratios

    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "m.onnx"
        export_onnx(res.model, xtr[:1], onnx_path)
        int8 = tflite.to_int8_tflite(onnx_path, xtr[:500], Path(tmp) / "work")
    lut = lut_compress(int8, max_bits=bits)
    io = tflite.io_details(int8)
    n = min(args.tflm_samples, len(xte))
    xq = tflite.quantize(tflite.to_device_layout(xte[:n]), io["input"]["scale"], io["input"]["zero_point"])
    check, out = verify_bit_exact(int8, lut.model, xq)
    tflm_err = 100 * (1 - (out.reshape(n, -1).argmax(1) == yte[:n]).mean())
    float_err_same = 100 * (1 - (predict(res.model, xte[:n]) == yte[:n]).mean())
    export_s = time.perf_counter() - t
    wall_s = time.perf_counter() - t_all

    rounds = res.record("weight_pruned").details["rounds"]
    # The paper's tables count weights only; our ratios count every tensor (biases raw fp32) and
    # every archive byte. Weights alone, like the paper: dense fp32 weights / their encoded bytes.
    weights_ratio = 4 * res.table[-1]["weights"] / res.table[-1]["bytes"]
    rows = [
        ["dense (ours / paper)", f"{base_err:.2f} / {paper['error'][0]:.2f}", "1x", ""],
        *[[f"P round {r['round']}/{len(rounds)}: {100 * r['kept_fraction']:.1f} % kept",
           f"{100 * (1 - r['accuracy']):.2f}", "", ""] for r in rounds],
        ["P: pruned", f"{errs['weight_pruned']:.2f}", f"{ratios['P']:.1f}x", "12x"],
        ["P+Q: + trained quantization", f"{errs['clustered']:.2f}", f"{ratios['P+Q']:.1f}x", ""],
        ["P+Q+H: + Huffman (archive)", f"{errs['huffman']:.2f} / {paper['error'][1]:.2f}", f"{ratios['P+Q+H']:.1f}x",
         f"{paper['ratio']}x"],
        ["P+Q+H, weights only (the paper's count)", "", f"{weights_ratio:.1f}x", f"{paper['ratio']}x"],
        ["deployable int8 + TFLM LUT", f"{tflm_err:.2f} (TFLM; clustered float {float_err_same:.2f}, {n} imgs)",
         f"flash {len(int8):,} -> {len(lut.model):,} B", f"bit-exact: {check['bit_exact']}"],
    ]
    print(f"# {args.model}: per-layer rates {paper['layers']}, bits {bits}, gap bits {paper['gap_bits']}; "
          f"dense: {args.train_epochs} epochs {args.train_optimizer} lr {args.train_lr}; {args.rounds} rounds x "
          f"{args.round_epochs} epochs ({args.optimizer} lr {args.lr}, weight decay {args.weight_decay}), {args.centroid_epochs} centroid "
          f"epochs; training {train_s:.0f} s, Deep Compression stage {stage_s:.0f} s, export+TFLM {export_s:.0f} s, "
          f"wall {wall_s:.0f} s")
    print(markdown_table(["step", "test error % (ours / paper)", "compression vs fp32", "paper"], rows))
    print()
    names = {f"{k}.weight": v for k, v in paper["kept_pct"].items()}
    print(markdown_table(["layer", "weights", "kept % (ours / paper)", "clusters", "index bits Huffman", "entropy",
                          "bytes"],
                         [[r["name"], r["weights"], f"{r['kept_pct']:.1f} / {names.get(r['name'], 8)}", r["clusters"],
                           f"{r['index_bits_huffman']:.2f}", f"{r['index_entropy']:.2f}", r["bytes"]]
                          for r in res.table]))
    print("LUT tensors: " + "; ".join(f"{t.name}: {'%d bits' % t.bits if t.compressed else t.reason}"
                                      for t in lut.tensors))
    print(f"TFLM arena {check['arena_before']:,} -> {check['arena_after']:,} B")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"deepcompress_{args.model}{args.tag}.json").write_text(json.dumps(
        {"base_error": base_err, "errors": errs, "ratios": ratios, "tflm_error": tflm_err,
         "clustered_float_error_same_images": float_err_same, "weights_only_ratio": weights_ratio, "rounds": rounds, "table": res.table,
         "lut": lut.to_dict(), "check": check, "config": cfg.to_dict(), "train_seconds": train_s,
         "stage_seconds": stage_s, "wall_seconds": wall_s, "seed": args.seed}, indent=1, default=str))


if __name__ == "__main__":
    main()
