"""Front end: lift any nn.Module to a torch.fx GraphModule with shapes, leafing what cannot trace.

torch.fx traces Python code once, so two things break it: code that cannot run on proxies (control
flow on tensor values, ``len(proxy)``, ...) and code that can but bakes the train/eval flag into the
graph (``if self.training:``). We handle both per submodule: such a submodule becomes a leaf, a
single opaque call that runs eagerly, and tracing retries. The result computes the same function as
the eager model in both modes.
"""

from __future__ import annotations

import logging
import operator
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

log = logging.getLogger(__name__)

META_KEY = "fxdnat"
"""Key of the dict that fxdnat keeps in ``GraphModule.meta`` (leaves, input shapes)."""


class TraceError(ValueError):
    """The model cannot be traced even with leaves, or does not run on the example inputs."""


class _NeedsLeaf(Exception):
    """Raised through the tracer when the forward of the module at ``path`` cannot be traced."""

    def __init__(self, path: str, cause: BaseException) -> None:
        super().__init__(path)
        self.path = path
        self.cause = cause


def _timm_notrace() -> tuple[tuple[type, ...], tuple[Callable, ...]]:
    """timm's registries of modules and functions that must stay opaque to FX."""
    try:
        from timm.layers import _fx as timm_fx
    except ImportError:  # timm is optional for the tracer itself
        return (), ()
    return tuple(timm_fx.get_notrace_modules()), tuple(timm_fx.get_notrace_functions())


class _LeafingTracer(fx.Tracer):
    """An FX tracer with extra leaves, that reports which submodule's forward failed."""

    def __init__(
        self,
        leaf_types: tuple[type, ...],
        leaf_paths: set[str],
        autowrap_functions: tuple[Callable, ...],
    ) -> None:
        super().__init__(autowrap_functions=autowrap_functions)
        self.leaf_types = leaf_types
        self.leaf_paths = leaf_paths

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            module_qualified_name in self.leaf_paths
            or isinstance(m, self.leaf_types)
            or super().is_leaf_module(m, module_qualified_name)
        )

    def call_module(self, m: nn.Module, forward: Callable, args: tuple, kwargs: dict) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except _NeedsLeaf:
            raise
        except Exception as exc:  # the innermost failing module is the one to make a leaf
            raise _NeedsLeaf(self.path_of_module(m), exc) from exc


def trace(
    model: nn.Module,
    example_inputs: Any,
    *,
    leaves: Iterable[str | type] = (),
    autowrap_functions: Sequence[Callable] = (),
    max_leaves: int = 200,
) -> fx.GraphModule:
    """Trace ``model`` into a GraphModule whose nodes carry shapes in ``node.meta["tensor_meta"]``.

    Args:
        model: any module whose top-level forward is traceable.
        example_inputs: a tensor or a tuple of positional inputs, used for shape propagation only.
        leaves: extra module paths (``"blocks.3.attn"``) or classes to keep opaque.
        autowrap_functions: extra functions to keep as single calls (like ``torch.fx.wrap``).
        max_leaves: give up after making this many submodules leaves.

    Returns:
        The GraphModule (sharing parameters with ``model``, in ``model``'s train/eval mode). The
        submodules made leaves, with the reason, are in ``gm.meta["fxdnat"]["leaves"]``.

    Raises:
        TraceError: naming the module and the reason when the model cannot be traced or run.
    """
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    timm_types, timm_functions = _timm_notrace()
    leaf_types = timm_types + tuple(x for x in leaves if isinstance(x, type))
    leaf_paths = {x for x in leaves if isinstance(x, str)}
    tracer_args = (leaf_types, leaf_paths, tuple(autowrap_functions) + timm_functions)
    reasons: dict[str, str] = {}
    modes = {m: m.training for m in model.modules()}
    try:
        while True:
            if len(reasons) > max_leaves:
                raise TraceError(
                    f"gave up tracing {type(model).__name__}: over {max_leaves} leaves"
                )
            graphs = {mode: _trace_in_mode(model, mode, tracer_args) for mode in (True, False)}
            if isinstance(graphs[True], _NeedsLeaf) or isinstance(graphs[False], _NeedsLeaf):
                failure = graphs[True] if isinstance(graphs[True], _NeedsLeaf) else graphs[False]
                _add_leaf(model, failure.path, _describe(failure.cause), leaf_paths, reasons)
                continue
            merged = _read_mode_at_run_time(graphs[True].graph, graphs[False].graph)
            if merged is not None:
                gm = graphs[True]
                break
            differing = _mode_dependent_modules(graphs[True].graph, graphs[False].graph)
            if not differing:  # the traces differ in names only
                gm = graphs[True]
                break
            for path in differing:
                _add_leaf(
                    model, path, "its traced form depends on train/eval mode", leaf_paths, reasons
                )
    finally:
        for m, training in modes.items():
            m.training = training
    gm.training = model.training
    gm.recompile()
    _functionalize_inplace_adds(gm)
    _propagate_shapes(gm, inputs)
    gm.meta[META_KEY] = {
        "leaves": reasons,
        # GraphModule keeps only the modules it calls, so keep the cell names declared by modules
        # that were traced through (see passes.gate: `fxdnat_cell`).
        "cells": {
            path: m.fxdnat_cell
            for path, m in model.named_modules()
            if isinstance(getattr(m, "fxdnat_cell", None), str)
        },
        "input_shapes": [tuple(x.shape) if isinstance(x, torch.Tensor) else None for x in inputs],
    }
    for path, reason in reasons.items():
        log.info("leaf %s: %s", path, reason)
    return gm


