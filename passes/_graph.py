"""Graph helpers shared by the passes: activations, dominators, adds, in-place ops, dead code."""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator

import networkx as nx
import torch
from torch import fx

ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
ADD_METHODS = ("add", "add_")
INPLACE_ADDS = (operator.iadd, "add_")
_VIEW_METHODS = {
    "view",
    "view_as",
    "reshape",
    "reshape_as",
    "permute",
    "transpose",
    "t",
    "expand",
    "expand_as",
    "narrow",
    "select",
    "squeeze",
    "unsqueeze",
    "flatten",
    "unflatten",
    "unbind",
    "split",
    "chunk",
    "as_strided",
    "diagonal",
    "movedim",
    "unfold",
    "detach",
    "contiguous",
}
_VIEW_FUNCTIONS = {
    operator.getitem,
    torch.reshape,
    torch.flatten,
    torch.transpose,
    torch.permute,
    torch.squeeze,
    torch.unsqueeze,
    torch.narrow,
    torch.select,
    torch.split,
    torch.chunk,
    torch.unbind,
    torch.movedim,
    torch.detach,
}
_ROOT = "<root>"  # virtual entry of the activation graph, joined to every model input


def shape(node: fx.Node) -> tuple[int, ...] | None:
    """The tensor shape that shape propagation recorded on ``node`` (None if not a tensor)."""
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if hasattr(meta, "shape") else None


def owner(node: fx.Node) -> str:
    """Path of the module whose forward created ``node`` ("" for the root module)."""
    stack = [path for path, _ in node.meta.get("nn_module_stack", {}).values()]
    if node.op == "call_module":  # the stack ends with the called module itself
        stack = stack[:-1]
    return stack[-1] if stack else ""


def common_module(paths: Iterable[str]) -> str:
    """The deepest module path that contains every one of ``paths``."""
    split = [p.split(".") if p else [] for p in paths]
    common: list[str] = []
    for parts in zip(*split, strict=False):
        if any(part != parts[0] for part in parts):
            break
        common.append(parts[0])
    return ".".join(common)


