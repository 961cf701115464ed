"""Read a ``torch.export`` archive (.pt2) once, check everything torch would act on, and give torch
exactly the bytes that were checked.

``torch.export.load`` runs code from the archive in several places: weights and constants marked
``use_pickle`` (and custom or opaque objects) go through unrestricted pickle, sample inputs fall
back to ``weights_only=False`` when the safe load fails, guard code is executed by
``ExportedProgram.module()``, symbolic shape expressions go through ``sympy.sympify`` (which
evaluates Python), and names of parameters, buffers, constants, inputs and kwargs are pasted into
the Python source FX generates and executes. A file from elsewhere is only handed to torch when
none of that can happen: the zip has a single reading (``pt2_zip``), every entry is one that
``torch.export.save`` writes, every weight and constant is raw tensor bytes, the sample inputs load
with torch's ``weights_only`` unpickler, there is no guard code, every shape expression is small
arithmetic on symbols, every node target is an aten/prims operator (or an ``_operator``/``math``
helper on sizes), and every other string torch turns into a name is a plain dotted identifier.
Sizes, counts, nesting and expression lengths are capped, so this pass does bounded work. Anything
else is refused with one line (exit 2).
"""

from __future__ import annotations

import io
import json
import keyword
import re
from pathlib import Path

from tinyprune import pt2_zip
from tinyprune.errors import UnsupportedModel

MAX_ARCHIVE_BYTES = 256 << 20  # a microcontroller model is a few MiB; this leaves room for float originals
MAX_UNCOMPRESSED = 256 << 20
MAX_ENTRIES = 10_000
MAX_JSON_BYTES = 16 << 20  # the program of a 1,000-layer model is a few MiB
MAX_JSON_DEPTH = 64  # torch writes 10 levels
MAX_PICKLE_BYTES = 16 << 20  # the sample inputs
MAX_NAME_CHARS = 300
MAX_EXPR_CHARS = 400
MAX_EXPR_DEPTH = 12
MAX_EXPRESSIONS = 20_000  # sympify costs about a millisecond each
MAX_DIM = 1 << 31

