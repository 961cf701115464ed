"""The ``measure`` and ``check`` subcommands (wired into ``tinyprune.cli``).

    add_parsers(subparsers)  # adds `measure` and `check`
    run(args) -> int         # exit code; errors are raised as TinypruneError subclasses

Exit codes: measure 0 (also when it reports ops the target lacks: ``check`` is the gate);
check 0 when every budget holds, 1 when one is exceeded (BudgetExceeded), 3 when a model uses
an op the target's TFLM runtime lacks (UnsupportedOp), 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tinyprune.cli_types import at_least
from tinyprune.errors import BudgetExceeded, ConfigError, UnsupportedOp

EPILOG = "exit codes: 0 ok, 1 budget exceeded, 2 bad input, 3 export failure or op the target lacks, 70 internal error"


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.lower().replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 1,28,28, got {text!r}") from None
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected positive dimensions, got {text!r}")
    return dims


def add_parsers(subparsers) -> None:
    m = subparsers.add_parser(
        "measure", epilog=EPILOG,
        help="per-layer and total flash, RAM, MACs, energy and latency of a .tflite/.onnx/PyTorch model",
        description="MODEL: any .tflite (measured as the device runs it: flatbuffer flash, smallest TFLM "
                    "arena found by bisection in the real interpreter), an .onnx graph or a PyTorch file "
                    "(counted on the float graph; --int8 converts through tinyprune's export first).",
    )
    m.add_argument("model", type=Path, help="the model file")
    m.add_argument("--target", default="cortex-m4",
                   help="microcontroller target (see `tinyprune targets`), or your board's TOML file "
                        "(base = \"cortex-m4\" and the keys that differ, see targets/SCHEMA.md)")
    m.add_argument("--runtime", default=None,
                   help="inference engine the latency is predicted for, any case, with or without a version "
                        "(default tflm; `tinyprune runtimes` lists them)")
    m.add_argument("--clock-mhz", type=float, default=None, help="the board's clock, overriding the target's")
    m.add_argument("--input-shape", type=_shape, help="one sample's shape for PyTorch/ONNX models, e.g. 1,28,28")
    m.add_argument("--arch", help="package.module:factory, for a state_dict file")
    m.add_argument("--trust-code", "--trust-pickle", dest="trust_code", action="store_true",
                   help="load a file that runs its own code: a pickle needing classes outside torch.nn, or "
                        "TorchScript (RUNS ITS CODE: trusted files only)")
    m.add_argument("--int8", action="store_true",
                   help="PyTorch/ONNX: convert to full-int8 TFLite first and measure that (calibrated on --data)")
    m.add_argument("--data", type=Path, help="with --int8: .npz whose x calibrates the conversion (default: random)")
    m.add_argument("--no-timing", action="store_true", help="skip the host latency measurements")
    m.add_argument("--no-arena", action="store_true", help="skip the TFLM arena bisection (RAM is then estimated)")
    m.add_argument("--repeats", type=at_least(1), default=50, help="timed runs per runtime (default 50)")
    m.add_argument("--html", type=Path, help="also write a self-contained HTML report of the measurement")
    m.add_argument("--json", action="store_true", help="print the measurement as JSON")

    c = subparsers.add_parser(
        "check", epilog=EPILOG,
        help="check models against the budgets in tinyprune.toml / pyproject.toml (for CI)",
        description="Budgets: [[model]] tables in tinyprune.toml or under [tool.tinyprune] in pyproject.toml "
                    "(keys: path, target, max_flash, max_ram, max_macs, max_latency_ms, max_energy_uj, "
                    "min_accuracy + data, include_runtime, kernels, input_shape). Sizes take units: "
                    "\"256KiB\", \"1MB\". With GITHUB_ACTIONS=true, failures are also printed as ::error annotations.",
    )
    c.add_argument("models", nargs="*", type=Path, help="check only these models (default: every [[model]])")
    c.add_argument("--budget", type=Path, help="budget file (default ./tinyprune.toml, else ./pyproject.toml)")
    c.add_argument("--junit", type=Path, help="also write a JUnit XML report here")
    c.add_argument("--json", action="store_true", help="print the verdicts as JSON")


def run(args) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import logging
    import warnings

    logging.getLogger("torch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    if args.command == "measure":
        return _measure(args)
    if args.command == "check":
        return _check(args)
    raise ConfigError(f"unknown command {args.command!r}")


# ---------------------------------------------------------------------------------------- measure

def writable_file(path: Path | None, flag: str) -> None:
    """Refuse an output file that cannot be written (exit 2) before any slow work."""
    if path is None:
        return
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.with_name(f".{path.name}.probe")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot write there ({exc.strerror or exc})") from None


def _target_of(args):
    """The target (a name or the user's file), at --clock-mhz, and the --runtime checked for its
    core: every error here comes before a model is loaded."""
    from tinyprune import targets

    return targets.configure(targets.load(args.target), args.runtime, args.clock_mhz)


def _measure(args) -> int:
    from tinyprune.measure.core import measure_file

    writable_file(args.html, "--html")
    target = _target_of(args)
    if args.data is not None and not args.int8:
        raise ConfigError("--data calibrates --int8 conversion; pass --int8 too")
    calib = None
    if args.data is not None:
        calib = _calibration(args.data, args.input_shape)
    result = measure_file(args.model, target, input_shape=args.input_shape, arch=args.arch,
                          trust_code=args.trust_code, timing=not args.no_timing, find_arena=not args.no_arena,
                          repeats=args.repeats, int8=args.int8, calib=calib)
    if args.html is not None:
        from tinyprune.report.html import write_html

        write_html(result, args.html)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_measurement(result)
    return 0


def _calibration(path: Path, input_shape):
    import numpy as np

    from tinyprune.data import load_npz

    raw = load_npz(path)
    x = np.asarray(raw.x_train, np.float32)
    if input_shape is not None and x.ndim == len(input_shape) + 1 and tuple(x.shape[1:]) != tuple(input_shape):
        if x.ndim == 4 and tuple(x.shape[1:]) == (input_shape[1], input_shape[2], input_shape[0]):
            x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    return x[:200]


def _console():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


def _kib(n) -> str:
    from tinyprune.budget import format_size

    return format_size(n)


def _ms(d: dict) -> str:
    if "error" in d:
        return f"failed ({d['error']})"
    return f"{d['median_ms']:.3f} ms median (IQR {d['p25_ms']:.3f}-{d['p75_ms']:.3f}, n={d['repeats']}, {d['warmup']} warm-up runs excluded)"


def print_measurement(r: dict) -> None:
    from rich.table import Table

    console = _console()
    tgt = r["target"]
    title = f"{Path(r['model']['path']).name if 'model' in r else 'model'} ({r['format']}, {r['precision']}) on {tgt['name']}"
    t = Table(title=title)
    for h in ("#", "op", "name", "output", "params", "MACs", "weights B", "act. B", "energy nJ (45nm)", "pred. us"):
        t.add_column(h, justify="left" if h in ("op", "name", "output") else "right", overflow="fold")
    for l in r["layers"]:
        name = l["name"] if len(l["name"]) <= 32 else "..." + l["name"][-29:]
        out = "x".join(str(d) for d in l["output_shapes"][0]) if l["output_shapes"] else ""
        t.add_row(str(l["index"]), l["op"], name, out, f"{l['params']:,}", f"{l['macs']:,}", f"{l['weight_bytes']:,}",
                  f"{l['activation_bytes']:,}", f"{l['energy_pj'] / 1e3:.2f}", f"{l['latency_us']:.1f}")
    console.print(t)
    from tinyprune.measure.deployed import of

    tot = r["totals"]
    c = of(r)
    lines = [
        f"MACs {tot['macs']:,} (FLOPs {tot['flops']:,}: 2 per MAC of conv/depthwise/fully-connected ops); "
        f"params {tot['params']:,}; non-MAC work {tot['elements']:,} elements",
        f"model: {_kib(tot['flash_bytes'])} ({tot['flash_source']}); arena {_kib(tot['ram_bytes'])} "
        f"({tot['ram_source']}); planned activation peak {_kib(tot['peak_activation_bytes'])}",
        f"costed as: {c.basis}",
        *c.lines(tgt["name"]),
        f"fits {tgt['name']}: " + ("yes" if c.fits else "NO (" + "; ".join(c.misses()) + ")"),
    ]
    f = r["energy"]["floor_45nm"]
    lines.append(f"45 nm floor (arithmetic and data movement only, not what the board spends): {f['total_uj']:.4g} uJ "
                 f"(compute {f['compute_uj']:.3g}, weights {f['weights_uj']:.3g} from {f['weight_memory']}, "
                 f"activations {f['activations_uj']:.3g} from {f['activation_memory']}); same graph as fp32 "
                 f"{f['as_fp32_uj']:.4g} uJ, as int8 {f['as_int8_uj']:.4g} uJ")
    for name, d in r["latency"]["measured"].items():
        lines.append(f"measured on this host (not {tgt['name']}), {name}: {_ms(d)}")
    if r.get("unsupported_ops"):
        lines.append(f"[bold red]ops {tgt['name']}'s TFLM runtime lacks: {', '.join(r['unsupported_ops'])}[/] "
                     "(`tinyprune check` fails on this model)")
    for line in lines:
        console.print(line, highlight=False)


# ---------------------------------------------------------------------------------------- check

def _check(args) -> int:
    from tinyprune import budget

    writable_file(args.junit, "--junit")

    def progress(message: str) -> None:
        if sys.stderr.isatty() and not args.json:
            print(f"tinyprune: {message} ...", file=sys.stderr)

    result = budget.run_check(args.models, args.budget, progress=progress)
    if args.junit is not None:
        args.junit.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.junit.with_name(f".{args.junit.name}.tmp")
        tmp.write_text(budget.to_junit(result))
        tmp.replace(args.junit)
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for line in budget.annotations(result):
            print(line, file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _print_check(result)
    unsupported = {m: ops for m, ops in result.unsupported.items() if ops}
    if unsupported:
        raise UnsupportedOp("; ".join(f"{m} uses op(s) the target's TFLM runtime lacks: {', '.join(ops)}"
                                      for m, ops in unsupported.items()))
    if result.exceeded:
        raise BudgetExceeded(f"{len(result.exceeded)} budget(s) exceeded: "
                             + "; ".join(f"{o.model} {o.metric} ({o.text})" for o in result.exceeded))
    return 0


def _print_check(result) -> None:
    from rich.table import Table

    t = Table(title=f"tinyprune check ({result.config.name})")
    for h in ("model", "budget", "measured vs limit", "result", "how"):
        t.add_column(h, overflow="fold")
    for o in result.outcomes:
        t.add_row(o.model, o.metric, o.text, "ok" if o.ok else "[bold red]EXCEEDED[/]", o.detail)
    for model, ops in result.unsupported.items():
        t.add_row(model, "tflm_ops", ", ".join(ops) if ops else "all supported",
                  "[bold red]UNSUPPORTED[/]" if ops else "ok", "ops of the model vs the target's TFLM build")
    console = _console()
    console.print(t)
    n_bad = len(result.exceeded) + sum(1 for ops in result.unsupported.values() if ops)
    console.print("all budgets hold" if not n_bad else f"{n_bad} check(s) failed", highlight=False)


def main(argv: list[str] | None = None) -> int:
    """``python -m tinyprune.cli_measure measure|check ...``: the same as ``tinyprune measure|check``."""
    from tinyprune.cli import OneLineParser, guarded

    parser = OneLineParser(prog="tinyprune", epilog=EPILOG)
    add_parsers(parser.add_subparsers(dest="command", required=True))
    return guarded(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
