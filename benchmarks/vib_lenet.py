"""Issue 4 benchmark: VIBNet on LeNet-300-100 (and LeNet-5) / MNIST against Dai et al. 2018.

Train a base model (seeded), VIB-train it with gates on every hidden layer (and, as in the
paper's LeNet-300-100 table, on the 784 input pixels), remove the units with log alpha below
the threshold physically, fold the gates away, and evaluate on the official 10k test set.
Prints a markdown table and writes JSON to benchmarks/out/.

    nice python -m benchmarks.vib_lenet --model lenet_300_100 --gamma 2e-3,5e-3
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.common import MODELS, REPO, load_dataset, markdown_table
from tinyprune.config import FinetuneConfig
from tinyprune.prune.vib import VibConfig, vib_prune
from tinyprune.train import accuracy, fit

PUBLISHED = {  # Dai et al. 2018, Table 1 (LeNet-300-100 on MNIST): units kept, test error
    "lenet_300_100": {"units": "97-71-33", "error": 0.016},
}


def _widths(report: dict) -> str:
    parts = []
    if report["inputs"] is not None:
        parts.append(str(report["inputs"]["inputs_used"]))
    parts += [str(l["channels_after"]) for l in report["layers"] if l["gated"]]
    return "-".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="lenet_300_100", choices=["lenet_300_100", "lenet5", "lenet5_caffe"])
    ap.add_argument("--gamma", default="2e-3", help="comma-separated VIB gammas")
    ap.add_argument("--train-epochs", type=int, default=8)
    ap.add_argument("--train-optimizer", choices=("adam", "sgd"), default="adam",
                    help="base training: adam (--lr) or sgd (Caffe's solver: --train-lr, momentum 0.9, --weight-decay)")
    ap.add_argument("--train-lr", type=float, default=0.05, help="sgd base training learning rate")
    ap.add_argument("--weight-decay", type=float, default=5e-4, help="sgd base training L2")
    ap.add_argument("--layer-gamma", default="", help="per gated layer multipliers of gamma, e.g. 1,1,0.5")
    ap.add_argument("--vib-epochs", type=int, default=10)
    ap.add_argument("--gate-lr", type=float, default=None, help="default: auto (1e-2 on MNIST)")
    ap.add_argument("--lr", type=float, default=1e-3, help="VIB training (and fine-tune at half of it)")
    ap.add_argument("--vib-optimizer", choices=("adam", "sgd"), default="adam",
                    help="VIB training and fine-tune; sgd: momentum 0.9, gates at --lr too, as the authors' code")
    ap.add_argument("--vib-weight-decay", type=float, default=0.0, help="L2 on weights and gates in VIB training")
    ap.add_argument("--threshold", type=float, default=0.0)
    ap.add_argument("--finetune-epochs", type=int, default=2, help="plain fine-tune of the pruned model (0: none)")
    ap.add_argument("--no-input-gates", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="suffix of the JSON file name")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    xtr, ytr, xte, yte = load_dataset("mnist")
    out = REPO / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    tag = "" if args.train_optimizer == "adam" else f"_sgd{args.train_lr:g}_wd{args.weight_decay:g}"
    cache = out / f"vib_base_{args.model}_e{args.train_epochs}{tag}_s{args.seed}.pt"
    torch.manual_seed(args.seed)
    t = time.perf_counter()
    if cache.exists():
        base = MODELS[args.model]()
        base.load_state_dict(torch.load(cache))
        base.eval()
    else:
        sgd = args.train_optimizer == "sgd"
        base = fit(MODELS[args.model](), xtr, ytr, FinetuneConfig(
            epochs=args.train_epochs, lr=args.train_lr if sgd else args.lr, batch_size=128,
            optimizer=args.train_optimizer, weight_decay=args.weight_decay if sgd else 0.0), seed=args.seed)
        torch.save(base.state_dict(), cache)
    base_err = 1 - accuracy(base, xte, yte)
    print(f"# {args.model} on MNIST: base test error {base_err:.2%} ({time.perf_counter() - t:.0f} s)", flush=True)

    rows, runs = [], []
    widths0 = "-".join(([] if args.no_input_gates else ["784"]) +
                       [str(m.out_features if hasattr(m, "out_features") else m.out_channels)
                        for m in base.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][:-1])
    rows.append(["base", widths0, f"{base_err:.2%}", "-", "-", "-", "-"])
    for gamma in [float(g) for g in args.gamma.split(",")]:
        layer_gamma = tuple(float(v) for v in args.layer_gamma.split(",") if v.strip()) or None
        cfg = VibConfig(gamma=gamma, epochs=args.vib_epochs, lr=args.lr, gate_lr=args.gate_lr,
                        threshold=args.threshold, batch_size=100, gate_inputs=not args.no_input_gates,
                        seed=args.seed, layer_gamma=layer_gamma, optimizer=args.vib_optimizer,
                        weight_decay=args.vib_weight_decay)
        t = time.perf_counter()
        pruned, report = vib_prune(base, xtr, ytr, cfg, classes=10)
        secs = time.perf_counter() - t
        err = 1 - accuracy(pruned, xte, yte)
        widths = _widths(report)
        nonzero = int(sum((p != 0).sum() for p in pruned.parameters()))
        err_ft = None
        if args.finetune_epochs:
            # input gates: keep the closed pixels' weight columns at zero while fine-tuning
            first = next(m for m in pruned.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
            dead = (first.weight.detach() == 0).all(0)
            hook = first.weight.register_hook(lambda g: g.masked_fill(dead.expand_as(g), 0.0))
            tuned = fit(pruned, xtr, ytr, FinetuneConfig(
                epochs=args.finetune_epochs, lr=args.lr / 2, batch_size=128, optimizer=args.vib_optimizer,
                weight_decay=args.vib_weight_decay), seed=args.seed)
            hook.remove()
            err_ft = 1 - accuracy(tuned, xte, yte)
        rows.append([f"VIB gamma={gamma:g}", widths, f"{err:.2%}", "-" if err_ft is None else f"{err_ft:.2%}",
                     f"{report['params_after']:,} ({nonzero:,} nonzero) / {report['params_before']:,}",
                     f"{report['macs_after']:,} / {report['macs_before']:,}", f"{secs:.0f}"])
        runs.append({"gamma": gamma, "config": report["config"], "units": widths, "test_error": err,
                     "test_error_finetuned": err_ft, "finetune_epochs": args.finetune_epochs, "params_nonzero": nonzero,
                     "history": report["history"], "layers": report["layers"], "inputs": report["inputs"],
                     "max_abs_diff": report["max_abs_diff"], "params": [report["params_before"], report["params_after"]],
                     "macs": [report["macs_before"], report["macs_after"]], "seconds": secs})
        print(f"gamma {gamma:g}: units {widths}, test error {err:.2%} (fine-tuned: {err_ft}), max |pruned - gated| "
              f"{report['max_abs_diff']:.1e}, {secs:.0f} s", flush=True)
    pub = PUBLISHED.get(args.model)
    if pub:
        rows.append(["published (Dai et al. 2018)", pub["units"], f"{pub['error']:.1%}", "-", "-", "-", "-"])
    print()
    print(markdown_table(["model", "units kept (inputs-hidden...)", "test error",
                          f"after {args.finetune_epochs} fine-tune epochs", "params after / before",
                          "MACs (dense) after / before", "VIB s"], rows))
    (out / f"vib_{args.model}{args.tag}.json").write_text(json.dumps(
        {"model": args.model, "base_test_error": base_err, "train_epochs": args.train_epochs, "runs": runs},
        indent=2) + "\n")


if __name__ == "__main__":
    main()
