"""Inspect a ``torch.export`` archive (.pt2) before torch reads any of it.

``torch.export.load`` runs code from the archive in several places: weights and constants marked
``use_pickle`` (and custom or opaque objects) go through unrestricted pickle, sample inputs fall
back to ``weights_only=False`` when the safe load fails, guard code is kept to be run, and symbolic
shape expressions go through ``sympy.sympify`` (which evaluates Python). Graph node targets are
resolved by name on ``torch``. A file from elsewhere is only handed to torch when none of that can
happen: every weight and constant is raw tensor bytes, every nested pickle loads with torch's
``weights_only`` unpickler, there is no guard code, every shape expression uses only symbols,
numbers, arithmetic and torch's own sympy functions, every node target is a ``torch.ops``,
``_operator`` or ``math`` callable, and no entry name leaves the archive. Anything else is
refused with one line (exit 2).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

from tinyprune.errors import UnsupportedModel

MAX_UNCOMPRESSED = 4 << 30  # an archive describing more than 4 GiB is not a microcontroller model
_EXPR_CHARS = re.compile(r"^[A-Za-z0-9_\s+\-*/%().,<>=!]*$")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# symbols torch writes (s0, u3, ...) and the functions its deserializer offers to sympify
_SYMBOL = re.compile(r"^[a-z]+\d+$")
_SYMPY_NAMES = {
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "IntTrueDiv", "FloatTrueDiv", "LShift", "RShift", "IsNonOverlappingAndDenseIndicator", "TruncToFloat",
    "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "FloatPow", "PowByNatural", "Identity", "Max", "Min",
    "Abs", "oo", "zoo", "True", "False", "Integer", "Rational", "Float", "And", "Or", "Not", "Eq", "Ne", "Lt", "Le",
    "Gt", "Ge", "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or", "OpaqueUnaryFn_sqrt",
    # Symbol('s31', positive=True, integer=True): how torch writes a symbol with its assumptions
    "Symbol", "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "zero", "even",
    "odd", "commutative",
}
_QUOTED_SYMBOL = re.compile(r"'([a-z]+\d+)'")
# graph node targets torch may resolve: aten/prims operators and a few symbolic-shape helpers
_TARGET = re.compile(r"^torch\.ops\.(aten|prims)\.[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)?$")
_SYM_TARGETS = {f"_operator.{n}" for n in ("add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "getitem",
                                            "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "pos", "abs")} | {
    f"math.{n}" for n in ("ceil", "floor", "trunc", "sqrt")}
# every entry a .pt2 written by torch.export.save holds; anything else (AOTInductor libraries,
# extra files, programs under other names) is refused
_ENTRY = re.compile(
    r"^[A-Za-z0-9_.\-]+/("
    r"archive_format|archive_version|byteorder|version|\.data/version|\.data/serialization_id"
    r"|models/[A-Za-z0-9_\-]+\.json"
    r"|data/weights/([A-Za-z0-9_]+|[A-Za-z0-9_]+_weights_config\.json)"
    r"|data/constants/(tensor_[A-Za-z0-9_]+|[A-Za-z0-9_]+_constants_config\.json)"
    r"|data/sample_inputs/[A-Za-z0-9_]+\.pt)$")
MAX_EXPR_CHARS = 400


def _refuse(path: Path, why: str) -> UnsupportedModel:
    return UnsupportedModel(f"{path.name}: {why}; tinyprune does not load it (re-export the model with "
                            "torch.export.save from a trusted environment)")


def _check_expr(path: Path, expr: str) -> None:
    if not isinstance(expr, str) or len(expr) > MAX_EXPR_CHARS or "**" in expr or "!" in expr.replace("!=", "") \
            or re.search(r"\d{13,}", expr):
        raise _refuse(path, f"a shape expression is not plain arithmetic on symbols ({str(expr)[:40]!r})")
    if isinstance(expr, str):
        expr_only = _QUOTED_SYMBOL.sub(r"\1", expr)  # a quoted symbol name is the only string allowed
    if not isinstance(expr, str) or not _EXPR_CHARS.match(expr_only) or "__" in expr:
        raise _refuse(path, f"a shape expression holds more than arithmetic ({str(expr)[:40]!r})")
    for name in _IDENT.findall(expr_only):
        if not (_SYMBOL.match(name) or name in _SYMPY_NAMES):
            raise _refuse(path, f"a shape expression names {name!r}, not a shape symbol or a sympy function")


def _walk_program(path: Path, node) -> None:
    """Every expression string, guard and node target in a serialized program."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr_str":
                _check_expr(path, value)
            elif key == "guards_code" and value not in ([], "[]", None, ""):
                raise _refuse(path, "it carries guard code, which torch would run")
            elif key == "range_constraints" and isinstance(value, dict):
                for name in value:
                    _check_expr(path, name)
            elif key in ("target", "as_operator") and isinstance(value, str) \
                    and not (_TARGET.match(value) or value in _SYM_TARGETS):
                raise _refuse(path, f"a graph node calls {value[:60]!r}, not an aten operator")
            _walk_program(path, value)
    elif isinstance(node, list):
        for item in node:
            _walk_program(path, item)


