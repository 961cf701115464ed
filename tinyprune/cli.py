"""Command line: parse arguments, call ``tinyprune.api``, print. Errors become exit codes.

Exit codes: 0 success; 1 budget exceeded (check); 2 bad input (file, data, option, target);
3 export failure (ONNX, TFLite, TFLM); 70 internal error (a bug: please report it);
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tinyprune import __version__
from tinyprune.cli_archive import add_archive_options, archive_config
from tinyprune.cli_progress import progress_display
from tinyprune.cli_types import sparsity_arg
from tinyprune.errors import INTERNAL_ERROR_EXIT, ConfigError, InputError, TinypruneError

EPILOG = "exit codes: 0 ok, 1 budget exceeded, 2 bad input, 3 export failure, 70 internal error"


def _cache_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where analyses of a model on its data are kept for the next run (default $TINYPRUNE_CACHE, "
                        "else ~/.cache/tinyprune)")
    p.add_argument("--no-cache", action="store_true", help="measure every analysis afresh and keep none")


def _cache_dir(args) -> str | None:
    if args.no_cache:
        if args.cache_dir is not None:
            raise ConfigError("--no-cache and --cache-dir contradict each other; give one")
        return None
    from tinyprune.information.cache import default_cache_dir  # light: numpy and torch only when used

    return str(args.cache_dir or default_cache_dir())


def _model_and_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="the model file")
    p.add_argument("--data", type=Path, help=".npz with x,y or x_train,y_train,x_test,y_test (NCHW or NHWC)")
    p.add_argument("--arch", help="module:factory (the current folder is importable) or path/to/file.py:factory "
                                   "that builds the model, for a state_dict file")
    p.add_argument("--trust-code", "--trust-pickle", dest="trust_code", action="store_true",
                   help="load a file that runs its own code: a pickle needing classes outside torch.nn, or "
                        "TorchScript (RUNS ITS CODE: trusted files only)")
    p.add_argument("--layout", choices=("auto", "nchw", "nhwc"), default="auto", help="layout of x in --data")
    p.add_argument("--task", choices=("classify", "regress", "reconstruct"), default=None,
                   help="what the model does (default: from the data: integer y classify, float y regress, "
                        "x only reconstruct, e.g. an anomaly-detection autoencoder)")


def _common(p: argparse.ArgumentParser) -> None:
    _cache_flags(p)
    p.add_argument("--runtime", default=None,
                   help="inference engine the latency is predicted for, any case, with or without a version "
                        "(default tflm: TFLM + CMSIS-NN as the hand-off files build it; see `tinyprune runtimes`)")
    p.add_argument("--clock-mhz", type=float, default=None, help="the board's clock, overriding the target's")
    p.add_argument("--target", default="cortex-m4", help="microcontroller target (see `tinyprune targets`)")
    p.add_argument("--out", type=Path, help="output folder (replaced only when the run succeeds)")
    p.add_argument("--sparsity", type=sparsity_arg, default=0.5, help="fraction of MACs to remove (default 0.5)")
    p.add_argument("--criterion", default="flow", help="channel importance criterion (default flow; see `tinyprune criteria`)")
    p.add_argument("--finetune-epochs", type=int, default=None, help="fine-tune epochs after pruning")
    p.add_argument("--at-init", action="store_true",
                   help="prune a freshly re-initialized copy of the model with the data (pruning before training), "
                        "then train it for --finetune-epochs")
    p.add_argument("--compensate", action=argparse.BooleanOptionalAction, default=True,
                   help="before each channel goes, fold what the kept channels predict of it into the layers that "
                        "read it (least squares on the analysis samples; default on, --no-compensate: plain removal)")
    p.add_argument("--seed", type=int, default=0, help="seed for splits, pruning and training (default 0)")
    p.add_argument("--no-deepcompress", action="store_true",
                   help="skip weight sharing (the LUT-compressed int8 model for TFLM) and the archive")
    p.add_argument("--max-accuracy-drop", type=float, default=1.0, metavar="POINTS",
                   help="held-out accuracy points the deployed int8 model may lose against the original "
                        "(default 1.0); pruning backs off and weight sharing widens its indices to stay within it")
    p.add_argument("--prefer", choices=("auto", "ram", "flash"), default="auto",
                   help="what a LUT model may trade: it saves flash but needs RAM for the decoded weights. auto "
                        "(default): keep the plain int8 model where more than half the flash is free and RAM is the "
                        "tighter resource; flash: take the saving whatever the RAM; ram: never trade")
    p.add_argument("--lut-bits", type=int, default=None,
                   help="fewest LUT index bits weight sharing tries per layer (default 4; up to 7)")
    add_archive_options(p)
    p.add_argument("--fit", action="store_true",
                   help="search the MAC reduction (instead of --sparsity) for the most accurate deployed model that "
                        "fits the target's flash and RAM and the --max-* budgets; exit 1 when nothing fits")
    p.add_argument("--max-flash", default=None,
                   help="--fit: firmware flash budget (model + runtime code), e.g. 128KiB (default: the target's)")
    p.add_argument("--max-ram", default=None,
                   help="--fit: firmware RAM budget (arena + stack and static data), e.g. 48KiB (default: the target's)")
    p.add_argument("--max-latency-ms", type=float, default=None, help="--fit: predicted latency budget on the target")
    p.add_argument("--max-energy-uj", type=float, default=None, help="--fit: predicted energy budget per inference")
    p.add_argument("--calib-samples", type=int, default=None,
                   help="training samples that calibrate the int8 conversion (default 200)")
    p.add_argument("--plain-export", action="store_true",
                   help="convert the float model to int8 as it is, without the float-exact rewrites that keep "
                        "int8 close to float (BatchNorms after no conv as depthwise convs, concatenation inputs "
                        "scaled to the shared int8 range)")
    _criterion_options(p)
    p.add_argument("--plane", action="store_true",
                   help="record the information plane during fine-tuning (plane.json, plane.png)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--json", action="store_true", help="print report.json on stdout instead of the table")


def _flag_value(default):
    if isinstance(default, bool):
        def parse(text: str) -> bool:
            if text.lower() in ("true", "1", "yes", "on"):
                return True
            if text.lower() in ("false", "0", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
        return parse
    return type(default) if isinstance(default, (int, float)) else str


def _criterion_options(p: argparse.ArgumentParser) -> None:
    """One flag per option of every criterion (``--vib-gamma``), from the criteria's configs."""
    from tinyprune.prune import protocol  # light: no torch

    for name, (criterion, option, default) in protocol.option_flags().items():
        p.add_argument(name, dest=f"option:{criterion}:{option}", type=_flag_value(default), default=None,
                       metavar=type(default).__name__.upper(),
                       help=f"--criterion {criterion}: {option.replace('_', ' ')} (default {default})")


class OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line (exit 2), like every other error, instead of the usage block."""

    def error(self, message: str):
        sys.stderr.write(f"tinyprune: error: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="tinyprune",
        description="Prune, quantize and export PyTorch models for microcontrollers (TFLite Micro).",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"tinyprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train a small CNN on the built-in digits and compress it", epilog=EPILOG)
    _common(demo)

    comp = sub.add_parser(
        "compress", help="prune, fine-tune and export a model to int8 TFLite for a target", epilog=EPILOG,
        description="MODEL: torch.save(model) of torch.nn classes (loaded safely), a TorchScript file, "
                    "a torch.export .pt2 program, or a state_dict with --arch.",
    )
    _model_and_data(comp)
    _common(comp)

    from tinyprune import cli_sweep  # light: no torch or ray at import

    cli_sweep.add_parser(sub, _model_and_data, _common, EPILOG)

    ana = sub.add_parser("analyze", help="per-layer and per-channel MI with the labels; writes mi.json and mi.png",
                         epilog=EPILOG)
    ana.add_argument("model", type=Path, help="the model file (same formats as compress)")
    ana.add_argument("--data", type=Path, required=True, help=".npz with x,y (as for compress)")
    ana.add_argument("--arch", help="module:factory or path/to/file.py:factory, for a state_dict file")
    ana.add_argument("--trust-code", "--trust-pickle", dest="trust_code", action="store_true",
                    help="as for compress (RUNS THE FILE'S CODE)")
    ana.add_argument("--layout", choices=("auto", "nchw", "nhwc"), default="auto")
    ana.add_argument("--out", type=Path, help="output folder (default tinyprune-out/<stem>-mi)")
    ana.add_argument("--seed", type=int, default=0)
    ana.add_argument("--criterion", default="mi",
                     help="criterion whose choice mi.png and mi.json mark: the channels it removes at --sparsity "
                          "(default mi; 'none' marks nothing)")
    ana.add_argument("--sparsity", type=sparsity_arg, default=0.5, help="fraction of MACs removed (default 0.5)")
    ana.add_argument("--json", action="store_true", help="print mi.json on stdout")
    _cache_flags(ana)

    pl = sub.add_parser("plane", help="train the model N epochs recording I(X;T), I(T;Y) per layer; "
                                      "writes plane.json and plane.png", epilog=EPILOG)
    pl.add_argument("model", type=Path, help="the model file (same formats as compress)")
    pl.add_argument("--data", type=Path, required=True, help=".npz with x,y (as for compress)")
    pl.add_argument("--epochs", type=int, default=5, help="training epochs (default 5; epoch 0 is before training)")
    pl.add_argument("--out", type=Path, help="output folder (default tinyprune-out/<stem>-plane)")
    pl.add_argument("--method", default="binning,kde", help="binning, kde or binning,kde (default both)")
    pl.add_argument("--bins", type=int, default=30, help="bins per coordinate for binning (default 30)")
    pl.add_argument("--noise-var", default="median",
                    help="KDE noise variance, or median (default: half the median pairwise distance per layer; "
                         "a fixed 0.1 saturates at (ln N, H(Y)) on wide layers)")
    pl.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    pl.add_argument("--arch", help="module:factory or path/to/file.py:factory, for a state_dict file")
    pl.add_argument("--trust-code", "--trust-pickle", dest="trust_code", action="store_true",
                    help="as for compress (RUNS THE FILE'S CODE)")
    pl.add_argument("--layout", choices=("auto", "nchw", "nhwc"), default="auto")
    pl.add_argument("--seed", type=int, default=0)
    pl.add_argument("--json", action="store_true", help="print plane.json on stdout")

    unpack = sub.add_parser("unpack", help="decode a model.tpz archive back to the exact weights (weights.npz)",
                            epilog=EPILOG)
    unpack.add_argument("archive", type=Path, help="a .tpz file written by compress")
    unpack.add_argument("--out", type=Path, required=True, help="folder for weights.npz")

    from tinyprune import cli_measure  # light: no torch or numpy at import

    cli_measure.add_parsers(sub)

    sub.add_parser("targets", help="list the known microcontroller targets")
    sub.add_parser("criteria", help="list the pruning criteria")
    sub.add_parser("runtimes", help="list the inference engines latency is predicted for (fitted to MLPerf Tiny)")
    return parser


def _criterion_options_given(args) -> tuple[dict, list[str]]:
    """Options given for the chosen criterion, and the flags given that belong to another one."""
    from tinyprune.prune import protocol

    mine, foreign = {}, []
    for key, value in vars(args).items():
        if not key.startswith("option:") or value is None:
            continue
        _, criterion, option = key.split(":")
        if criterion == args.criterion:
            mine[option] = value
        else:
            foreign.append(f"{protocol.flag(criterion, option)} belongs to --criterion {criterion}")
    return mine, foreign


def _config(args):
    """Every flag checked here, before a model is loaded or anything is trained."""
    from tinyprune.config import CompressConfig, DataConfig, ExportConfig, FinetuneConfig, PruneConfig
    from tinyprune.prune import protocol

    protocol.get(args.criterion)  # an unknown criterion names the known ones
    options, foreign = _criterion_options_given(args)
    if foreign:
        raise ConfigError(f"{foreign[0]}, not --criterion {args.criterion}")
    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    epochs = args.finetune_epochs if args.finetune_epochs is not None else (8 if args.command == "demo" else 3)
    deep = archive_config(args)  # a stray archive flag is refused first
    if args.no_deepcompress and (args.archive or args.lut_bits is not None):
        raise ConfigError("--no-deepcompress turns weight sharing and the archive off; drop --archive/--lut-bits")
    sharing = None
    if not args.no_deepcompress:
        from tinyprune.deepcompress.deploy import SharingConfig

        sharing = SharingConfig(**({"min_bits": args.lut_bits} if args.lut_bits is not None else {}))
    return CompressConfig(
        deepcompress=deep,
        sharing=sharing,
        max_accuracy_drop=args.max_accuracy_drop,
        target=args.target,
        seed=args.seed,
        data=DataConfig(layout=getattr(args, "layout", "auto"), task=getattr(args, "task", None),
                        **({"calib_samples": args.calib_samples} if args.calib_samples is not None else {})),
        prune=PruneConfig(criterion=args.criterion, sparsity=args.sparsity, at_init=args.at_init,
                          compensate=args.compensate, options=options),
        finetune=FinetuneConfig(epochs=epochs),
        export=ExportConfig(bn_as_depthwise=not args.plain_export, equalize_concats=not args.plain_export),
        plane=args.plane,
        cache_dir=_cache_dir(args),
        runtime=args.runtime,
        clock_mhz=args.clock_mhz,
        prefer=args.prefer,
    )


def _fit_budgets(args):
    given = [f for f in ("max_flash", "max_ram", "max_latency_ms", "max_energy_uj") if getattr(args, f) is not None]
    if args.fit and args.archive:
        raise ConfigError("--fit searches the deployed model; the --archive is a separate product, make it in its own run")
    if not args.fit:
        if given:
            raise ConfigError(f"--{given[0].replace('_', '-')} is a --fit budget; add --fit")
        return None
    from tinyprune.budget import parse_size
    from tinyprune.fit import FitBudgets

    sizes = {k: parse_size(getattr(args, k), f"--{k.replace('_', '-')}") for k in ("max_flash", "max_ram")
             if getattr(args, k) is not None}
    return FitBudgets(**sizes, max_latency_ms=args.max_latency_ms, max_energy_uj=args.max_energy_uj)


def _print_report(report) -> None:
    from rich.console import Console
    from rich.table import Table

    from tinyprune.report import summary_rows
    from tinyprune.export.verify import OPTIMIZED_AGREEMENT_GOAL
    from tinyprune.report.render import HEADER, header, headline, score_label

    t = Table(title=f"tinyprune: {Path(report.model['path']).name} -> {report.target['name']}")
    # 80 columns: the nonzero count and the seconds are in report.md / report.html and the stage lines
    keep = [i for i, h in enumerate(HEADER) if h not in ("nonzero", "seconds")]
    names = header(report)
    for i in keep:
        t.add_column(names[i], justify="left" if names[i] == "stage" else "right")
    for row in summary_rows(report):
        t.add_row(*(row[i] for i in keep))
    console = Console()
    console.print(t)
    for line in headline(report):
        console.print(line.replace("`", ""), markup=False)
    orig, int8 = report.stage("original"), report.stage("int8")
    fits = report.fits
    console.print(
        f"float {score_label(report.data)} {orig.accuracy:.2%} -> int8 {int8.accuracy:.2%} "
        f"(held-out, n={report.data['eval']}); "
        f"MACs {int8.macs / orig.macs - 1:+.1%}, params {int8.params / orig.params - 1:+.1%}; "
        f"fits {report.target['name']}: flash {'yes' if fits['flash'] else 'NO'}, RAM {'yes' if fits['ram'] else 'NO'}"
    )
    fid = int8.details.get("fidelity") or {}
    tflm = int8.details.get("tflm") or {}
    fragile = tflm.get("agreement_with_litert_optimized", 1.0) < OPTIMIZED_AGREEMENT_GOAL
    if fragile:
        console.print(
            f"LiteRT's optimized kernels predict another class than TFLM on "
            f"{1 - tflm['agreement_with_litert_optimized']:.1%} of the samples: the int8 outputs are fragile "
            f"(output SQNR {fid.get('output_sqnr_db', 'n/a')} dB)")
    if fid.get("moved_beyond_tolerance") or fragile:
        blame = fid.get("blame") or {}
        console.print(
            f"int8 departs from its float model: {fid['float_accuracy']:.2%} -> {int8.accuracy:.2%} in TFLM "
            f"({fid['moved_points']:+.2f} points); most SQNR is lost at {blame.get('layer', 'an unmapped layer')} "
            f"({blame.get('sqnr_lost_db', 'n/a')} dB), see the fidelity table in report.md")
    if report.fit:
        for i, t in enumerate(report.fit["trials"]):
            console.print(f"{'->' if i == report.fit['chosen'] else '  '} --fit trial: {t['sparsity']:.0%} MACs "
                          f"removed, {t['artifact']}, {t['accuracy']:.2%}, {t['flash_bytes']:,} B firmware flash, "
                          f"{t['ram_bytes']:,} B RAM: {'fits' if t['fits'] else 'misses ' + ', '.join(map(_budget_name, t['misses']))}")
    dep = report.deployed or {}
    if dep:
        sharing = dep.get("weight_sharing") or {}
        budget = "within" if dep["within_accuracy_budget"] else "OVER"
        costs = report.costs()
        firmware = f"; firmware {costs.flash_bytes:,} B flash, {costs.ram_bytes:,} B RAM" if costs else ""
        console.print(
            f"deployed: {dep['artifact']} (model {dep['flash_bytes']:,} B, arena {dep['arena_bytes']:,} B{firmware}, "
            f"{dep['accuracy']:.2%} in TFLM, {-dep['accuracy_drop_points']:+.2f} points vs the original, {budget} the "
            f"--max-accuracy-drop of {dep['max_accuracy_drop_points']:g}); weight sharing: "
            + (sharing.get("reason", "") if sharing else "off"))
    console.print(f"artifacts in {Path(report.artifacts[0]).parent}")


def _budget_name(key: str) -> str:
    return {"flash_bytes": "flash", "ram_bytes": "RAM", "latency_ms": "latency", "energy_uj": "energy"}.get(key, key)


def _write_npz(path: Path, tensors: dict) -> None:
    """An .npz with one entry per tensor. Tensor names are data: np.savez would take a name such
    as ``file`` or ``allow_pickle`` as its own keyword argument."""
    import zipfile

    import numpy as np

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, value in tensors.items():
            with zf.open(f"{name}.npy", "w") as f:
                np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)


def _unpack(args) -> int:
    from tinyprune.deepcompress.archive import read_archive
    from tinyprune.errors import InputError

    if not args.archive.is_file():
        raise InputError(f"archive not found: {args.archive}")
    tensors = read_archive(args.archive)  # checksum and bounds checked: a bad file raises ArchiveError
    from tinyprune.api import staged_output

    # the same rule as compress: an existing folder is replaced only if tinyprune wrote all of it
    with staged_output(args.out) as tmp:
        _write_npz(tmp / "weights.npz", tensors)
    print(f"{len(tensors)} tensors, {sum(int(t.size) for t in tensors.values()):,} values -> {args.out / 'weights.npz'}")
    return 0


def _print_mi(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"I(T_c; Y) per channel, nats (H(Y) = {result['label_entropy']:.3f}, n = {result['samples']})")
    for h in ("layer", "channels", "mean", "min", "max", "top channels", "bottom channels"):
        t.add_column(h, justify="left" if "layer" in h or "channels " in h else "right")
    for l in result["layers"]:
        fmt = lambda pairs: ", ".join(f"{c}:{v:.2f}" for c, v in pairs[:3])
        t.add_row(l["name"], str(l["channels"]), f"{l['mean']:.3f}", f"{l['min']:.3f}", f"{l['max']:.3f}",
                  fmt(l["top"]), fmt(l["bottom"]))
    console = Console()
    console.print(t)
    marked = result.get("marked")
    if marked:
        console.print(f"marked: the channels {marked['criterion']} removes at {marked['sparsity']:.0%} of the MACs "
                      f"({marked['macs_before']:,} -> {marked['macs_after']:,} MACs)")
    console.print(f"mi.json and mi.png in {result['out']} ({result['seconds']:.1f} s)")


def _print_plane(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"information plane, nats (ln N = {result['ln_samples']:.2f}, H(Y) = "
                    f"{result['label_entropy']:.2f}, N = {result['samples']})")
    cols = ["layer", "dim"]
    for m in result["methods"]:
        cols += [f"{m} I(X;T)", f"{m} I(T;Y)"]
    for c in cols:
        t.add_column(c, justify="left" if c == "layer" else "right")
    for layer in result["layers"]:
        n = layer["name"]
        row = [n, str(layer["dim"])]
        for v in result["methods"].values():
            row += [f"{v['ixt'][n][0]:.2f} -> {v['ixt'][n][-1]:.2f}", f"{v['ity'][n][0]:.2f} -> {v['ity'][n][-1]:.2f}"]
        t.add_row(*row)
    console = Console()
    console.print(t)
    console.print(f"epochs 0..{result['epochs'][-1] if result['epochs'] else 0}, sample accuracy "
                  f"{result['accuracy'][0]:.2%} -> {result['accuracy'][-1]:.2%}; plane.json and plane.png in "
                  f"{result['out']} ({result['seconds']:.1f} s)")


def _run(args) -> int:
    if args.command in ("measure", "check"):
        from tinyprune import cli_measure

        return cli_measure.run(args)
    if args.command == "criteria":
        from tinyprune.prune import protocol  # light: no torch

        for name in protocol.names():
            c = protocol.get(name)
            flags = " ".join(protocol.option_flags_of(name))
            print(f"{c.name:10} {c.description}" + (f" [{flags}]" if flags else ""))
        return 0
    if args.command == "targets":
        from tinyprune import targets

        for name in targets.names():
            t = targets.load(name)
            print(f"{t.name:15} {t.flash_bytes // 1024:>6} KiB flash {t.ram_bytes // 1024:>6} KiB RAM "
                  f"{t.clock_hz / 1e6:>6g} MHz  {t.reference_board}")
        return 0

    if args.command == "runtimes":
        from tinyprune.measure import runtimes  # light: TOML only

        cyc = runtimes.table()["cycles"]
        print(f"{runtimes.DEFAULT_RUNTIME:34} (default) TFLM + CMSIS-NN as calibrated; {cyc['tflm_cpi']:.3f} cycles "
              f"per instruction on {cyc['tflm_core']}; band +-{100 * cyc['band']:.0f} % "
              f"({100 * runtimes.table()['calibration']['coverage']:.0f} % interval), x2 on other cores")
        for name in runtimes.names()[1:]:
            spec = runtimes.table()["runtime"][name]
            print(f"{name:34} fitted on {', '.join(spec['cores'])}")
        print("Any case, with or without a version: x-cube-ai, 'X-CUBE-AI 7.3.0', plumerai, tflm.")
        return 0

    # Heavy imports only for the commands that need them: `--help` and `targets` stay instant.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import logging
    import warnings

    logging.getLogger("torch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    from tinyprune import api


    if args.command == "unpack":
        return _unpack(args)

    if args.command == "plane":
        from tinyprune.config import CompressConfig, DataConfig, FinetuneConfig

        if args.epochs < 0:
            raise ConfigError(f"--epochs must be >= 0, got {args.epochs}")
        methods = tuple(m.strip() for m in args.method.split(",") if m.strip())
        noise = args.noise_var
        if noise != "median":
            try:
                noise = float(noise)
            except ValueError:
                raise ConfigError(f"--noise-var must be a number or 'median', got {noise!r}") from None
        cfg = CompressConfig(seed=args.seed, data=DataConfig(layout=args.layout), finetune=FinetuneConfig(lr=args.lr))
        source = api.ModelSource(args.model, arch=args.arch, trust_code=args.trust_code)
        result = api.plane(source, cfg, args.data, args.out, args.epochs, methods, args.bins, noise)
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            _print_plane(result)
        return 0

    if args.command == "analyze":
        from tinyprune.config import CompressConfig, DataConfig, PruneConfig

        marked = args.criterion != "none"
        # the criterion's own choice on the model as it is (compress --no-compensate): compensation
        # would re-rank on rewritten weights and cost a forward pass per removed group
        prune = PruneConfig(criterion=args.criterion if marked else "l1", sparsity=args.sparsity,
                            compensate=False)  # checks the name
        cfg = CompressConfig(seed=args.seed, data=DataConfig(layout=args.layout), cache_dir=_cache_dir(args),
                             prune=prune)
        source = api.ModelSource(args.model, arch=args.arch, trust_code=args.trust_code)
        result = api.analyze(source, cfg, args.data, args.out, mark=marked)
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            _print_mi(result)
        return 0

    if args.command == "sweep":
        from tinyprune import cli_sweep

        return cli_sweep.run(args, _config)

    quiet = args.quiet or args.json
    bar = progress_display(enabled=not quiet)
    cfg = _config(args)
    fit = _fit_budgets(args)
    try:
        if args.command == "demo":
            report = api.demo(cfg, args.out, progress=bar, fit=fit)
        else:
            if args.trust_code and args.arch:
                raise ConfigError("--trust-code and --arch exclude each other")
            source = api.ModelSource(args.model, arch=args.arch, trust_code=args.trust_code)
            report = api.compress(source, cfg, data_path=args.data, out_dir=args.out, progress=bar, fit=fit)
    except BaseException:
        bar.abort()
        raise
    finally:
        bar.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    elif not args.quiet:
        _print_report(report)
    return 0


# top-level modules of the `compress` extra (pyproject.toml): the light install has none of them
FULL_INSTALL = {"torch", "torchvision", "tensorflow", "tf_keras", "keras", "onnx", "onnxscript", "onnxruntime",
                "onnx2tf", "onnx_graphsurgeon", "sng4onnx", "torch_pruning", "sklearn", "bitarray", "psutil",
                "jsonschema"}


def guarded(run, args) -> int:
    """Run a command; every error becomes one line on stderr and its documented exit code."""
    try:
        return run(args)
    except TinypruneError as exc:
        print(f"tinyprune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("tinyprune: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: one line, unless asked for the traceback
        missing = (getattr(exc, "name", None) or "").split(".")[0] if isinstance(exc, ModuleNotFoundError) else ""
        if missing in FULL_INSTALL:  # the light install running a pipeline command
            print(f"tinyprune: error: `{args.command}` needs {missing}, part of the full install: "
                  "pip install 'tinyprune[compress]' (torch==2.13.0 first, from the CPU index; see README)",
                  file=sys.stderr)
            return InputError.exit_code
        if os.environ.get("TINYPRUNE_DEBUG"):
            raise
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        print(f"tinyprune: internal error: {type(exc).__name__}: {detail} "
              "(set TINYPRUNE_DEBUG=1 for a traceback and please report it)", file=sys.stderr)
        return INTERNAL_ERROR_EXIT


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the console command: the process is tinyprune's to end when a limit is hit in native code
        from tinyprune import limits

        limits.enable_hard_exit()
    return guarded(_run, build_parser().parse_args(argv))
