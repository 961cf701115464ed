"""Tampered torch.export archives: refused before torch reads them, no payload runs, exit 2.

Every kind of attack is built here from a real export; ``LIVE`` lists the kinds shown to run their
payload under plain ``torch.export.load`` (so the corpus is real), each writing a marker file.
"""

import io
import json
import pickle
import struct
import zipfile

import pytest
import torch
import torch.nn as nn

from tinyprune import pt2_inspect
from tinyprune.cli import main
from tinyprune.errors import UnsupportedModel
from tinyprune.load import load_model


class _Payload:
    """Unpickling this creates the marker file: proof that code from the archive ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _Tiny(nn.Module):
    """A parameter, a buffer and a tensor constant: one of each name kind FX writes into code."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10))
        self.register_buffer("scale", torch.ones(1))
        self.offset = torch.zeros(1)

    def forward(self, x):
        return self.fc(x) * self.scale + self.offset


X = torch.rand(1, 1, 8, 8)


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.pt2"
    torch.export.save(torch.export.export(_Tiny().eval(), (X,)), path)
    return path


def _entries(path):
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _zip(entries, comment_first=b""):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, (name, data) in enumerate(entries.items()):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.comment = comment_first if i == 0 else b""
            zf.writestr(info, data)
    return buf.getvalue()


def _write(path, entries):
    path.write_bytes(_zip(entries))
    return path


def _find(entries, suffix):
    return next(n for n in entries if n.endswith(suffix))


def _code(marker):
    """Python that writes the marker, without dots: FX splits names at dots."""
    return f'open(bytes({list(str(marker).encode())}), "w")'


def _program(e):
    name = _find(e, "models/model.json")
    return name, json.loads(e[name])


def _rename(e, kind, new):
    """Give the model's bias, buffer or constant the name ``new``, in the program and its table."""
    key, old, table = {"parameter": ("parameter_name", "fc.3.bias", "weights/model_weights_config.json"),
                       "buffer": ("buffer_name", "scale", "weights/model_weights_config.json"),
                       "constant": ("tensor_constant_name", "offset", "constants/model_constants_config.json")}[kind]
    name, program = _program(e)
    for spec in program["graph_module"]["signature"]["input_specs"]:
        for value in spec.values():
            if value.get(key) == old:
                value[key] = new
    e[name] = json.dumps(program).encode()
    cfg = json.loads(e[_find(e, table)])
    cfg["config"][new] = cfg["config"].pop(old)
    e[_find(e, table)] = json.dumps(cfg).encode()


def _split(blob):
    """(entries region, central directory, entry count) of a zip without a comment."""
    _, _, _, n, _, size, offset, _ = struct.unpack("<4sHHHHIIH", blob[-22:])
    return blob[:offset], blob[offset:offset + size], n


def _differential(benign, malicious):
    """One file, two archives: Python's zipfile reads ``benign`` (it shifts offsets by the bytes it
    finds before the central directory), torch's reader reads ``malicious`` (it does not)."""
    mal, mal_cd, n = _split(_zip(malicious))
    ben, ben_cd, _ = _split(_zip(benign))
    if len(mal_cd) < len(ben_cd):
        mal, mal_cd, n = _split(_zip(malicious, b" " * (len(ben_cd) - len(mal_cd))))
    else:
        ben, ben_cd, _ = _split(_zip(benign, b" " * (len(mal_cd) - len(ben_cd))))
    mal += b"\0" * max(0, len(ben) - len(mal))
    cd, at = bytearray(ben_cd), 0
    while at < len(cd):  # zipfile adds (len(mal) + len(cd)) - ... : pre-subtract the shift it will add
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", cd, at + 28)
        (offset,) = struct.unpack_from("<I", cd, at + 42)
        struct.pack_into("<I", cd, at + 42, offset + len(mal) - len(ben))
        at += 46 + name_len + extra_len + comment_len
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, n, n, len(mal_cd), len(mal), 0)
    return mal + mal_cd + ben + bytes(cd) + end


