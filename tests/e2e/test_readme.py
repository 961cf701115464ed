"""The README's examples match the code: every command of the ```sh/```bash blocks of README.md,
ARCHITECTURE.md and docs/*.md is checked here.

* ``tinyprune ...``: run for real, through the installed ``tinyprune`` entry point, on the built-in
  example. The usage lines are synopses (``MODEL``, ``[--out DIR]``): placeholders become the demo's
  files, and a run keeps the optional flags listed in ``RUN_WITH`` (fast ones the line itself shows,
  e.g. ``--finetune-epochs N`` with N = 1); every flag a line names must exist on that subcommand.
  The demo's output comes from one run of the README's ``tinyprune demo [--out DIR]`` with fast
  flags (``DEMO_FAST``: its full run takes minutes more).
* ``tinyprune sweep``: parsed by the real parser and its grid expanded by ``tinyprune.sweep`` as the
  command does, not run: the README's grid is 24 compress runs (half an hour on two cores) and the
  second example names a Ray cluster (``head:6379``) that does not exist here. tests/e2e/test_sweep.py
  runs real sweeps.
* ``make TARGET``: ``make -n`` (the target exists and runs what the README says); running it would
  install a virtualenv or run this very suite.
* ``pip install ...``: checked against pyproject.toml, constraints.txt and the Makefile, not run: it
  installs packages into the environment and needs the network.

A command of any other kind fails the test, so a new README example cannot go unchecked.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from tinyprune.cli import build_parser

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", REPO / "ARCHITECTURE.md", *sorted((REPO / "docs").glob("*.md"))]
README = "\n".join(path.read_text() for path in DOCS)  # the front door and the reference it points to
README_LINES = 160  # the front door stays short: the reference lives in docs/

# optional groups a run keeps, by subcommand (the first flag of the group; MODEL for `[MODEL ...]`)
RUN_WITH = {
    "compress": {"--out", "--finetune-epochs", "--archive", "--json"},
    "demo": {"--out"},
    "analyze": {"--criterion", "--out", "--json"},
    "plane": set(),
    "unpack": set(),
    "measure": {"--target", "--json", "--html"},
    "check": {"MODEL", "--budget", "--junit", "--json"},
    "targets": set(),
    "runtimes": set(),
    "criteria": set(),
}
# no backoff whatever one epoch reaches: the pruned graph is then the full demo's, whose energy the README quotes
DEMO_FAST = ["--finetune-epochs", "1", "--no-deepcompress", "--max-accuracy-drop", "100", "--quiet"]
# what `make -n TARGET` must show for each target the README runs
MAKE_RUNS = {"demo": "/tinyprune demo", "test": "-m pytest -q", "test-fast": '-m pytest -q -m "not slow"'}


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README, re.S | re.M)


def readme_commands() -> list[str]:
    """Every command of the sh/bash blocks, continuations joined, comments dropped."""
    commands: list[str] = []
    for block in _blocks("sh") + _blocks("bash"):
        joined = False
        for raw in block.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
            if not line.strip():
                joined = False
                continue
            if (joined or raw[:1].isspace()) and commands:  # a `\` continuation, or a synopsis's indented line
                commands[-1] += " " + line.strip().rstrip("\\").strip()
            else:
                commands.append(line.strip().rstrip("\\").strip())
            joined = line.endswith("\\")
    return commands


def _tree(tokens: list[str]) -> list:
    """Synopsis tokens as nested lists: ``[--archive [--bits B]]`` -> [['--archive', ['--bits', 'B']]]."""
    root: list = []
    stack = [root]
    for token in tokens:
        while token.startswith("["):
            group: list = []
            stack[-1].append(group)
            stack.append(group)
            token = token[1:]
        closing = len(token) - len(token.rstrip("]"))
        token = token.rstrip("]")
        if token:
            stack[-1].append(token)
        for _ in range(closing):
            assert len(stack) > 1, f"unbalanced brackets in {' '.join(tokens)}"
            stack.pop()
    assert len(stack) == 1, f"unbalanced brackets in {' '.join(tokens)}"
    return root


def _flatten(items: list) -> list[str]:
    return [t for item in items for t in (_flatten(item) if isinstance(item, list) else [item])]


def _subparser(name: str):
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices[name]


def _flags(items: list) -> set[str]:
    return {t.rstrip(",") for t in _flatten(items) if t.startswith("--")}


def _chosen(items: list, keep: set[str]) -> list[str]:
    """The required tokens and the groups ``keep`` names, with every group nested in a kept one."""
    out = []
    for item in items:
        if not isinstance(item, list):
            out.append(item)
        elif item and isinstance(item[0], str) and item[0] in keep:
            out += _chosen(item, {t for t in _flatten(item)})
    return out


class Example:
    """The built-in example's files, and what each README placeholder stands for."""

    def __init__(self, root: Path, demo: Path, data: Path):
        self.root, self.demo, self.data = root, demo, data
        self.outputs: dict[str, Path] = {}

    def argv(self, command: str, cwd: Path) -> list[str]:
        tokens = shlex.split(command)
        assert tokens[0] == "tinyprune", command
        sub, items = tokens[1], _tree(tokens[2:])
        known = set(_subparser(sub)._option_string_actions)
        assert _flags(items) <= known, f"`{command}` names flags `tinyprune {sub}` lacks: {_flags(items) - known}"
        keep = RUN_WITH[sub]
        shown = {i[0] for i in items if isinstance(i, list) and i and isinstance(i[0], str)}
        assert keep <= shown, f"the README's `tinyprune {sub}` no longer shows {keep - shown}"
        chosen = _chosen(items, keep)
        argv, flag = [sub], None
        for token in chosen:
            if token == "...":
                continue
            argv.append(self.value(sub, token, flag, cwd) if not token.startswith("-") else token)
            flag = token if token.startswith("-") else None
        return argv

    def value(self, sub: str, token: str, flag: str | None, cwd: Path) -> str:
        model = {"measure": self.demo / "model_int8.tflite", "check": Path("build/model_int8.tflite")}
        values = {
            "MODEL": str(model.get(sub, self.demo / "digits_cnn.pt")), "DATA.npz": str(self.data),
            "N": "1", "S": "0.5", "C": "l1", "T": "cortex-m4", "model.tpz": str(self.outputs.get("compress", cwd) / "model.tpz"),
        }
        if token == "DIR":
            self.outputs[sub] = cwd / f"{sub}-out"
            return str(self.outputs[sub])
        if token == "FILE":
            return {"--budget": "tinyprune.toml", "--junit": "junit.xml", "--html": "measure.html"}[flag]
        if "|" in token:
            return token.split("|")[0]  # alternatives: the first
        return values.get(token, token)


