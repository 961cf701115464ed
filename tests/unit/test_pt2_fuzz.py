"""Mutated .pt2 archives: loaded and run, or refused as bad input (exit 2); never a payload, never a
crash, never long or large.

The mutations are the probe's kinds: names (with code in them), the zip's structure, the JSON of
the program and its tables, shape expressions, and pickled payloads. They run in memory against
``load_model``/``to_module`` (what ``measure`` and ``compress`` call); a few go through the CLI.
"""

import contextlib
import io
import json
import pickle
import random
import resource
import struct
import time
import zipfile

import pytest
import torch
import torch.nn as nn

from test_pt2_safety import _differential
from tinyprune.cli import main
from tinyprune.errors import TinypruneError
from tinyprune.lift import to_module
from tinyprune.load import load_model

X = torch.rand(1, 1, 8, 8)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.fc = nn.Linear(144, 10)
        self.register_buffer("scale", torch.ones(1))
        self.offset = torch.zeros(1)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1)) * self.scale + self.offset


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def seeds():
    return seed_archives()


def seed_archives():
    """Entries of two real exports: static, and with a dynamic batch (shape expressions)."""
    out = []
    batch = torch.export.Dim("batch", min=1, max=64)
    for dynamic in (None, ({0: batch},)):
        buf = io.BytesIO()
        example = (torch.rand(2, 1, 8, 8),) if dynamic else (X,)
        torch.export.save(torch.export.export(_Tiny().eval(), example, dynamic_shapes=dynamic), buf)
        with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
            out.append({i.filename: zf.read(i) for i in zf.infolist()})
    return out


def _code(marker):
    return f'open(bytes({list(str(marker).encode())}), "w")'


def _names(marker):
    code = _code(marker)
    return ['x", [' + code + ', 0][1])#', "y=" + code, "a b", "a'b", "a[0]", "a#b", "", "a..b", ".a", "a.",
            "é", "a\nb", "class", "x" * 400, "a-b", "__class__", "fc.weight", "s0", "0", "1.2", "a\x00b",
            "self", "getattr", "L['self']"]


def _zip(entries, method=zipfile.ZIP_STORED):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def _find(entries, suffix):
    return next(n for n in entries if n.endswith(suffix))


def _slots(tree):
    """(container, key) of every value in a JSON tree, and of every dict key (as ("key", dict, k))."""
    out, stack = [], [tree]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            out.append((node, k))
            if isinstance(node, dict):
                out.append(("key", node, k))
            stack.append(v)
    return out


def _json_entry(entries, rng):
    name = rng.choice([n for n in entries if n.endswith(".json")])
    return name, json.loads(entries[name])


def _rename_state(entries, rng, new):
    """Rename one parameter, buffer or constant where torch looks it up: the program's signature
    and the weight or constant table (a rename in one place only is refused by torch itself)."""
    program_name = _find(entries, "models/model.json")
    program = json.loads(entries[program_name])
    keys = {"parameter": ("parameter_name", "weights"), "buffer": ("buffer_name", "weights"),
            "tensor_constant": ("tensor_constant_name", "constants")}
    spec = rng.choice([s for s in program["graph_module"]["signature"]["input_specs"] if set(s) & set(keys)])
    kind = next(k for k in spec if k in keys)
    key, folder = keys[kind]
    old = spec[kind][key]
    new = rng.choice(["", old.rsplit(".", 1)[0] + "."]) + new  # as a child's name, or at the top
    spec[kind][key] = new
    entries[program_name] = json.dumps(program).encode()
    table_name = _find(entries, f"{folder}/model_{folder}_config.json")
    table = json.loads(entries[table_name])
    table["config"][new] = table["config"].pop(old)
    entries[table_name] = json.dumps(table).encode()


def _mutate_names(entries, rng, marker):
    if rng.random() < 0.5:
        _rename_state(entries, rng, rng.choice(_names(marker)))
        return
    name, tree = _json_entry(entries, rng)
    strings = [s for s in _slots(tree) if s[0] != "key" and isinstance(s[0][s[1]], str)]
    keys = [s for s in _slots(tree) if s[0] == "key"]
    new = rng.choice(_names(marker))
    if keys and (rng.random() < 0.4 or not strings):
        _, node, k = rng.choice(keys)
        if k in node:
            node[new] = node.pop(k)
    elif strings:
        node, k = rng.choice(strings)
        node[k] = new
    entries[name] = json.dumps(tree).encode()