def _pickled_weight(e, marker):
    cfg_name = _find(e, "weights/model_weights_config.json")
    cfg = json.loads(e[cfg_name])
    first = next(iter(cfg["config"].values()))
    first["use_pickle"] = True
    e[cfg_name] = json.dumps(cfg).encode()
    e[_find(e, "weights/" + first["path_name"])] = pickle.dumps(_Payload(marker))


def _edit_program(e, edit):
    name, program = _program(e)
    edit(program)
    e[name] = json.dumps(program).encode()


def _guard(program, marker):
    program["guards_code"] = [_code(marker)]


def _shape_expr(program, expr):
    for value in program["graph_module"]["graph"]["tensor_values"].values():
        if value["sizes"]:
            value["sizes"][0] = {"as_expr": {"expr_str": expr, "hint": {"as_int": 1}}}
            return


def _tamper(kind, good, tmp_path, marker):
    e = _entries(good)
    out = tmp_path / f"{kind.replace(' ', '_')}.pt2"
    if kind == "pickled weight":
        _pickled_weight(e, marker)
    elif kind == "pickled sample inputs":
        e[_find(e, "sample_inputs/model.pt")] = pickle.dumps(_Payload(marker))
    elif kind == "opaque constant":
        cfg_name = _find(e, "constants/model_constants_config.json")
        cfg = json.loads(e[cfg_name])
        cfg.setdefault("config", {})["evil"] = {"path_name": "opaque_obj_0", "use_pickle": False, "tensor_meta": None}
        e[cfg_name] = json.dumps(cfg).encode()
        e[cfg_name.rsplit("/", 1)[0] + "/opaque_obj_0"] = pickle.dumps(_Payload(marker))
    elif kind == "guard code":
        _edit_program(e, lambda p: _guard(p, marker))
    elif kind == "sympify":
        _edit_program(e, lambda p: p.update(range_constraints={f"__import__('builtins').open({str(marker)!r}, 'w')": {}}))
    elif kind == "sympy in a shape":
        _edit_program(e, lambda p: _shape_expr(p, f"__import__('builtins').open({str(marker)!r}, 'w')"))
    elif kind == "sympy power":  # allowed characters and names once; evaluating it never ends
        _edit_program(e, lambda p: _shape_expr(p, "PowByNatural(999999999999, 999999999999)"))
    elif kind == "sympy nesting":
        _edit_program(e, lambda p: _shape_expr(p, "Max(" * 40 + "s0" + ", 1)" * 40))
    elif kind == "node target":
        _edit_program(e, lambda p: p["graph_module"]["graph"]["nodes"][0].update(target="builtins.exec"))
    elif kind.startswith("fx name in "):
        _rename(e, kind.rsplit(" ", 1)[1], 'x", [' + _code(marker) + ', 0][1])#')
    elif kind == "forward argument name":
        def edit(p):
            p["graph_module"]["module_call_graph"][0]["signature"]["forward_arg_names"] = ["x=" + _code(marker)]
        _edit_program(e, edit)
    elif kind == "input spec key":
        def edit(p):
            sig = p["graph_module"]["module_call_graph"][0]["signature"]
            sig["forward_arg_names"] = []
            sig["in_spec"] = sig["in_spec"].replace('"context": "[]"', '"context": "[\\"y\'}, 1)#\\"]"')
            assert "#" in sig["in_spec"]
        _edit_program(e, edit)
    elif kind == "long name":
        _rename(e, "buffer", "b" * 400)
    elif kind == "path traversal":
        e["../../escaped.txt"] = b"x"
    elif kind == "case twin":  # torch finds entries case-insensitively, and the first one wins
        root = _find(e, "sample_inputs/model.pt").rsplit("/", 1)[0]
        e = {f"{root}/model.PT": pickle.dumps(_Payload(marker)), **e}
    elif kind == "aoti library":
        root = _find(e, "models/model.json").split("/")[0]
        e[f"{root}/data/aotinductor/m/evil.so"] = b"\x7fELF"
    elif kind == "program without .json":
        name, program = _program(e)
        program["range_constraints"] = {"__import__('os')": {}}
        e[name.replace("model.json", "evil_json")] = json.dumps(program).encode()
    elif kind == "load_library target":
        _edit_program(e, lambda p: p["graph_module"]["graph"]["nodes"][0].update(target="torch.ops.load_library"))
    elif kind == "exponent bomb":
        _edit_program(e, lambda p: p.update(range_constraints={"9**9**9**9": {}}))
    elif kind == "malformed config":
        e[_find(e, "weights/model_weights_config.json")] = b"[1, 2]"
    elif kind == "empty weight of a huge shape":  # torch would allocate zeros of the stated shape
        cfg_name = _find(e, "weights/model_weights_config.json")
        cfg = json.loads(e[cfg_name])
        meta = cfg["config"]["scale"]
        meta["tensor_meta"]["sizes"] = [{"as_int": 1 << 20}, {"as_int": 1 << 20}]
        e[cfg_name] = json.dumps(cfg).encode()
        e[_find(e, "weights/" + meta["path_name"])] = b""
    elif kind == "huge json":
        name, program = _program(e)
        e[name] = json.dumps(program).encode() + b" " * pt2_inspect.MAX_JSON_BYTES
    elif kind == "deep json":
        _edit_program(e, lambda p: p["graph_module"]["metadata"].update(x=json.loads("[" * 200 + "]" * 200)))
    elif kind.startswith("zip hides "):
        hidden = dict(e)
        if kind == "zip hides guard code":
            _edit_program(hidden, lambda p: _guard(p, marker))
        elif kind == "zip hides sample inputs":
            hidden[_find(hidden, "sample_inputs/model.pt")] = pickle.dumps(_Payload(marker))
        else:
            _pickled_weight(hidden, marker)
        out.write_bytes(_differential(e, hidden))
        return out
    elif kind == "zip with bytes before it":
        out.write_bytes(b"\0" * 64 + good.read_bytes())
        return out
    elif kind == "zip with a duplicate name":
        blob = bytearray(_zip(e))
        first, second = list(e)[:2]  # equal lengths: weight_0 and weight_1
        at = blob.rindex(second.encode())  # its central-directory record
        blob[at:at + len(second)] = first.encode()
        out.write_bytes(bytes(blob))
        return out
    elif kind == "zip with overlapping entries":
        blob = bytearray(_zip(e))
        _, cd, _ = _split(bytes(blob))
        second = len(blob) - 22 - len(cd) + 46 + struct.unpack_from("<HHH", cd, 28)[0] + sum(
            struct.unpack_from("<HH", cd, 30))  # the second central-directory record
        struct.pack_into("<I", blob, second + 42, 0)  # points at the first entry's data
        out.write_bytes(bytes(blob))
        return out
    return _write(out, e)


