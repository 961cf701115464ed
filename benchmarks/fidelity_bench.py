"""Issue 11 benchmark: does the int8 model on the device compute what its float model computes?

For each model: train it (cached in benchmarks/out/fidelity/), then run ``tinyprune compress``
(``--no-deepcompress``) at 0 % and 50 % MACs removed on a 20k-image training part and the first
2,000 official test images. The compress run is the product as shipped (every remedy on); the same
float model is then exported again with the remedies off, one at a time, and with 1,000
calibration samples, so that each remedy is measured on the very same weights. Every row: the float accuracy of the exported model, int8 accuracy in TFLM (the
accuracy of record) and in LiteRT's optimized kernels, their agreement with TFLM, the output SQNR
and the layer that loses most SQNR.

    python -m benchmarks.fidelity_bench                       # all models, about 60 min on 2 cores
    python -m benchmarks.fidelity_bench --models densenet --levels 0.5

Writes benchmarks/out/fidelity.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import MODELS, REPO, load_dataset, markdown_table
from tinyprune.api import ModelSource, compress
from tinyprune.config import CompressConfig, FinetuneConfig, PruneConfig
from tinyprune.train import accuracy, fit

OUT = REPO / "benchmarks" / "out" / "fidelity"
DATASET = {"lenet5": "mnist", "resnet8": "fashion-mnist", "vgg_small": "fashion-mnist", "densenet": "fashion-mnist",
           "ds_cnn": "fashion-mnist"}
TRAIN, TEST = 20_000, 2_000


def trained(name: str, epochs: int) -> tuple[Path, Path]:
    """(model .pt2, data .npz) of the model trained on its dataset (cached)."""
    OUT.mkdir(parents=True, exist_ok=True)
    xtr, ytr, xte, yte = load_dataset(DATASET[name])
    xtr, ytr, xte, yte = xtr[:TRAIN], ytr[:TRAIN], xte[:TEST], yte[:TEST]
    model_path, data_path = OUT / f"{name}_{epochs}ep.pt2", OUT / f"{DATASET[name]}.npz"
    if not data_path.exists():
        np.savez(data_path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    if not model_path.exists():
        torch.manual_seed(0)
        model = MODELS[name]()
        fit(model, xtr, ytr, FinetuneConfig(epochs=epochs), seed=0)
        torch.export.save(torch.export.export(model.eval(), (torch.from_numpy(xtr[:1]),)), model_path)
    return model_path, data_path


# (label, BN as depthwise, equalize concatenations, calibration samples); the first is what ships
VARIANTS = (("plain export, 200 calib", False, False, 200),
            ("BN as depthwise only", True, False, 200),
            ("shipped, 1000 calib", True, True, 1000))


def int8_row(model, splits, bn_as_depthwise: bool, equalize: bool, calib: int, work: Path) -> dict:
    """Export ``model`` as compress does, with the remedies switched as given; measure it like compress."""
    from tinyprune.export import micro, rewrite, tflite, verify
    from tinyprune.export.fidelity import compare_layers
    from tinyprune.export.onnx import export_onnx

    example = torch.from_numpy(splits.x_train[:1])
    x_calib = splits.x_train[:calib]  # what compress calibrates with: the head of the shuffled training part
    source = model
    if equalize:
        source = rewrite.equalize_concats(source, torch.from_numpy(x_calib))[0]
    if bn_as_depthwise:
        source = rewrite.for_int8(source, example)[0]
    export_onnx(source, splits.x_train[:1], work / "m.onnx")
    blob = tflite.to_int8_tflite(work / "m.onnx", x_calib, work / "conv")
    shutil.rmtree(work / "conv")
    layers = compare_layers(source, blob, x_calib)
    xq = tflite.device_input(blob, splits.x_eval)
    record, _ = verify.device_accuracy(blob, splits.x_eval, splits.y_eval, micro.smallest_arena(blob, xq[:1]))
    return {**record, "output_sqnr_db": layers["output_sqnr_db"], "blame": layers["blame"], "worst": layers["worst"]}


def run(name: str, level: float, epochs: int, finetune: int) -> list[dict]:
    from tinyprune.config import DataConfig
    from tinyprune.data import load_npz, prepare
    from tinyprune.lift import to_module
    from tinyprune.load import load_model

    model_path, data_path = trained(name, epochs)
    out = OUT / f"{name}_{int(level * 100)}"
    cfg = CompressConfig(prune=PruneConfig("l1", level, compensate=False), finetune=FinetuneConfig(epochs=finetune if level else 0))
    t = time.perf_counter()
    report = compress(ModelSource(model_path), cfg, data_path=data_path, out_dir=out).to_dict()
    seconds = time.perf_counter() - t
    int8 = next(s for s in report["stages"] if s["name"] == "int8")
    fid = int8["details"]["fidelity"]
    float_acc = fid["float_accuracy"]
    rows = [{"model": name, "level": level, "variant": "shipped (compress)", "float": float_acc,
             "seconds": round(seconds, 1), **int8["details"]["tflm"],
             **{k: fid[k] for k in ("output_sqnr_db", "blame", "worst", "concat_inputs_equalized",
                                    "batchnorms_as_depthwise")}}]
    splits = prepare(load_npz(data_path), load_model(model_path).callable(), DataConfig(), cfg.seed)
    tuned = to_module(load_model(out / "model_pruned.pt2"), torch.from_numpy(splits.x_train[:1])).eval()
    assert abs(accuracy(tuned, splits.x_eval, splits.y_eval) - float_acc) < 1e-9  # the same float model
    work = out / "_bench"
    work.mkdir(exist_ok=True)
    for variant, bn, eq, calib in VARIANTS:
        rows.append({"model": name, "level": level, "variant": variant, "float": float_acc,
                     **int8_row(tuned, splits, bn, eq, calib, work)})
    shutil.rmtree(work)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="lenet5,resnet8,vgg_small,densenet,ds_cnn")
    ap.add_argument("--levels", default="0,0.5")
    ap.add_argument("--train-epochs", type=int, default=3)
    ap.add_argument("--finetune-epochs", type=int, default=3)
    args = ap.parse_args()
    path = REPO / "benchmarks" / "out" / "fidelity.json"
    names = args.models.split(",")
    # rows of other models from earlier runs are kept: one model can be re-run alone
    results = [r for r in json.loads(path.read_text()) if r["model"] not in names] if path.exists() else []
    for name in names:
        for level in (float(v) for v in args.levels.split(",")):
            for row in run(name, level, args.train_epochs, args.finetune_epochs):
                print(json.dumps(row), flush=True)
                results.append(row)
            path.write_text(json.dumps(results, indent=1))
    header = ["model", "MACs removed", "int8 export", "float", "int8 TFLM", "Δ pts", "LiteRT opt.", "agree (opt.)",
              "agree (ref.)", "out SQNR dB", "most SQNR lost at"]
    table = [[r["model"], f"{r['level']:.0%}", r["variant"], f"{r['float']:.2%}", f"{r['accuracy']:.2%}",
              f"{(r['accuracy'] - r['float']) * 100:+.2f}", f"{r['litert_optimized_accuracy']:.2%}",
              f"{r['agreement_with_litert_optimized']:.2%}", f"{r['agreement_with_litert']:.2%}",
              r["output_sqnr_db"], f"{r['blame']['layer']} ({r['blame']['sqnr_lost_db']} dB)" if r["blame"] else "-"]
             for r in results]
    print(markdown_table(header, table))


if __name__ == "__main__":
    main()
