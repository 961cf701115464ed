"""Turn any loaded model into a ``torch.nn.Module`` whose conv/linear/batch-norm are real modules.

TorchScript and ``torch.export`` graphs call ``aten.conv2d``/``aten.linear``/``aten.batch_norm``
on raw tensors, so structural pruning (which works on ``nn.Conv2d``/``nn.Linear``/``nn.BatchNorm``)
has nothing to act on. An FX pass over ``ExportedProgram.module()`` replaces each such call by a
``call_module`` of a freshly built module holding the same tensors; TorchScript goes through
``torch.export``'s TorchScript converter first, so every format takes one path.
"""

from __future__ import annotations

import contextlib
import io

import torch
import torch.fx as fx
import torch.nn as nn

from tinyprune import limits
from tinyprune.errors import UnsupportedModel
from tinyprune.load import LoadedModel
from tinyprune.pt2_names import check_graph

aten = torch.ops.aten
_CONV = {aten.conv2d.default, aten.conv1d.default, aten.convolution.default}
_LINEAR = {aten.linear.default}
_BN = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default}
_VIEWS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}
LIFT_SECONDS = 60


def _attr(gm: fx.GraphModule, node) -> torch.Tensor | None:
    if node is None:
        return None
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        raise UnsupportedModel(f"layer {node} takes weights computed at run time; cannot lift it to a module")
    return gm.get_submodule("").get_parameter(node.target) if _is_param(gm, node.target) else gm.get_buffer(node.target)


def _is_param(gm, target: str) -> bool:
    try:
        gm.get_parameter(target)
        return True
    except AttributeError:
        return False


def _arg(node: fx.Node, i: int, name: str, default):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _conv(gm, node):
    w = _attr(gm, node.args[1])
    b = _attr(gm, _arg(node, 2, "bias", None))
    if node.target is aten.convolution.default:
        stride, padding, dilation, transposed, _, groups = node.args[3:9]
        if transposed:
            return None  # transposed convs stay functional: pruning treats them as fixed ops
    else:
        stride = _arg(node, 3, "stride", [1])
        padding = _arg(node, 4, "padding", [0])
        dilation = _arg(node, 5, "dilation", [1])
        groups = _arg(node, 6, "groups", 1)
    if isinstance(padding, str):
        raise UnsupportedModel(f"conv {node.name} uses padding={padding!r}; re-export with numeric padding")
    cls = {3: nn.Conv1d, 4: nn.Conv2d}.get(w.dim())
    if cls is None:
        return None
    spatial = w.dim() - 2

    def full(v):  # aten allows [s] to mean [s, s]
        v = [v] if isinstance(v, int) else list(v)
        return tuple(v * spatial if len(v) == 1 else v)

    m = cls(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=full(stride),
            padding=full(padding), dilation=full(dilation), groups=groups, bias=b is not None)
    m.weight = nn.Parameter(w.detach().clone())
    if b is not None:
        m.bias = nn.Parameter(b.detach().clone())
    return m


def _linear(gm, node):
    w = _attr(gm, node.args[1])
    b = _attr(gm, _arg(node, 2, "bias", None))
    m = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    m.weight = nn.Parameter(w.detach().clone())
    if b is not None:
        m.bias = nn.Parameter(b.detach().clone())
    return m


def _batch_norm(gm, node):
    if node.target is aten.batch_norm.default:
        x, w, b, mean, var, training, momentum, eps = node.args[:8]
        if training:
            return None
    else:  # _native_batch_norm_legit_no_training(x, w, b, mean, var, momentum, eps)
        x, w, b, mean, var, momentum, eps = node.args[:7]
    mean, var = _attr(gm, mean), _attr(gm, var)
    val = x.meta.get("val") if isinstance(x, fx.Node) else None
    rank = val.dim() if val is not None else 4
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}[rank]
    m = cls(mean.numel(), eps=eps, momentum=momentum, affine=w is not None)
    if w is not None:
        m.weight = nn.Parameter(_attr(gm, w).detach().clone())
        m.bias = nn.Parameter(_attr(gm, b).detach().clone())
    m.running_mean.copy_(mean)
    m.running_var.copy_(var)
    return m.eval()