KINDS = ["pickled weight", "pickled sample inputs", "opaque constant", "guard code", "sympify", "sympy in a shape",
         "sympy power", "sympy nesting", "node target", "fx name in parameter", "fx name in buffer",
         "fx name in constant", "forward argument name", "input spec key", "long name", "path traversal",
         "case twin", "aoti library", "program without .json", "load_library target", "exponent bomb",
         "malformed config", "empty weight of a huge shape", "huge json", "deep json", "zip hides guard code",
         "zip hides sample inputs", "zip hides pickled weight", "zip with bytes before it",
         "zip with a duplicate name", "zip with overlapping entries"]
# kind -> what runs the payload under plain torch: loading, or building and calling the module
LIVE = {"pickled weight": "load", "pickled sample inputs": "load", "guard code": "call",
        "sympy in a shape": "call", "fx name in parameter": "call", "fx name in buffer": "call",
        "fx name in constant": "call", "zip hides guard code": "call", "zip hides sample inputs": "load",
        "zip hides pickled weight": "load"}


@pytest.mark.parametrize("kind", KINDS)
def test_tampered_archive_is_refused_and_runs_nothing(kind, good, tmp_path):
    marker = tmp_path / "PWNED"
    path = _tamper(kind, good, tmp_path, marker)
    with pytest.raises(UnsupportedModel, match="tinyprune does not load it|corrupt"):
        load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize("kind", sorted(LIVE))