@pytest.fixture(scope="module")
def example(tmp_path_factory, digits) -> Example:
    """`tinyprune demo [--out DIR]` from the README, once, with fast flags; and the digits as an .npz."""
    root = tmp_path_factory.mktemp("readme")
    demo_line = next(c for c in readme_commands() if c.startswith("tinyprune demo"))
    ex = Example(root, root / "demo", root / "digits.npz")
    np.savez(ex.data, x=digits.x_train.transpose(0, 2, 3, 1), y=digits.y_train)
    argv = ex.argv(demo_line, root)
    ex.demo = ex.outputs["demo"]
    before = set(root.iterdir())
    _run([*argv, *DEMO_FAST], root)
    assert (ex.demo / "digits_cnn.pt").is_file() and (ex.demo / "model_int8.tflite").is_file()
    # everything the demo writes, its trained model included, is inside --out (the README's compress
    # below then loads that model through the safe path like any user's file)
    assert set(root.iterdir()) - before == {ex.demo}
    report = json.loads((ex.demo / "report.json").read_text())
    assert report["model"]["path"] == str(ex.demo / "digits_cnn.pt") and str(ex.demo / "digits_cnn.pt") in report["artifacts"]
    return ex


def _tinyprune() -> list[str]:
    script = Path(sys.executable).with_name("tinyprune")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "tinyprune"]