def _trace_in_mode(
    model: nn.Module, training: bool, tracer_args: tuple
) -> fx.GraphModule | _NeedsLeaf:
    """Trace in one mode; the result holds the tensor constants FX stored on the model, which
    are removed from the model again (so the next trace names its constants the same way and
    the user's model is left as it was)."""
    model.train(training)
    before = set(vars(model))
    try:
        graph = _LeafingTracer(*tracer_args).trace(model)
        return fx.GraphModule(model, graph, class_name=type(model).__name__)
    except _NeedsLeaf as failure:
        return failure
    except Exception as exc:
        raise TraceError(
            f"cannot trace {type(model).__name__}.forward: {_describe(exc)}; make it traceable "
            "or trace a submodule (`fxdnat.trace(model.features, ...)`)"
        ) from exc
    finally:
        for name in set(vars(model)) - before:  # e.g. _tensor_constant0
            delattr(model, name)


def _read_mode_at_run_time(train: fx.Graph, eval_: fx.Graph) -> fx.Graph | None:
    """One graph for both modes, when the two traces differ only in constants equal to the
    mode flag (``F.dropout(x, p, training=self.training)``): those become reads of the module's
    ``training`` attribute at run time. None when the traces differ in any other way.
    """
    pairs = list(zip(train.nodes, eval_.nodes, strict=False))
    if len(train.nodes) != len(eval_.nodes) or any(
        (a.op, a.target, a.name) != (b.op, b.target, b.name) for a, b in pairs
    ):
        return None
    if not all(_differs_only_by_mode(a, b) for a, b in pairs):
        return None
    slots = [(a, b) for a, b in pairs if _has_mode_flag((a.args, a.kwargs), (b.args, b.kwargs))]
    if slots:
        first = next(n for n in train.nodes if n.op != "placeholder")
        with train.inserting_before(first), warnings.catch_warnings():
            # FX warns that `training` is no parameter, buffer or module; it is a plain attribute
            # that every module has, which is exactly what must be read
            warnings.simplefilter("ignore", UserWarning)
            flag = train.get_attr("training")
        for a, b in slots:
            a.args = _swap_mode(a.args, b.args, flag)
            a.kwargs = _swap_mode(a.kwargs, b.kwargs, flag)
    return train


def _differs_only_by_mode(a: fx.Node, b: fx.Node) -> bool:
    def same(x: Any, y: Any) -> bool:
        if isinstance(x, bool) and isinstance(y, bool):
            return x == y or (x is True and y is False)
        if isinstance(x, fx.Node) or isinstance(y, fx.Node):
            return isinstance(x, fx.Node) and isinstance(y, fx.Node) and x.name == y.name
        if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
            return len(x) == len(y) and all(same(i, j) for i, j in zip(x, y, strict=True))
        if isinstance(x, dict) and isinstance(y, dict):
            return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        return type(x) is type(y) and x == y

    return same(a.args, b.args) and same(a.kwargs, b.kwargs)


def _has_mode_flag(x: Any, y: Any) -> bool:
    if x is True and y is False:
        return True
    if isinstance(x, (list, tuple)):
        return any(_has_mode_flag(i, j) for i, j in zip(x, y, strict=True))
    if isinstance(x, dict):
        return any(_has_mode_flag(x[k], y[k]) for k in x)
    return False


