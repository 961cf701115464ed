"""The ``sweep`` command line: a grid of compress runs on Ray (tinyprune.sweep does the work)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tinyprune.errors import ConfigError


def add_parser(sub, model_and_data, common, epilog: str = "") -> None:
    """The ``sweep`` subcommand: the compress flags (``model_and_data``, ``common``) plus the grid."""
    sw = sub.add_parser(
        "sweep", epilog=epilog,
        help="compress a model over a grid (criterion x sparsity x bits x target...) as Ray tasks, local or on a cluster",
        description="Each cell is one compress; flags not in the grid apply to every cell. Results: sweep.csv, "
                    "sweep.json, sweep.html (Pareto fronts) and every cell's folder under --out/cells. Running the "
                    "same sweep with the same --out again skips the finished cells.")
    model_and_data(sw)
    sw.add_argument("--grid", nargs="+", default=None, metavar="KEY=V1,V2",
                    help="grid axes: criterion, sparsity, bits (LUT bits), target, finetune_epochs, runtime")
    sw.add_argument("--config", type=Path, default=None, help="a sweep.toml with a [grid] table (same keys)")
    sw.add_argument("--address", default=None, help="host:port of a Ray head node (`ray start --head`); default: a "
                                                      "local Ray with one worker per core")
    sw.add_argument("--workers", type=int, default=None, help="local Ray workers (default: the number of cores)")
    sw.add_argument("--yes", action="store_true", help="run a grid of more than 10,000 cells")
    common(sw)


def run(args, config) -> int:
    """The sweep command; ``config(args)`` is the CLI's own flag check (every other compress flag)."""
    from tinyprune import sweep

    if args.fit:
        raise ConfigError("--fit searches one configuration; a sweep runs a grid (drop --fit)")
    if args.workers is not None and (args.workers < 1 or args.address):
        raise ConfigError("--workers is a positive number of local workers; with --address the cluster decides")
    if not args.model.is_file():
        raise ConfigError(f"model file not found: {args.model}")
    if args.data is not None and not args.data.is_file():
        raise ConfigError(f"data file not found: {args.data}")
    if args.trust_code and args.arch:
        raise ConfigError("--trust-code and --arch exclude each other")
    base = config(args)
    grid = sweep.parse_grid(args.grid, args.config)
    defaults = {"criterion": args.criterion, "sparsity": args.sparsity, "bits": None, "target": args.target,
                "finetune_epochs": None, "runtime": args.runtime}
    cells = sweep.cells(grid, defaults, yes=args.yes)
    out = args.out or Path("tinyprune-out") / f"{args.model.stem}-sweep"
    quiet = args.quiet or args.json
    from rich.progress import Progress

    with Progress(disable=quiet or not sys.stderr.isatty(), transient=True) as bar:
        job = bar.add_task("sweep", total=len(cells))

        def progress(done, total, running, failed):
            bar.update(job, completed=done, description=f"sweep: {done}/{total} done, {running} running, "
                                                         f"{failed} failed")
            if not sys.stderr.isatty() and not quiet:
                print(f"tinyprune sweep: {done}/{total} cells done, {running} running, {failed} failed",
                      file=sys.stderr)

        result = sweep.run(args.model, base, cells, out, data_path=args.data, arch=args.arch,
                           trust_code=args.trust_code, address=args.address, workers=args.workers, progress=progress)
    if args.json:
        print(json.dumps(result.rows, indent=2))
    elif not args.quiet:
        for r in result.rows:
            text = (f"{r['deployed_accuracy']:.2%}, {r['flash_bytes']:,} B flash" if r["status"] == "done"
                    else f"FAILED (exit {r['exit_code']}): {r['error']}")
            print(f"{r['cell']:40} {text}")
        print(f"{len(result.rows) - len(result.failed)} of {len(result.rows)} cells done; sweep.csv, sweep.json and "
              f"sweep.html in {out}")
    return 1 if result.failed else 0