def _random_value(rng):
    return rng.choice([None, -1, 0, 1, 2 ** 63, -(2 ** 31), 10 ** 30, 1.5, float("inf"), True, "", "s0", "cpu",
                       [], {}, [1, 2, 3], {"as_int": 1 << 40}, {"as_expr": {"expr_str": "s0*s0"}},
                       json.loads("[" * 100 + "]" * 100), "x" * 5000])


def _mutate_json(entries, rng, marker):
    name = rng.choice([n for n in entries if n.endswith(".json")])
    if rng.random() < 0.3:  # the text itself: flipped bytes or a cut
        data = bytearray(entries[name])
        if rng.random() < 0.5:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        else:
            del data[rng.randrange(len(data)):]
        entries[name] = bytes(data)
        return
    tree = json.loads(entries[name])
    slots = [s for s in _slots(tree) if s[0] != "key"]
    for _ in range(rng.randint(1, 3)):
        node, k = rng.choice(slots)
        if isinstance(node, dict) and rng.random() < 0.3:
            node.pop(k, None)
        elif isinstance(node, dict) or k < len(node):
            node[k] = _random_value(rng)
    entries[name] = json.dumps(tree).encode()


_TOKENS = ["s0", "s1", "u0", "1", "2", "64", "999999999999", "123456789012345", "+", "-", "*", "/", "//", "%",
           "**", "(", ")", ",", "Max", "Min", "FloorDiv", "Mod", "PowByNatural", "LShift", "RoundDecimal",
           "Symbol('s0', positive=True)", "__import__", "'os'", ".system", "lambda", "getattr", "oo", "<", "=="]


def _expression(rng):
    if rng.random() < 0.3:  # deep and regular
        f = rng.choice(["Max", "Min", "FloorDiv", "PowByNatural", "Mod"])
        depth = rng.randint(1, 60)
        return f"{f}(" * depth + "s0" + ", 2)" * depth
    return " ".join(rng.choice(_TOKENS) for _ in range(rng.randint(1, 80)))


def _mutate_expr(entries, rng, marker):
    name = _find(entries, "models/model.json")
    program = json.loads(entries[name])
    values = list(program["graph_module"]["graph"]["tensor_values"].values())
    if rng.random() < 0.3:
        program["range_constraints"] = {_expression(rng): {"min_val": 1, "max_val": 64}}
    else:
        value = rng.choice(values)
        value["sizes"][:1] = [{"as_expr": {"expr_str": _expression(rng), "hint": {"as_int": 1}}}]
    entries[name] = json.dumps(program).encode()


def _mutate_payload(entries, rng, marker):
    kind = rng.choice(["weight", "sample", "guard", "opaque", "case"])
    if kind == "weight":
        cfg_name = _find(entries, "weights/model_weights_config.json")
        cfg = json.loads(entries[cfg_name])
        meta = rng.choice(list(cfg["config"].values()))
        meta["use_pickle"] = rng.random() < 0.8
        entries[cfg_name] = json.dumps(cfg).encode()
        entries[_find(entries, "weights/" + meta["path_name"])] = pickle.dumps(_Payload(marker))
    elif kind == "sample":
        entries[_find(entries, "sample_inputs/model.pt")] = pickle.dumps(_Payload(marker))
    elif kind == "guard":
        name = _find(entries, "models/model.json")
        program = json.loads(entries[name])
        program["guards_code"] = [_code(marker)]
        entries[name] = json.dumps(program).encode()
    elif kind == "opaque":
        root = next(iter(entries)).split("/")[0]
        entries[f"{root}/data/constants/opaque_obj_0"] = pickle.dumps(_Payload(marker))
    else:
        root = _find(entries, "sample_inputs/model.pt").rsplit("/", 1)[0]
        entries[f"{root}/model.PT"] = pickle.dumps(_Payload(marker))