def _check_payloads(path: Path, config, what: str) -> None:
    table = config.get("config") if isinstance(config, dict) else None
    if not isinstance(table, dict):
        raise _refuse(path, f"its {what} table is malformed")
    for fqn, meta in table.items():
        if not isinstance(meta, dict):
            raise _refuse(path, f"its {what} table is malformed")
        if meta.get("use_pickle"):
            raise _refuse(path, f"{what} {fqn!r} is stored as a pickle, which torch would unpickle unrestricted")
        name = str(meta.get("path_name", ""))
        if what == "constant" and not name.startswith("tensor_"):
            raise _refuse(path, f"constant {fqn!r} is a custom or opaque object, which torch would unpickle")


def _check_nested_pickle(path: Path, name: str, data: bytes) -> None:
    import torch

    try:
        torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception:
        raise _refuse(path, f"{name.rsplit('/', 1)[-1]} is a pickle that needs more than tensors to load") from None


def inspect_pt2(path: Path) -> None:
    """Raise UnsupportedModel (exit 2) unless ``path`` is an archive torch can load without running its code."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise UnsupportedModel(f"{path.name} is corrupt or truncated (not a readable zip archive)") from None
    with zf:
        infos = zf.infolist()
        total = 0
        lowered = [i.filename.lower() for i in infos]
        if len(set(lowered)) != len(lowered):
            raise _refuse(path, "two entry names differ only in case (torch reads names case-insensitively)")
        for info in infos:
            name = info.filename
            if not info.is_dir() and not _ENTRY.match(name):
                raise _refuse(path, f"it holds an entry torch.export.save does not write ({name[:60]!r})")
            parts = name.replace("\\", "/").split("/")
            if name.startswith(("/", "\\")) or "\\" in name or ".." in parts or re.match(r"^[A-Za-z]:", name):
                raise _refuse(path, f"an entry name leaves the archive ({name[:60]!r})")
            total += info.file_size
        if total > MAX_UNCOMPRESSED:
            raise _refuse(path, f"it unpacks to {total >> 20} MiB")
        try:
            for info in infos:
                name = info.filename
                if name.endswith("_config.json") and ("/data/weights/" in name or "/data/constants/" in name):
                    what = "weight" if "/data/weights/" in name else "constant"
                    _check_payloads(path, json.loads(zf.read(info)), what)
                elif "/models/" in name and name.endswith(".json"):
                    _walk_program(path, json.loads(zf.read(info)))
                elif name.endswith(".pt") or name.endswith(".pkl"):
                    _check_nested_pickle(path, name, zf.read(info))
                elif "/data/constants/" in name and not name.endswith(".json") \
                        and not name.rsplit("/", 1)[-1].startswith("tensor_"):
                    raise _refuse(path, f"it holds a non-tensor constant ({name.rsplit('/', 1)[-1][:40]})")
        except UnsupportedModel:
            raise
        except Exception as exc:  # corrupt deflate data, odd JSON shapes, deep nesting: all bad input
            raise UnsupportedModel(f"{path.name} is corrupt ({type(exc).__name__} reading the archive)") from None