def _preferred_name(node: fx.Node) -> str | None:
    # The owner of the weight ("features.0" for "features.0.weight") keeps reports in the
    # user's own layer names.
    weight = node.args[3] if node.target in _BN else node.args[1]
    if isinstance(weight, fx.Node) and "." in weight.target:
        return weight.target.rsplit(".", 1)[0]
    return None


def _export_batch(graph: fx.Graph) -> int | None:
    """The batch size the program was exported with: the first input's leading dimension."""
    for node in graph.nodes:
        if node.op == "placeholder":
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor) and val.dim() >= 1 and isinstance(val.shape[0], int):
                return int(val.shape[0])
            return None
    return None


def _unpin_view(graph: fx.Graph, node: fx.Node, batch: int | None) -> bool:
    """A view/reshape whose leading size is the export's batch, batch-independent; True when rewritten.

    ``x.view(B, -1)`` becomes a flatten; a longer shape gets -1 for B (its other sizes from the
    traced output when it already has a -1). Only where the input's leading size is that batch
    too, so a view that folds the batch into another dimension is left alone."""
    shape = node.args[1] if len(node.args) > 1 else None
    if batch is None or not isinstance(shape, (list, tuple)) or len(shape) < 2 or shape[0] != batch:
        return False
    source = node.args[0]
    val_in = source.meta.get("val") if isinstance(source, fx.Node) else None
    if batch != 1 and not (isinstance(val_in, torch.Tensor) and val_in.dim() >= 1 and val_in.shape[0] == batch):
        return False
    if len(shape) == 2:
        with graph.inserting_before(node):
            flat = graph.call_function(torch.flatten, (source, 1))
        flat.meta.update(node.meta)
        node.replace_all_uses_with(flat)
        graph.erase_node(node)
        return True
    rest = list(shape[1:])
    if -1 in rest:
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor) or not all(isinstance(d, int) for d in val.shape[1:]):
            return False
        rest = [int(d) for d in val.shape[1:]]
    node.args = (source, [-1, *rest], *node.args[2:])
    return True


def unpinned(gm: fx.GraphModule) -> fx.GraphModule:
    """``ExportedProgram.module()`` runnable at any batch size, in place.

    An export pins the example's batch size three ways: the input-shape check in a pre-hook,
    the guards (``_guards_fn``: ``x.size()[0] == 2`` whichever layer reads the input), and
    views that spell the batch out (``x.view(2, -1)`` for a flatten). Data, calibration and
    TFLM all run at other batch sizes (1 on the device)."""
    graph = gm.graph
    gm._forward_pre_hooks.clear()
    batch = _export_batch(graph) or 1  # no traced shapes: a batch-1 export, as before they were recorded
    changed = False
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            graph.erase_node(node)
            changed = True
        elif node.op == "call_function" and node.target is aten._assert_tensor_metadata.default:
            graph.erase_node(node)
            changed = True
        elif node.op == "call_function" and node.target in _VIEWS:
            changed |= _unpin_view(graph, node, batch)
    if changed:
        graph.lint()
        check_graph(gm, "the program")  # recompiling pastes these names into Python
        gm.recompile()
    return gm