def _mutate_zip(blob, rng, entries, marker):
    """The archive's bytes: flipped header bytes, cuts, bytes before or after, patched offsets."""
    data = bytearray(blob)
    choice = rng.randrange(6)
    if choice == 0:  # bytes anywhere, mostly in the central directory and end records
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data)) if rng.random() < 0.3 else rng.randrange(max(0, len(data) - 2000), len(data))
            data[at] = rng.randrange(256)
    elif choice == 1:
        del data[rng.randrange(len(data)):]
    elif choice == 2:
        data[:0] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 100)))
    elif choice == 3:
        data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 100)))
    elif choice == 4:  # a central-directory offset moved to another entry's start
        cd = data.rfind(b"PK\x01\x02")
        first = data.find(b"PK\x01\x02")
        at = rng.choice([cd, first])
        struct.pack_into("<I", data, at + 42, rng.choice([0, 64, len(data) // 2, 2 ** 32 - 1]))
    else:  # a second archive that torch's reader sees and Python's zipfile does not
        evil = dict(entries)
        if rng.random() < 0.5:
            _mutate_payload(evil, rng, marker)
        else:
            _rename_state(evil, rng, _names(marker)[0])
        data = bytearray(_differential(entries, evil))
    return bytes(data)


def _case(seeds, rng, marker) -> bytes:
    entries = dict(rng.choice(seeds))
    kind = rng.choice(["names", "json", "expr", "payload", "zip", "none"])
    if kind == "names":
        for _ in range(rng.randint(1, 2)):
            _mutate_names(entries, rng, marker)
    elif kind == "json":
        _mutate_json(entries, rng, marker)
    elif kind == "expr":
        _mutate_expr(entries, rng, marker)
    elif kind == "payload":
        _mutate_payload(entries, rng, marker)
    method = zipfile.ZIP_DEFLATED if rng.random() < 0.1 else zipfile.ZIP_STORED
    blob = _zip(entries, method)
    return _mutate_zip(blob, rng, entries, marker) if kind == "zip" else blob


def _fuzz(seeds, tmp_path, cases: int, seed: int) -> dict:
    rng = random.Random(seed)
    marker = tmp_path / "PWNED"
    path = tmp_path / "case.pt2"
    outcomes, slowest = {"ok": 0, "refused": 0}, 0.0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for i in range(cases):
        path.write_bytes(_case(seeds, rng, marker))
        t0 = time.perf_counter()
        try:
            loaded = load_model(path)
        except TinypruneError as exc:
            assert exc.exit_code == 2 and "\n" not in str(exc), (i, str(exc))
            outcomes["refused"] += 1
        else:
            try:
                to_module(loaded, X)
                outcomes["ok"] += 1
            except Exception as exc:  # measure reports a model that does not run as bad input (exit 2)
                assert not isinstance(exc, TinypruneError) or exc.exit_code == 2, (i, str(exc))
                outcomes["refused"] += 1
        slowest = max(slowest, time.perf_counter() - t0)
        assert not marker.exists(), f"case {i} of seed {seed} ran its payload"
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024
    assert grown < 1 << 30, f"peak memory grew by {grown >> 20} MiB"
    assert slowest < 60, f"a case took {slowest:.1f} s"
    return {**outcomes, "slowest_s": slowest, "peak_growth_mib": grown >> 20}


def test_mutated_archives_load_or_are_refused(seeds, tmp_path):
    outcomes = _fuzz(seeds, tmp_path, 300, seed=0)
    assert outcomes["ok"] > 0 and outcomes["refused"] > 0  # the mutations reach both outcomes


@pytest.mark.slow
def test_mutated_archives_load_or_are_refused_thousands(seeds, tmp_path):
    outcomes = _fuzz(seeds, tmp_path, 5000, seed=1)
    assert outcomes["refused"] > 0


def test_mutated_archives_through_the_cli_exit_0_or_2_with_one_line(seeds, tmp_path):
    rng = random.Random(2)
    marker = tmp_path / "PWNED"
    path = tmp_path / "case.pt2"
    codes = []
    for _ in range(8):
        path.write_bytes(_case(seeds, rng, marker))
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["measure", str(path), "--input-shape", "1,8,8", "--no-timing", "--json"])
        codes.append(code)
        lines = err.getvalue().strip().splitlines()
        assert code in (0, 2) and (code == 0 or (len(lines) == 1 and lines[0].startswith("tinyprune: error: ")))
        assert not marker.exists()
    assert 2 in codes