def _swap_mode(x: Any, y: Any, flag: fx.Node) -> Any:
    if x is True and y is False:
        return flag
    if isinstance(x, (list, tuple)):
        return type(x)(_swap_mode(i, j, flag) for i, j in zip(x, y, strict=True))
    if isinstance(x, dict):
        return {k: _swap_mode(x[k], y[k], flag) for k in x}
    return x


def _add_leaf(model: nn.Module, path: str, reason: str, paths: set[str], reasons: dict) -> None:
    if path in paths:  # a leaf that still fails cannot be fixed by leafing it again
        raise TraceError(
            f"cannot trace {type(model).__name__}: leaf '{path}' still fails: {reason}"
        )
    paths.add(path)
    reasons[path] = reason


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _owner(node: fx.Node) -> str:
    """The module whose forward created ``node`` ("" for the root)."""
    stack = [path for path, _ in node.meta.get("nn_module_stack", {}).values()]
    if node.op == "call_module":  # the stack ends with the called leaf itself
        stack = stack[:-1]
    return stack[-1] if stack else ""


def _mode_dependent_modules(train: fx.Graph, eval_: fx.Graph) -> list[str]:
    """Outermost modules whose own code traced differently in train and eval mode.

    Each module's signature lists the nodes its forward created, with arguments normalised to
    positions inside the module (or the owning module's path, for values made elsewhere), so a
    difference in one submodule does not spill into its neighbours.
    """
    signatures = [_module_signatures(g) for g in (train, eval_)]
    differing = {
        path
        for path in set(signatures[0]) | set(signatures[1])
        if signatures[0].get(path) != signatures[1].get(path)
    }
    if "" in differing:
        raise TraceError(
            "the model's own forward branches on train/eval mode (self.training) outside any "
            "submodule; move that branch into a submodule so it can become a leaf"
        )
    return sorted(p for p in differing if not any(_is_ancestor(q, p) for q in differing))


def _is_ancestor(parent: str, child: str) -> bool:
    return parent == "" or child.startswith(parent + ".")


def _module_signatures(graph: fx.Graph) -> dict[str, list]:
    local_index: dict[fx.Node, tuple[str, int]] = {}
    signatures: dict[str, list] = defaultdict(list)

    def normalise(arg: Any) -> Any:
        if isinstance(arg, fx.Node):
            owner, index = local_index[arg]
            return (owner, index) if owner == current else (owner,)
        if isinstance(arg, (list, tuple)):
            return tuple(normalise(a) for a in arg)
        if isinstance(arg, dict):
            return tuple((k, normalise(v)) for k, v in arg.items())
        if isinstance(arg, (int, float, bool, str, type(None), slice, torch.dtype, torch.device)):
            return repr(arg)
        return type(arg).__name__

    for node in graph.nodes:
        current = _owner(node)
        local_index[node] = (current, len(signatures[current]))
        target = (
            node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        )
        signatures[current].append((node.op, target, normalise(node.args), normalise(node.kwargs)))
    return signatures


def _functionalize_inplace_adds(gm: fx.GraphModule) -> None:
    """Rewrite ``y.add_(x)`` as ``z = y + x`` and let later readers of y read z.

    FX already records ``y += x`` as an out-of-place add; this does the same for the explicit
    in-place calls, so that their joins can be gated like any other. Skipped when y is an input,
    an attribute or a view, where the mutation would be visible outside the graph.
    """
    from fxdnat.passes import _graph  # the passes import this module

    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    changed = False
    for node in list(gm.graph.nodes):
        if not _graph.is_inplace_add(node) or "out" in node.kwargs:
            continue
        target = node.args[0]
        if not isinstance(target, fx.Node) or target.op in ("placeholder", "get_attr"):
            continue
        if _graph.is_view(target) or any(_graph.is_view(u) for u in target.users):
            continue
        node.target = "add" if node.op == "call_method" else operator.add
        later = [u for u in target.users if order[u] > order[node]]
        for user in later:
            user.replace_input_with(target, node)
        changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()


def _propagate_shapes(gm: fx.GraphModule, inputs: tuple) -> None:
    """Record shapes in ``node.meta`` by running ``gm`` once in eval mode, without side effects."""
    modes = {m: m.training for m in gm.modules()}
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*inputs)
    except Exception as exc:
        raise TraceError(
            f"{gm.__class__.__name__} does not run on inputs of shapes "
            f"{[tuple(getattr(x, 'shape', ())) for x in inputs]}: {_describe(exc)}; check "
            "--input-size or the example inputs"
        ) from exc
    finally:
        for m, training in modes.items():
            m.training = training