def _run(argv: list[str], cwd: Path, expect: int = 0) -> subprocess.CompletedProcess:
    done = subprocess.run([*_tinyprune(), *argv], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == expect, f"tinyprune {' '.join(argv)} exited {done.returncode}:\n{done.stderr[-2000:]}"
    return done


def _kind(command: str) -> str:
    first = shlex.split(command)[0]
    if first == "tinyprune":
        return "sweep" if shlex.split(command)[1] == "sweep" else "tinyprune"
    if first in ("make", "pip"):
        return first
    raise AssertionError(f"README command `{command}` is of a kind tests/e2e/test_readme.py cannot check; add it")


def test_the_readme_is_a_front_door_whose_links_resolve():
    front = (REPO / "README.md").read_text()
    assert len(front.splitlines()) <= README_LINES
    for path in DOCS:
        for link in re.findall(r"\]\(([^)#:]+\.md)\)", path.read_text()):
            assert (path.parent / link).is_file(), f"{path.name} links to {link}, which does not exist"


def test_every_readme_command_is_one_this_file_checks():
    commands = readme_commands()
    kinds = [_kind(c) for c in commands]
    assert {"tinyprune", "sweep", "make", "pip"} <= set(kinds)
    subs = {shlex.split(c)[1] for c, k in zip(commands, kinds) if k == "tinyprune"}
    assert subs == set(RUN_WITH), "a subcommand in the README without a RUN_WITH entry, or one no longer shown"


def test_readme_tinyprune_commands_run_on_the_built_in_example(example, tmp_path):
    project = tmp_path / "project"
    (project / "build").mkdir(parents=True)
    shutil.copy(example.demo / "model_int8.tflite", project / "build" / "model_int8.tflite")
    # the README's budget file, as is: its paths are relative to it
    budget = _blocks("toml")
    assert len(budget) == 1
    (project / "tinyprune.toml").write_text(budget[0])
    data = tomllib.loads(budget[0])["model"][0]["data"]
    (project / data).parent.mkdir(parents=True, exist_ok=True)
    raw = np.load(example.data)
    np.savez(project / data, x=raw["x"][-300:], y=raw["y"][-300:])
    # compress first: unpack reads its archive
    commands = sorted((c for c in readme_commands() if _kind(c) == "tinyprune" and not c.startswith("tinyprune demo")),
                      key=lambda c: not c.startswith("tinyprune compress"))
    for command in commands:
        sub = shlex.split(command)[1]
        done = _run(example.argv(command, project), project)
        out = example.outputs.get(sub)
        if sub == "compress":
            report = json.loads(done.stdout)
            assert {s["name"] for s in report["stages"]} >= {"int8", "weight_pruned", "clustered", "huffman"}
            assert all((out / f).is_file() for f in ("report.md", "report.html", "model_int8.tflite", "model.tpz"))
        elif sub == "analyze":
            assert json.loads(done.stdout) and (out / "mi.json").is_file() and (out / "mi.png").is_file()
        elif sub == "plane":
            assert (out / "plane.json").is_file() and (out / "plane.png").is_file()
        elif sub == "unpack":
            assert sorted(np.load(out / "weights.npz").files)
        elif sub == "measure":
            assert json.loads(done.stdout)["totals"]["macs"] > 0 and (project / "measure.html").is_file()
        elif sub == "check":
            verdicts = json.loads(done.stdout)
            assert verdicts["ok"] and (project / "junit.xml").is_file()
            # the README's comment on max_energy_uj quotes what `check` reports for the demo's int8 model
            quoted = re.search(r"max_energy_uj = \d+ +# demo model_int8.tflite: (\d+) uJ", budget[0])
            energy = next(o["value"] for o in verdicts["results"] if o["metric"] == "max_energy_uj")
            assert quoted and round(energy) == int(quoted.group(1)), energy
        else:
            assert done.stdout.strip()


def test_readme_sweep_commands_parse_and_expand(tmp_path):
    from tinyprune import sweep

    commands = [c for c in readme_commands() if _kind(c) == "sweep"]
    assert len(commands) == 2
    grids = []
    for command in commands:
        argv = shlex.split(command)[1:]
        known = set(_subparser("sweep")._option_string_actions)
        assert {t for t in argv if t.startswith("--")} <= known, command
        args = build_parser().parse_args(argv)
        if args.config is not None:  # "a sweep.toml holds the same under [grid], lists as values"
            first = grids[0]
            args.config = tmp_path / args.config
            args.config.write_text("[grid]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in first.items()))
        grid = sweep.parse_grid(args.grid, args.config)
        defaults = {"criterion": args.criterion, "sparsity": args.sparsity, "bits": None, "target": args.target,
                    "finetune_epochs": None, "runtime": args.runtime}
        cells = sweep.cells(grid, defaults, yes=args.yes)
        assert len(cells) == np.prod([len(v) for v in grid.values()]) > 1
        grids.append(grid)
    assert grids[0] == grids[1]
    assert len(sweep.cells(grids[0], defaults)) == 2 * 3 * 2 * 2


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_readme_make_commands_exist_and_run_what_the_readme_says():
    commands = [c for c in readme_commands() if _kind(c) == "make"]
    assert {shlex.split(c)[1] for c in commands} == set(MAKE_RUNS)
    for command in commands:
        target = shlex.split(command)[1]
        # CI runs this suite from `make test`: a nested make would print "Entering directory" lines
        env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
        done = subprocess.run(["make", "-n", "--no-print-directory", target], cwd=REPO, capture_output=True,
                              text=True, timeout=60, env=env)
        assert done.returncode == 0, done.stderr
        assert MAKE_RUNS[target] in done.stdout.splitlines()[-1], done.stdout


def test_readme_pip_commands_match_the_project_files():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    makefile = (REPO / "Makefile").read_text()
    commands = [shlex.split(c) for c in readme_commands() if _kind(c) == "pip"]
    assert commands
    for argv in commands:
        assert argv[:2] == ["pip", "install"], argv
        args = argv[2:]
        if "-c" in args:
            assert (REPO / args[args.index("-c") + 1]).is_file()
        if "--index-url" in args:
            assert f"TORCH_INDEX ?= {args[args.index('--index-url') + 1]}" in makefile
        for target in (a for a in args if a == "." or a.startswith(".[")):
            asked = set(re.findall(r"\[(.*)\]", target)[0].split(",")) if "[" in target else set()
            assert asked <= set(extras), target
        for pin in (a for a in args if "==" in a):
            assert pin in extras["compress"] and f"pip install --quiet {pin}" in makefile, pin


def _keys(node) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in _keys(v)}
    if isinstance(node, list):
        return {k for v in node for k in _keys(v)}
    return set()


def test_one_latency_and_energy_per_stage_and_check_and_fit_accept_exactly_the_headline(example, tmp_path):
    """Issue 27: the report, `check` and `--fit` read one set of deployed costs."""
    from tinyprune.fit import _costs, _misses
    from tinyprune.report import Report

    report = json.loads((example.demo / "report.json").read_text())
    # no second latency or energy model anywhere in report.json
    assert not _keys(report) & {"predicted", "predicted_runtime", "target_estimate", "flash_total_bytes"}
    rec = Report.from_dict(report)
    costs = rec.costs()
    for stage in report["stages"]:
        if stage["details"].get("measure"):
            assert set(stage["details"]["measure"]["deployed"]["ms"]) == {"value", "low", "high"}
    markdown = (example.demo / "report.md").read_text()
    assert f"{costs.ms.value:.3g} ms" in markdown and f"{costs.energy_uj.value:,.1f} uJ" in markdown
    # check, on the deployed file, with the headline's own numbers as the budgets
    project = tmp_path / "p"
    project.mkdir()
    shutil.copy(example.demo / report["deployed"]["artifact"], project / "m.tflite")

    def check(scale: float) -> dict:
        (project / "tinyprune.toml").write_text(
            f'[[model]]\npath = "m.tflite"\ninclude_runtime = true\nmax_latency_ms = {costs.ms.value * scale!r}\n'
            f'max_energy_uj = {costs.energy_uj.value * scale!r}\nmax_flash = {int(costs.flash_bytes * scale)}\n'
            f'max_ram = {int(costs.ram_bytes * scale)}\n')
        done = _run(["check", "--json"], project, expect=0 if scale >= 1 else 1)
        return {o["metric"]: o for o in json.loads(done.stdout)["results"]}

    held = check(1.0 + 1e-9)
    assert held["max_latency_ms"]["value"] == pytest.approx(costs.ms.value, rel=1e-9)
    assert held["max_energy_uj"]["value"] == pytest.approx(costs.energy_uj.value, rel=1e-9)
    assert (held["max_flash"]["value"], held["max_ram"]["value"]) == (costs.flash_bytes, costs.ram_bytes)
    assert all(not o["ok"] for o in check(0.999).values())
    # --fit reads the same object for every trial
    stage = next(s for s in rec.stages if s.name == report["deployed"]["stage"])
    got = _costs(stage)
    assert got == {"flash_bytes": costs.flash_bytes, "ram_bytes": costs.ram_bytes, "latency_ms": costs.ms.value,
                   "energy_uj": costs.energy_uj.value}
    assert _misses(got, {"latency_ms": costs.ms.value, "energy_uj": costs.energy_uj.value}) == {}
    assert set(_misses(got, {"latency_ms": costs.ms.value * 0.999, "flash_bytes": costs.flash_bytes - 1})) == {
        "latency_ms", "flash_bytes"}


def test_firmware_io_and_header_give_the_deployed_files_quantization(example):
    from tinyprune.measure.graph import read_graph

    report = json.loads((example.demo / "report.json").read_text())
    artifact = report["deployed"]["artifact"]
    g = read_graph((example.demo / artifact).read_bytes())
    out = g.tensors[g.outputs[0]]
    md = (example.demo / "report.md").read_text()
    line = md.split(f"## Firmware I/O (`{artifact}`)", 1)[1].strip().splitlines()[0]
    assert f"output int8 {list(out.shape)} with scale {out.scale:.6g}, zero point {out.zero_point}." in line
    prefix = "model_lut" if artifact.endswith("_lut.tflite") else "model"
    header = (example.demo / f"{prefix}_data.h").read_text()
    assert f"kOutputZeroPoint = {out.zero_point};" in header
    scale = float(re.search(r"kOutputScale = ([0-9.e+-]+)f;", header).group(1))
    assert scale == pytest.approx(out.scale, rel=1e-6)