def lift_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """Replace functional conv/linear/batch-norm calls by ``nn`` modules; drop export guards."""
    gm = unpinned(gm)
    graph = gm.graph
    lifted: list[tuple[fx.Node, str | None]] = []
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        build = _conv if node.target in _CONV else _linear if node.target in _LINEAR else \
            _batch_norm if node.target in _BN else None
        module = build(gm, node) if build else None
        if module is None:
            continue
        temp = f"_tinyprune_lifted_{len(lifted)}"
        gm.add_submodule(temp, module)
        preferred = _preferred_name(node)
        with graph.inserting_before(node):
            new = graph.call_module(temp, (node.args[0],))
        # A later batch norm reads its input's rank from this value (BatchNorm1d after a Linear).
        val = node.meta.get("val")
        new.meta["val"] = val[0] if isinstance(val, (tuple, list)) else val
        if node.target is aten._native_batch_norm_legit_no_training.default:
            # returns (out, mean, rstd); inference graphs only use element 0
            for user in list(node.users):
                user.replace_all_uses_with(new)
                graph.erase_node(user)
        else:
            node.replace_all_uses_with(new)
        graph.erase_node(node)
        lifted.append((new, preferred))
    graph.eliminate_dead_code()
    _drop_unreferenced_tensors(gm)
    gm.delete_all_unused_submodules()
    for node, preferred in lifted:
        if preferred and not _exists(gm, preferred):
            module = gm.get_submodule(node.target)
            gm.delete_submodule(node.target)
            gm.add_submodule(preferred, module)
            node.target = preferred
    graph.lint()
    check_graph(gm, "the lifted model")  # the GraphModule below compiles these names into its forward
    # A plain GraphModule: ExportedProgram.module() forbids eval() and carries export hooks.
    return fx.GraphModule(gm, graph, class_name="LiftedModel")


def _exists(gm: nn.Module, name: str) -> bool:
    try:
        gm.get_submodule(name)
        return True
    except AttributeError:
        return False


def _drop_unreferenced_tensors(gm: fx.GraphModule) -> None:
    """Delete the raw weight tensors whose calls were lifted (the new modules hold copies)."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    lifted_prefixes = tuple(f"{n.target}." for n in gm.graph.nodes if n.op == "call_module")
    named = list(gm.named_parameters(remove_duplicate=False)) + list(gm.named_buffers(remove_duplicate=False))
    for name, _ in named:
        if name in used or name.startswith(lifted_prefixes):
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = gm.get_submodule(owner_name) if owner_name else gm
        if hasattr(owner, attr):
            delattr(owner, attr)


def to_module(loaded: LoadedModel, example: torch.Tensor) -> nn.Module:
    """An eval-mode ``nn.Module`` for any format, checked to compute what the loaded model does."""
    if loaded.format in ("pickled-module", "state-dict"):
        return loaded.obj.eval()
    if loaded.format == "torchscript":
        from torch._export.converter import TS2EPConverter

        try:
            program = TS2EPConverter(loaded.obj, (example,)).convert()
        except Exception as exc:
            raise UnsupportedModel(f"cannot convert TorchScript {loaded.path.name} to a graph: {str(exc).splitlines()[0][:200]}") from None
        lifted = lift_graph(program.module())
        _check_same(loaded, lifted, example)
        return lifted.eval()
    # the graph came from an untrusted archive: running it once is bounded like reading it
    with limits.bounded(f"running {loaded.path.name}", LIFT_SECONDS):
        lifted = lift_graph(loaded.obj.module())
        _check_same(loaded, lifted, example)
    return lifted.eval()


def _check_same(loaded: LoadedModel, lifted: nn.Module, example: torch.Tensor) -> None:
    reference = loaded.callable()
    # a GraphModule whose forward fails prints its generated code to stderr; the caller reports one line
    with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
        want = reference(example)
        got = lifted(example)
        batch = example.expand(2, *example.shape[1:]).contiguous()
        try:
            lifted(batch)
        except Exception as exc:
            raise UnsupportedModel(
                f"{loaded.path.name}: the graph only runs at batch size {example.shape[0]} "
                f"({str(exc).splitlines()[0][:120]}); export it with a dynamic batch dimension"
            ) from None
    if not torch.allclose(want, got, rtol=1e-4, atol=1e-5):
        raise UnsupportedModel(
            f"lifting {loaded.path.name} to torch.nn modules changed its output "
            f"(max diff {float((want - got).abs().max()):.2e}); please report this model"
        )
