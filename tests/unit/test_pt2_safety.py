"""Tampered torch.export archives: refused before torch reads them, no payload runs, exit 2."""

import json
import pickle
import zipfile

import pytest
import torch
import torch.nn as nn

from tinyprune.cli import main
from tinyprune.errors import UnsupportedModel
from tinyprune.load import load_model


class _Payload:
    """Unpickling this creates the marker file: proof that code from the archive ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def good(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10)).eval()
    path = tmp_path / "good.pt2"
    torch.export.save(torch.export.export(model, (torch.rand(1, 1, 8, 8),)), path)
    return path


def _entries(path):
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _write(path, entries):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _find(entries, suffix):
    return next(n for n in entries if n.endswith(suffix))


def _tamper(kind, good, tmp_path, marker):
    e = _entries(good)
    if kind == "pickled weight":
        cfg_name = _find(e, "weights/model_weights_config.json")
        cfg = json.loads(e[cfg_name])
        first = next(iter(cfg["config"].values()))
        first["use_pickle"] = True
        e[cfg_name] = json.dumps(cfg).encode()
        e[_find(e, "weights/" + first["path_name"])] = pickle.dumps(_Payload(marker))
    elif kind == "pickled sample inputs":
        e[_find(e, "sample_inputs/model.pt")] = pickle.dumps(_Payload(marker))
    elif kind == "opaque constant":
        cfg_name = _find(e, "constants/model_constants_config.json")
        cfg = json.loads(e[cfg_name])
        cfg.setdefault("config", {})["evil"] = {"path_name": "opaque_obj_0", "use_pickle": False, "tensor_meta": None}
        e[cfg_name] = json.dumps(cfg).encode()
        e[cfg_name.rsplit("/", 1)[0] + "/opaque_obj_0"] = pickle.dumps(_Payload(marker))
    elif kind in ("guard code", "sympify", "node target"):
        name = _find(e, "models/model.json")
        program = json.loads(e[name])
        if kind == "guard code":
            program["guards_code"] = [f"open({str(marker)!r}, 'w')"]
        elif kind == "sympify":
            program["range_constraints"] = {f"__import__('builtins').open({str(marker)!r}, 'w')": {}}
        else:
            node = program["graph_module"]["graph"]["nodes"][0]
            node["target"] = "builtins.exec"
        e[name] = json.dumps(program).encode()
    elif kind == "path traversal":
        e["../../escaped.txt"] = b"x"
    elif kind == "case twin":  # torch finds entries case-insensitively, and the first one wins
        root = _find(e, "sample_inputs/model.pt").rsplit("/", 1)[0]
        e = {f"{root}/model.PT": pickle.dumps(_Payload(marker)), **e}
    elif kind == "aoti library":
        root = _find(e, "models/model.json").split("/")[0]
        e[f"{root}/data/aotinductor/m/evil.so"] = b"\x7fELF"
    elif kind == "program without .json":
        name = _find(e, "models/model.json")
        program = json.loads(e[name])
        program["range_constraints"] = {"__import__('os')": {}}
        e[name.replace("model.json", "evil_json")] = json.dumps(program).encode()
    elif kind in ("load_library target", "exponent bomb", "malformed config"):
        name = _find(e, "models/model.json")
        program = json.loads(e[name])
        if kind == "load_library target":
            program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.ops.load_library"
            e[name] = json.dumps(program).encode()
        elif kind == "exponent bomb":
            program["range_constraints"] = {"9**9**9**9": {}}
            e[name] = json.dumps(program).encode()
        else:
            e[_find(e, "weights/model_weights_config.json")] = b"[1, 2]"
    return _write(tmp_path / f"{kind.replace(' ', '_')}.pt2", e)


KINDS = ["pickled weight", "pickled sample inputs", "opaque constant", "guard code", "sympify", "node target",
         "path traversal", "case twin", "aoti library", "program without .json", "load_library target",
         "exponent bomb", "malformed config"]


@pytest.mark.parametrize("kind", KINDS)
def test_tampered_archive_is_refused_and_runs_nothing(kind, good, tmp_path):
    marker = tmp_path / "PWNED"
    path = _tamper(kind, good, tmp_path, marker)
    with pytest.raises(UnsupportedModel, match="tinyprune does not load it|corrupt"):
        load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["pickled weight", "pickled sample inputs"])
def test_the_corpus_is_live_torch_alone_would_run_the_payload(kind, good, tmp_path):
    """The tampered files are real attacks: torch.export.load on its own runs them."""
    marker = tmp_path / "PWNED"
    path = _tamper(kind, good, tmp_path, marker)
    try:
        torch.export.load(path)
    except Exception:
        pass
    assert marker.exists()


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