def test_the_corpus_is_live_torch_alone_would_run_the_payload(kind, good, tmp_path):
    """The tampered files are real attacks: torch.export.load on its own runs them."""
    marker = tmp_path / "PWNED"
    path = _tamper(kind, good, tmp_path, marker)
    try:
        program = torch.export.load(path)
        if LIVE[kind] == "call":
            program.module()(X)
    except Exception:
        pass
    assert marker.exists()


def test_the_hidden_entries_are_invisible_to_pythons_zipfile(good, tmp_path):
    """What the former inspector saw of a differential file: the benign archive only."""
    path = _tamper("zip hides pickled weight", good, tmp_path, tmp_path / "PWNED")
    with zipfile.ZipFile(path) as zf:
        assert b"use_pickle\": true" not in zf.read(_find(zf.namelist(), "model_weights_config.json"))


@pytest.mark.parametrize("kind", ["fx name in parameter", "fx name in buffer", "fx name in constant",
                                  "forward argument name"])
def test_names_are_checked_again_on_what_torch_built(kind, good, tmp_path, monkeypatch):
    """Without the JSON check, the check on the loaded program still refuses before any code is built."""
    monkeypatch.setattr(pt2_inspect, "_walk_program", lambda path, program: None)
    monkeypatch.setattr(pt2_inspect, "_check_payloads", lambda path, config, what, blobs, folder: {
        f"{m['path_name']}" for m in config["config"].values()})
    marker = tmp_path / "PWNED"
    path = _tamper(kind, good, tmp_path, marker)
    with pytest.raises(UnsupportedModel, match="not a plain identifier|not a loadable"):
        load_model(path)
    assert not marker.exists()


def test_the_lifted_graph_module_is_checked_before_its_code_is_built():
    import torch.fx as fx

    from tinyprune.lift import lift_graph

    gm = torch.export.export(_Tiny().eval(), (X,)).module()
    node = next(n for n in gm.graph.nodes if n.op == "get_attr" and n.target == "scale")
    node.target = 'scale", print("x"))#'
    gm.register_buffer(node.target, gm.scale)
    with pytest.raises(UnsupportedModel, match="not a plain identifier"):
        lift_graph(gm)
    assert isinstance(gm, fx.GraphModule)


def test_a_file_past_the_size_limit_is_refused_before_it_is_read(good, monkeypatch):
    monkeypatch.setattr(pt2_inspect, "MAX_ARCHIVE_BYTES", good.stat().st_size - 1)
    monkeypatch.setattr(pt2_inspect.Path, "read_bytes", lambda self: pytest.fail("read"))
    with pytest.raises(UnsupportedModel, match="MiB"):
        load_model(good)


def test_a_json_past_its_limit_is_refused_before_it_is_read(good, tmp_path, monkeypatch):
    """The entry's size in the directory decides: a 1 GB program is never read."""
    from tinyprune import pt2_zip

    monkeypatch.setattr(pt2_inspect, "MAX_JSON_BYTES", 1000)
    monkeypatch.setattr(pt2_zip, "torch_entries", lambda *a: pytest.fail("read"))
    with pytest.raises(UnsupportedModel, match="JSON"):
        load_model(good)


def test_refusal_through_the_cli_is_one_line_exit_2(good, tmp_path, capsys, digits_npz):
    marker = tmp_path / "PWNED"
    path = _tamper("pickled weight", good, tmp_path, marker)
    code = main(["compress", str(path), "--data", str(digits_npz), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is stored as a pickle" in err[0] and "Traceback" not in err[0]
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_a_dynamic_shape_export_still_loads(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (torch.rand(2, 1, 8, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "dyn.pt2")
    loaded = load_model(tmp_path / "dyn.pt2")
    assert loaded.format == "exported-program"
    entries = _entries(tmp_path / "dyn.pt2")
    assert "Symbol(" in entries[_find(entries, "models/model.json")].decode()  # the expression check ran on it
