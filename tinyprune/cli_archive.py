"""The `--archive` options of compress/demo: Deep Compression's storage/OTA product (model.tpz).

Kept apart from cli.py because they shape one stage's config only
(tinyprune.deepcompress.stage.DeepCompressConfig) and are checked together.
"""

from __future__ import annotations

import argparse

from tinyprune.cli_types import at_least, sparsity_arg
from tinyprune.errors import ConfigError

# argparse dest -> DeepCompressConfig field; a flag given without --archive is refused
_FIELDS = {"weight_sparsity": "weight_sparsity", "bits": "bits", "layer_sparsity": "overrides",
           "prune_rounds": "prune_rounds", "prune_epochs": "prune_epochs", "centroid_epochs": "centroid_epochs",
           "prune_lr": "lr", "prune_optimizer": "optimizer", "prune_weight_decay": "weight_decay"}


def layer_sparsity_arg(text: str) -> dict[str, float]:
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"expected LAYER=FRACTION pairs, e.g. 0=0.92,2=0.91, got {item!r}")
        out[name.strip()] = sparsity_arg(value)
    if not out:
        raise argparse.ArgumentTypeError("expected LAYER=FRACTION pairs, e.g. 0=0.92,2=0.91")
    return out


def add_archive_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--archive", action="store_true",
                   help="also write model.tpz: Deep Compression's storage/OTA archive (weight pruning, "
                        "weight sharing, Huffman coding), reported with its own bytes and accuracy")
    p.add_argument("--weight-sparsity", type=sparsity_arg, default=None,
                   help="--archive: fraction of each layer's remaining weights set to zero by magnitude (default 0.5)")
    p.add_argument("--layer-sparsity", type=layer_sparsity_arg, default=None, metavar="LAYER=F,...",
                   help="--archive: per-layer fractions by module name, e.g. 0=0.34,3=0.88 (the paper's per-layer "
                        "rates); other layers use --weight-sparsity")
    p.add_argument("--prune-rounds", type=at_least(1), default=None,
                   help="--archive: prune-retrain rounds toward the rates, each removing the same share of what is "
                        "left (default 1; Han et al. prune iteratively)")
    p.add_argument("--prune-epochs", type=at_least(0), default=None,
                   help="--archive: masked fine-tune epochs per pruning round (default 2)")
    p.add_argument("--prune-optimizer", choices=("adam", "sgd"), default=None,
                   help="--archive: optimizer of the masked fine-tune (default adam; sgd: momentum 0.9, Caffe's solver)")
    p.add_argument("--prune-lr", type=float, default=None,
                   help="--archive: learning rate of the masked fine-tune, cosine-annealed per round (default 1e-3)")
    p.add_argument("--prune-weight-decay", type=float, default=None,
                   help="--archive: L2 weight decay during the masked fine-tune (default 0)")
    p.add_argument("--centroid-epochs", type=at_least(0), default=None,
                   help="--archive: epochs of shared-centroid fine-tune (default 2)")
    p.add_argument("--bits", default=None,
                   help="--archive: shared-weight index bits, one number or per kind, e.g. conv=8,fc=5 "
                        "(default, as in the paper)")


def archive_config(args):
    """The DeepCompressConfig the flags ask for, None without --archive; ConfigError on a stray flag."""
    given = {dest: getattr(args, dest) for dest in _FIELDS if getattr(args, dest) is not None}
    if not args.archive:
        if given:
            flags = ", ".join("--" + dest.replace("_", "-") for dest in given)
            raise ConfigError(f"{flags} shape{'s' if len(given) == 1 else ''} the .tpz archive; add "
                              "--archive (the device model's LUT bits are searched, see --lut-bits)")
        return None
    from tinyprune.deepcompress.stage import DeepCompressConfig

    fields = {_FIELDS[dest]: value for dest, value in given.items()}
    fields.setdefault("weight_sparsity", 0.5)
    fields.setdefault("bits", "conv=8,fc=5")
    return DeepCompressConfig(**fields)
