"""Names that FX writes into Python source must be plain identifiers.

``ExportedProgram.module()`` and every ``GraphModule`` compile generated Python: a parameter named
``a.b`` is read as ``self.a.b``, one named ``0`` as ``getattr(self, "0")`` - with the name pasted
between quotes, unescaped - and input names become a ``def``'s parameters and a dict literal's keys.
The archive's JSON is checked before torch sees it (``pt2_inspect``); these checks run again on
what torch built from it, before any code is generated, so that a name the JSON check missed (or
a graph rewritten since) still cannot become code.
"""

from __future__ import annotations

import keyword

from tinyprune.errors import UnsupportedModel
from tinyprune.pt2_inspect import MAX_NAME_CHARS, NAME


def _dotted(name) -> bool:
    return isinstance(name, str) and len(name) <= MAX_NAME_CHARS and bool(NAME.match(name))


def _identifier(name) -> bool:
    return isinstance(name, str) and name.isascii() and name.isidentifier() and not keyword.iskeyword(name) \
        and len(name) <= MAX_NAME_CHARS


def _refuse(what: str, name, source: str) -> UnsupportedModel:
    return UnsupportedModel(f"{source}: {what} {str(name)[:60]!r} is not a plain identifier; tinyprune does not "
                            "load it")


def _check_spec(spec, source: str) -> None:
    """Dict keys of a pytree spec: FX writes them into a dict literal of the generated forward."""
    stack = [spec]
    while stack:
        node = stack.pop()
        if node is None:
            continue
        if isinstance(node.context, (list, tuple)):
            for key in node.context:
                if not (isinstance(key, int) or _identifier(key)):
                    raise _refuse("an input/output key", key, source)
        stack.extend(node.children() if callable(getattr(node, "children", None)) else node.children_specs)


def check_program(program, source: str) -> None:
    """UnsupportedModel unless every name in the ExportedProgram is a plain (dotted) identifier."""
    for name in list(program.state_dict) + list(program.constants):
        if not _dotted(name):
            raise _refuse("a weight", name, source)
    sig = program.graph_signature
    for spec in list(sig.input_specs) + list(sig.output_specs):
        arg_name = getattr(spec.arg, "name", None)
        if arg_name is not None and not _identifier(arg_name):
            raise _refuse("an input or output", arg_name, source)
        if spec.target is not None and not _dotted(spec.target):
            raise _refuse("an input or output target", spec.target, source)
    for entry in program.module_call_graph:
        if entry.fqn and not _dotted(entry.fqn):
            raise _refuse("a module path", entry.fqn, source)
        if entry.signature is not None:
            for arg in entry.signature.forward_arg_names or []:
                if not _identifier(arg):
                    raise _refuse("a forward argument", arg, source)
            _check_spec(entry.signature.in_spec, source)
            _check_spec(entry.signature.out_spec, source)
    check_graph(program.graph_module, source)


def check_graph(gm, source: str) -> None:
    """UnsupportedModel unless the GraphModule's node names, attribute targets, state names and
    forward parameters are plain identifiers; call this before building or recompiling it."""
    for node in gm.graph.nodes:
        if not _identifier(node.name):
            raise _refuse("a graph node", node.name, source)
        if node.op == "placeholder" and not _identifier(node.target):
            raise _refuse("an input", node.target, source)
        if node.op in ("get_attr", "call_module", "call_method") and not _dotted(node.target):
            raise _refuse("a graph target", node.target, source)
        if node.op == "call_function" and isinstance(node.target, str):
            raise _refuse("a graph target", node.target, source)
    names = [n for n, _ in gm.named_parameters(remove_duplicate=False)]
    names += [n for n, _ in gm.named_buffers(remove_duplicate=False)]
    names += [n for n, _ in gm.named_modules(remove_duplicate=False) if n]
    for name in names:
        if not _dotted(name):
            raise _refuse("a weight or module", name, source)
    info = getattr(gm.graph._codegen, "pytree_info", None)
    if info is not None:
        for arg in info.orig_args:
            if not _identifier(arg):
                raise _refuse("a forward argument", arg, source)
        _check_spec(info.in_spec, source)
        _check_spec(info.out_spec, source)