def activations(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose value depends on a tensor input of the model (the activation graph)."""
    active: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder":
            if shape(node) is not None:
                active.add(node)
        elif node.op != "output" and any(arg in active for arg in node.all_input_nodes):
            active.add(node)
    return active


def immediate_dominators(graph: fx.Graph, active: set[fx.Node]) -> dict[fx.Node, fx.Node | None]:
    """Immediate dominator of every activation node (None for the model inputs)."""
    dag = nx.DiGraph()
    dag.add_node(_ROOT)
    for node in graph.nodes:
        if node not in active:
            continue
        dag.add_node(node)
        if node.op == "placeholder":
            dag.add_edge(_ROOT, node)
        for arg in node.all_input_nodes:
            if arg in active:
                dag.add_edge(arg, node)
    idom = nx.immediate_dominators(dag, _ROOT)
    return {node: (None if dom == _ROOT else dom) for node, dom in idom.items() if node != _ROOT}


def between(entry: fx.Node, exit_: fx.Node, active: set[fx.Node]) -> set[fx.Node]:
    """Nodes on paths from ``entry`` (excluded) to ``exit_`` (included); ``entry`` must dominate."""
    found = {exit_}
    stack = [exit_]
    while stack:
        for arg in stack.pop().all_input_nodes:
            if arg in active and arg is not entry and arg not in found:
                found.add(arg)
                stack.append(arg)
    return found


def is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in ADD_FUNCTIONS) or (
        node.op == "call_method" and node.target in ADD_METHODS
    )


def is_inplace_add(node: fx.Node) -> bool:
    return is_add(node) and node.target in INPLACE_ADDS


def use_count(node: fx.Node) -> int:
    """How many argument slots read ``node`` (``x + x`` reads it twice)."""
    return sum(_count(user.args, node) + _count(user.kwargs, node) for user in node.users)


def _count(args: object, node: fx.Node) -> int:
    if args is node:
        return 1
    if isinstance(args, (list, tuple)):
        return sum(_count(a, node) for a in args)
    if isinstance(args, dict):
        return sum(_count(a, node) for a in args.values())
    return 0


def is_inplace(node: fx.Node) -> bool:
    """Calls that mutate their first argument (``x.relu_()``, ``x += y``, ``F.relu(x, True)``)."""
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("_")
    if node.op != "call_function":
        return False
    name = getattr(node.target, "__name__", "")
    if node.target is operator.setitem or name.startswith("__i") or node.kwargs.get("inplace"):
        return True
    return (
        getattr(node.target, "__module__", "") in ("_operator", "operator") and name.startswith("i")
    ) or (name.endswith("_") and not name.startswith("_"))


def is_view(node: fx.Node) -> bool:
    return (node.op == "call_method" and node.target in _VIEW_METHODS) or (
        node.op == "call_function" and node.target in _VIEW_FUNCTIONS
    )


def _mutated_roots(node: fx.Node) -> Iterator[fx.Node]:
    """The tensor an in-place call mutates, and every tensor it is a view of."""
    target = node.args[0] if node.args else None
    while isinstance(target, fx.Node):
        yield target
        target = target.args[0] if is_view(target) and target.args else None


def live_nodes(graph: fx.Graph, keep: Iterable[fx.Node] = ()) -> set[fx.Node]:
    """Nodes whose value or side effect can reach the output (``keep`` counts as reaching it).

    FX's own ``eliminate_dead_code`` treats every ``call_method`` as pure, so it would drop
    ``x.relu_()`` whose result is unused but whose mutation is read later. Here an in-place call
    is live while the tensor it mutates (or any tensor that is a view of) is live.
    """
    live: set[fx.Node] = set(keep)
    changed = True
    while changed:
        changed = False
        for node in reversed(graph.nodes):
            if node in live:
                continue
            inplace = is_inplace(node)
            if (
                node.op in ("placeholder", "output")
                or any(user in live for user in node.users)
                or (inplace and any(_mutated_live(r, live) for r in _mutated_roots(node)))
                or (
                    not inplace and node.op != "call_module" and node.is_impure(impure_random=False)
                )
            ):
                live.add(node)
                changed = True
    return live


def eliminate_dead_code(gm: fx.GraphModule, keep: Iterable[fx.Node] = ()) -> int:
    """Remove the nodes that are not live (see :func:`live_nodes`); returns how many went."""
    live = live_nodes(gm.graph, keep)
    dead = [node for node in gm.graph.nodes if node not in live]
    for node in reversed(dead):
        gm.graph.erase_node(node)
    return len(dead)


def _mutated_live(target: fx.Node, live: set[fx.Node]) -> bool:
    # Inputs and attributes outlive the call: mutating them is a visible side effect.
    return target in live or target.op in ("placeholder", "get_attr")


def used_tensor_names(gm: fx.GraphModule) -> set[str]:
    """Qualified names of the parameters and buffers the graph reads (directly or via a leaf)."""
    names: set[str] = set()
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            names.add(node.target)
        elif node.op == "call_module":
            module = gm.get_submodule(node.target)
            prefix = node.target + "."
            names.update(prefix + n for n, _ in module.named_parameters(remove_duplicate=False))
            names.update(prefix + n for n, _ in module.named_buffers(remove_duplicate=False))
    return names


def delete_tensors(gm: fx.GraphModule, names: Iterable[str]) -> None:
    """Delete parameters/buffers by qualified name (when the graph no longer reads them)."""
    for name in names:
        path, _, attr = name.rpartition(".")
        try:
            module = gm.get_submodule(path)
        except AttributeError:  # its module went with delete_all_unused_submodules
            continue
        if attr in module._parameters:
            del module._parameters[attr]
        elif attr in module._buffers:
            del module._buffers[attr]


def finish(gm: fx.GraphModule) -> fx.GraphModule:
    """Every mutation ends here: check the graph, regenerate the code."""
    gm.graph.lint()
    gm.recompile()
    return gm


def op_label(gm: fx.GraphModule, node: fx.Node) -> str:
    """A short name for what ``node`` computes, ignoring channel counts and strides.

    ``conv3x3``, ``dwconv5x5``, ``dilconv3x3``, ``bn``, ``relu``, ``maxpool3x3``, ``add``, ...;
    used in cell signatures (tie="cell") and in op summaries.
    """
    if node.op == "call_module":
        return _module_label(gm.get_submodule(node.target))
    if node.op == "call_method":
        return str(node.target).rstrip("_")
    if node.op == "call_function":
        if node.target is operator.getitem and _has_slice(node.args[1]):
            return "slice"  # x[:, :, ::2, ::2]: a strided subsample, not tuple unpacking
        name = getattr(node.target, "__name__", str(node.target))
        return name.strip("_").removeprefix("i") if name.startswith("__i") else name.rstrip("_")
    return node.op


def _has_slice(index: object) -> bool:
    return isinstance(index, slice) or (
        isinstance(index, tuple) and any(isinstance(i, slice) for i in index)
    )


def _module_label(module: torch.nn.Module) -> str:
    kernel = getattr(module, "kernel_size", None)
    size = (
        "x".join(map(str, kernel))
        if isinstance(kernel, tuple)
        else (f"{kernel}x{kernel}" if isinstance(kernel, int) else "")
    )
    if isinstance(module, torch.nn.modules.conv._ConvNd):
        groups, channels = module.groups, module.in_channels
        kind = (
            "dwconv" if groups == channels and groups > 1 else ("gconv" if groups > 1 else "conv")
        )
        if max(module.dilation) > 1:
            kind = "dil" + kind
        return kind + size
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        return "bn"
    if isinstance(
        module, (torch.nn.modules.pooling._MaxPoolNd, torch.nn.modules.pooling._AvgPoolNd)
    ):
        return ("max" if "Max" in type(module).__name__ else "avg") + "pool" + size
    if isinstance(module, torch.nn.Identity):
        return "identity"
    return type(module).__name__.lower()