# one dotted name: identifiers, and the digits nn.Sequential and ModuleList use for their children
_PART = r"(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+)"
NAME = re.compile(rf"^{_PART}(?:\.{_PART})*$")
_EXPR_CHARS = re.compile(r"^[A-Za-z0-9_\s+\-*/%().,<>=!]*$")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# symbols torch writes (s0, u3, ...) and the functions its deserializer offers to sympify; powers,
# shifts and rounding to a number of digits are left out: one call can take unbounded time
_SYMBOL = re.compile(r"^[a-z]+\d+$")
_SYMPY_NAMES = {
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "IntTrueDiv", "FloatTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt",
    "ToFloat", "Identity", "Max", "Min", "Abs", "oo", "zoo", "True", "False", "Integer", "Rational", "Float", "And",
    "Or", "Not", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or",
    "OpaqueUnaryFn_sqrt",
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
# extra files, programs under other names, legacy pickled weights) is refused
_ENTRY = re.compile(
    r"^[^/\\\x00-\x1f]+/("  # the top folder is named after the file; torch drops it
    r"archive_format|archive_version|byteorder|version|\.data/version|\.data/serialization_id"
    r"|models/model\.json"
    r"|data/weights/([A-Za-z0-9_]+|model_weights_config\.json)"
    r"|data/constants/(tensor_[A-Za-z0-9_]+|model_constants_config\.json)"
    r"|data/sample_inputs/model\.pt)$")
# strings torch keeps as text (debug metadata, string arguments of an operator, which FX writes with
# repr()): never pasted into generated code as names
_TEXT_KEYS = {"stack_trace", "nn_module_stack", "source_fn_stack", "torch_fn", "custom", "from_node", "as_string",
              "as_strings", "torch_version"}
# strings FX uses as Python identifiers as they are (a def's parameters, a dict literal's keys)
_IDENTIFIER_KEYS = {"forward_arg_names"}
_SPEC_TYPES = {None, "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict"}


def _refuse(path: Path, why: str) -> UnsupportedModel:
    return UnsupportedModel(f"{path.name}: {why}; tinyprune does not load it (re-export the model with "
                            "torch.export.save from a trusted environment)")


def _is_identifier(text) -> bool:
    return isinstance(text, str) and text.isidentifier() and text.isascii() and not keyword.iskeyword(text) \
        and len(text) <= MAX_NAME_CHARS


def _check_name(path: Path, text, where: str) -> None:
    if not (isinstance(text, str) and len(text) <= MAX_NAME_CHARS and NAME.match(text)):
        raise _refuse(path, f"{where} {str(text)[:60]!r} is not a plain dotted identifier")


def _check_expr(path: Path, expr) -> None:
    if not isinstance(expr, str) or len(expr) > MAX_EXPR_CHARS or "**" in expr or "!" in expr.replace("!=", "") \
            or re.search(r"\d{13,}", expr):
        raise _refuse(path, f"a shape expression is not plain arithmetic on symbols ({str(expr)[:40]!r})")
    expr_only = _QUOTED_SYMBOL.sub(r"\1", expr)  # a quoted symbol name is the only string allowed
    if not _EXPR_CHARS.match(expr_only) or "__" in expr:
        raise _refuse(path, f"a shape expression holds more than arithmetic ({expr[:40]!r})")
    depth = deepest = 0
    for ch in expr_only:
        depth += (ch == "(") - (ch == ")")
        deepest = max(deepest, depth)
    if deepest > MAX_EXPR_DEPTH:
        raise _refuse(path, f"a shape expression nests {deepest} levels deep (at most {MAX_EXPR_DEPTH})")
    for name in _IDENT.findall(expr_only):
        if not (_SYMBOL.match(name) or name in _SYMPY_NAMES):
            raise _refuse(path, f"a shape expression names {name!r}, not a shape symbol or a sympy function")


def _json(path: Path, name: str, blob: bytes):
    if len(blob) > MAX_JSON_BYTES:
        raise _refuse(path, f"{name.rsplit('/', 1)[-1]} is {len(blob) >> 20} MiB of JSON (at most "
                            f"{MAX_JSON_BYTES >> 20} MiB)")
    try:
        return json.loads(blob)
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, an integer of thousands of digits, deep nesting
        raise UnsupportedModel(f"{path.name} is corrupt ({name.rsplit('/', 1)[-1]} is not valid JSON)") from None


def _check_spec(path: Path, text) -> None:
    """A pytree spec (JSON in a string): FX writes its dict keys into a dict literal as they are."""
    if not isinstance(text, str) or len(text) > MAX_JSON_BYTES:
        raise _refuse(path, "an input/output spec is malformed")
    stack = [(_json(path, "input/output spec", text.encode()), 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise _refuse(path, "an input/output spec nests too deeply")
        if isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)
        elif isinstance(node, dict):
            if node.get("type") not in _SPEC_TYPES:
                raise _refuse(path, f"an input/output spec uses the type {str(node.get('type'))[:60]!r}")
            context = node.get("context")
            if context not in (None, "null"):
                keys = _json(path, "input/output spec", str(context).encode())
                if not isinstance(keys, list) or not all(isinstance(k, int) or _is_identifier(k) for k in keys):
                    raise _refuse(path, f"an input/output spec names {str(context)[:60]!r}, not identifiers")
            stack.extend((child, depth + 1) for child in node.get("children_spec") or [])
        elif node is not None and not isinstance(node, int):
            raise _refuse(path, "an input/output spec is malformed")


def _walk_program(path: Path, program) -> None:
    """Every string of the serialized program, by the key it is under; iterative, so deep nesting
    is a refusal, not a crash."""
    expressions = 0
    stack = [(program, None, 0)]
    while stack:
        node, key, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise _refuse(path, f"its program nests more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(node, dict):
            for k, value in node.items():
                if key == "range_constraints":
                    _check_expr(path, k)
                    expressions += 1
                else:
                    _check_name(path, k, "a key")
                if k == "guards_code" and value not in ([], None):
                    raise _refuse(path, "it carries guard code, which torch would run")
                if k in ("in_spec", "out_spec"):
                    if value is not None:
                        _check_spec(path, value)
                    continue
                if k == "expr_str":
                    expressions += 1
                stack.append((value, k, depth + 1))
        elif isinstance(node, list):
            stack.extend((item, key, depth + 1) for item in node)
        elif isinstance(node, str):
            if key == "expr_str":
                _check_expr(path, node)
            elif key in ("target", "as_operator"):
                if not (_TARGET.match(node) or node in _SYM_TARGETS):
                    raise _refuse(path, f"a graph node calls {node[:60]!r}, not an aten operator")
            elif key in _IDENTIFIER_KEYS:
                if not _is_identifier(node):
                    raise _refuse(path, f"an input is named {node[:60]!r}, not a Python identifier")
            elif key in _TEXT_KEYS:
                pass
            elif not (key == "fqn" and node == ""):  # the root module's path is empty
                _check_name(path, node, f"a name ({key})")
        if expressions > MAX_EXPRESSIONS:
            raise _refuse(path, f"it holds more than {MAX_EXPRESSIONS} shape expressions")


def _check_payloads(path: Path, config, what: str, blobs: dict, folder: str) -> set[str]:
    """The files the table lists, each checked to be raw tensor bytes of a plausible shape."""
    table = config.get("config") if isinstance(config, dict) else None
    if not isinstance(table, dict):
        raise _refuse(path, f"its {what} table is malformed")
    for fqn, meta in table.items():
        _check_name(path, fqn, what)
        if not isinstance(meta, dict):
            raise _refuse(path, f"its {what} table is malformed")
        if meta.get("use_pickle"):
            raise _refuse(path, f"{what} {fqn!r} is stored as a pickle, which torch would unpickle unrestricted")
        name = meta.get("path_name")
        _check_name(path, name, f"the file of {what}")
        if what == "constant" and not name.startswith("tensor_"):
            raise _refuse(path, f"constant {fqn!r} is a custom or opaque object, which torch would unpickle")
        blob = blobs.get(f"{folder}/{name}")
        if blob is None:
            raise _refuse(path, f"{what} {fqn!r} has no data in the archive")
        _check_tensor_meta(path, meta.get("tensor_meta"), len(blob), f"{what} {fqn!r}")
    return {meta["path_name"] for meta in table.values()}


def _check_tensor_meta(path: Path, meta, nbytes: int, what: str) -> None:
    """torch allocates zeros of the stated shape for an empty record: the shape must then be empty."""
    sizes = meta.get("sizes") if isinstance(meta, dict) else None
    if not isinstance(sizes, list) or not all(isinstance(s, dict) and isinstance(s.get("as_int"), int) for s in sizes):
        raise _refuse(path, f"{what} has no plain shape")
    dims = [s["as_int"] for s in sizes]
    if any(d < 0 or d > MAX_DIM for d in dims):
        raise _refuse(path, f"{what} has the shape {dims[:8]}")
    numel = 1
    for d in dims:
        numel *= d
    if nbytes == 0 and numel:
        raise _refuse(path, f"{what} states {numel} elements but stores none")


def _check_sample_inputs(path: Path, blob: bytes) -> None:
    """torch loads these with ``weights_only=True`` and falls back to full pickle when that fails:
    the very same call must succeed here, on the very same bytes."""
    import torch

    if len(blob) > MAX_PICKLE_BYTES:
        raise _refuse(path, f"its sample inputs are {len(blob) >> 20} MiB (at most {MAX_PICKLE_BYTES >> 20} MiB)")
    try:
        pt2_zip.layout(blob, max_entries=MAX_ENTRIES, max_entry_bytes=MAX_PICKLE_BYTES,
                       max_total_bytes=MAX_PICKLE_BYTES)
    except pt2_zip.LayoutError as exc:
        raise _refuse(path, f"its sample inputs are not a plain torch.save archive ({exc})") from None
    try:
        torch.load(io.BytesIO(blob), weights_only=True)
    except Exception:
        raise _refuse(path, "its sample inputs are a pickle that needs more than tensors to load") from None


def _inspect(path: Path, blobs: dict[str, bytes]) -> None:
    for name in blobs:
        if name.split("/", 1)[0] in (".", "..") or not _ENTRY.match(name):
            raise _refuse(path, f"it holds an entry torch.export.save does not write ({name[:60]!r})")
    by_suffix = {name.split("/", 1)[1]: blob for name, blob in blobs.items()}
    listed = set()
    for folder, what in (("data/weights", "weight"), ("data/constants", "constant")):
        config = f"{folder}/model_{what}s_config.json"
        if config in by_suffix:
            table = _json(path, config, by_suffix[config])
            listed |= {f"{folder}/{file}" for file in _check_payloads(path, table, what, by_suffix, folder)}
    for name in by_suffix:
        if name.startswith(("data/weights/", "data/constants/")) and not name.endswith(".json") and name not in listed:
            raise _refuse(path, f"it holds data no weight or constant table lists ({name.rsplit('/', 1)[-1][:40]})")
    if "models/model.json" in by_suffix:
        _walk_program(path, _json(path, "models/model.json", by_suffix["models/model.json"]))
    if "data/sample_inputs/model.pt" in by_suffix:
        _check_sample_inputs(path, by_suffix["data/sample_inputs/model.pt"])



def read_pt2(path: Path) -> io.BytesIO:
    """The archive at ``path``, checked, as a fresh in-memory archive for ``torch.export.load``;
    UnsupportedModel (exit 2) unless torch can load it without running code from it."""
    size = path.stat().st_size
    if size > MAX_ARCHIVE_BYTES:
        raise _refuse(path, f"it is {size >> 20} MiB (at most {MAX_ARCHIVE_BYTES >> 20} MiB)")
    data = path.read_bytes()
    try:
        entries = pt2_zip.layout(data, max_entries=MAX_ENTRIES, max_entry_bytes=MAX_UNCOMPRESSED,
                                 max_total_bytes=MAX_UNCOMPRESSED)
    except pt2_zip.LayoutError as exc:
        raise _refuse(path, f"its zip layout is not plain: {exc}") from None
    for e in entries:  # from the directory's sizes, before anything is read
        limit = MAX_JSON_BYTES if e.name.endswith(".json") else MAX_PICKLE_BYTES if e.name.endswith(".pt") else None
        if limit is not None and e.usize > limit:
            raise _refuse(path, f"{e.name.rsplit('/', 1)[-1]} is {e.usize >> 20} MiB (at most {limit >> 20} MiB; "
                                f"{'JSON' if limit == MAX_JSON_BYTES else 'sample inputs'})")
    try:
        blobs = pt2_zip.torch_entries(data, entries)
    except pt2_zip.LayoutError as exc:
        raise _refuse(path, f"its zip layout is not plain: {exc}") from None
    _inspect(path, blobs)
    return pt2_zip.rebuild(blobs)
