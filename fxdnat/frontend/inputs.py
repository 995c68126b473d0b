"""What is traced: the module inside a wrapper, and how the example inputs bind to its forward.

A tensor argument becomes a placeholder. A dict, list or tuple holding tensors becomes one
placeholder per tensor (torch.fx's pytree binding), so the model's own code can index and iterate
over it. Everything else — a number, a flag, an argument the example does not give and that has
a default — is fixed at its value: tracing cannot follow Python control flow on it anyway, and
the traced module asserts that later calls pass the same value.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from torch import fx, nn
from torch.fx._symbolic_trace import PH
from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo
from torch.utils import _pytree as pytree

from fxdnat.frontend.errors import TraceError

log = logging.getLogger(__name__)


def unwrap(model: nn.Module) -> nn.Module:
    """The module a DataParallel, DistributedDataParallel or ``torch.compile`` wrapper holds."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            inner = model.module
        elif type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod"):
            inner = model._orig_mod  # torch.compile's wrapper
        else:
            break
        log.info("tracing the %s inside %s", type(inner).__name__, type(model).__name__)
        model = inner
    if isinstance(model, torch.jit.ScriptModule):
        raise TraceError(
            f"{type(model).__name__} is a TorchScript module, which torch.fx cannot trace; pass "
            "the Python nn.Module it was scripted from"
        )
    return model


def bind(model: nn.Module, inputs: tuple) -> dict[str, Any]:
    """``concrete_args`` for ``torch.fx.Tracer.trace``: see the module docstring.

    Raises:
        TraceError: when the example inputs do not fit ``model.forward``'s signature.
    """
    name = type(model).__name__
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):  # a builtin or C forward: let FX bind what it can
        return {}
    params = list(signature.parameters.values())
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return {}  # forward(*args): FX binds the examples positionally itself
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(inputs) > len(positional):
        raise TraceError(
            f"{name}.forward takes {len(positional)} positional inputs "
            f"({', '.join(p.name for p in positional)}) but the example gives {len(inputs)}; "
            "pass a tuple with one value per argument"
        )
    concrete: dict[str, Any] = {}
    for param, value in zip(positional, inputs, strict=False):
        if not isinstance(value, torch.Tensor):
            concrete[param.name] = pytree.tree_map(
                lambda v: PH if isinstance(v, torch.Tensor) else v, value
            )
    for param in params[len(inputs) :]:
        if param.kind is param.VAR_KEYWORD:  # **kwargs: none given, none traced
            concrete[f"**{param.name}"] = {}
            continue
        if param.default is param.empty:
            raise TraceError(
                f"{name}.forward needs the argument {param.name!r}, which the example inputs "
                f"do not give; pass a tuple of {len(positional)} example inputs"
            )
        concrete[param.name] = param.default
    return concrete


def drop_fixed_arguments(graph: fx.Graph, concrete: dict[str, Any], given: int) -> None:
    """Make the ``forward`` of a graph that takes structured inputs compile, and take the call
    the example made.

    torch.fx then writes ``forward`` with one flattening line, and the placeholders it keeps for
    arguments with defaults do not fit in it — the generated code does not compile. The
    arguments the example did not give (``given`` is how many it gave) were constants to the
    trace: they go, with the checks that read them. The others stay, without their defaults, so
    the traced module is called like the model was on the example.
    """
    codegen = graph._codegen
    if not isinstance(codegen, _PyTreeCodeGen):
        return
    info = codegen.pytree_info
    names = list(info.orig_args)  # the first is the module itself, whatever its name
    specs = list(info.in_spec.children())[: len(names)]  # past them: the empty **kwargs
    placeholders = iter([n for n in graph.nodes if n.op == "placeholder"])
    # torch.fx's generated code names the module `self` (`def forward(this, ...)` would not run)
    keep_names, keep_specs = ["self"], specs[:1]
    for index, (name, spec) in enumerate(zip(names[1:], specs[1:], strict=True)):
        nodes = [next(placeholders) for _ in range(spec.num_leaves)]
        if index >= given and name in concrete and not _holds_placeholder(concrete[name]):
            for node in nodes:
                _erase_with_readers(graph, node)
            continue
        keep_names.append(name)
        keep_specs.append(spec)
        for node in nodes:
            node.args = ()  # no default: it would not fit in the flattening line
    spec = pytree.TreeSpec(info.in_spec.type, info.in_spec.context, keep_specs)
    graph._codegen = _PyTreeCodeGen(_PyTreeInfo(keep_names, spec, info.out_spec))


def _holds_placeholder(value: Any) -> bool:
    return any(v is PH for v in pytree.tree_leaves(value))


def _erase_with_readers(graph: fx.Graph, node: fx.Node) -> None:
    """``node`` and what reads it: the checks torch.fx adds for a fixed argument."""
    for user in list(node.users):
        _erase_with_readers(graph, user)
    graph.erase_node(node)
