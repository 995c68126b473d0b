"""Graph helpers shared by the passes: data flow, exclusive regions, adds, parameters, labels."""

from __future__ import annotations

import builtins
import copy
import operator
from collections.abc import Iterable

import networkx as nx
import torch
from torch import fx

from fxdnat.frontend.memory import live_nodes, write_dependencies
from fxdnat.ir import Edge

ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
ADD_METHODS = ("add", "add_")
INPLACE_ADDS = (operator.iadd, "add_")
QUIET_OPS = frozenset(
    {"identity", "droppath", "dropout", "getitem", "getattr", "size", "contiguous"}
    # and the ops that only rearrange elements: an attention's split into heads and back
    | {"view", "reshape", "transpose", "permute", "flatten", "unflatten", "chunk", "split"}
)
"""Op labels that do not change what a branch computes: left out of its summary."""
_EXIT = "<exit>"  # virtual end of the data-flow graph, reached from the output and side effects
# Calls whose result depends on their input's shape, dtype or device but not on its values.
_METADATA_METHODS = frozenset(
    [
        "size",
        "dim",
        "ndimension",
        "numel",
        "nelement",
        "element_size",
        "stride",
        "get_device",
        "is_contiguous",
        "is_floating_point",
        "is_complex",
        "new_empty",
        "new_zeros",
        "new_ones",
        "new_full",
        "new_tensor",
    ]
)
_METADATA_FUNCTIONS = frozenset(
    {
        builtins.len,
        torch.numel,
        torch.empty_like,
        torch.zeros_like,
        torch.ones_like,
        torch.full_like,
        torch.rand_like,
        torch.randn_like,
        torch.randint_like,
    }
)


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


def dependencies(graph: fx.Graph) -> dict[fx.Node, set[fx.Node]]:
    """What each node reads: its arguments, and every in-place write to memory it reads that
    happened before it (``c[0] = x`` then ``y = c * 2``: y depends on the write)."""
    deps = {node: set(node.all_input_nodes) for node in graph.nodes}
    for write, readers in write_dependencies(graph).items():
        for reader in readers:
            deps[reader].add(write)
    return deps


def activations(graph: fx.Graph, deps: dict[fx.Node, set[fx.Node]] | None = None) -> set[fx.Node]:
    """Nodes whose value depends on the values of a tensor input of the model (the activation
    graph). A value computed from an input's shape only (``x.size(1)``, ``torch.zeros_like(x)``,
    a position table built from a length) is not an activation."""
    deps = dependencies(graph) if deps is None else deps
    active: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder":
            if shape(node) is not None:
                active.add(node)
        elif node.op != "output" and not _reads_metadata(node) and deps[node] & active:
            active.add(node)
    return active


_METADATA_ATTRIBUTES = frozenset(
    ["shape", "dtype", "device", "ndim", "layout", "is_cuda", "requires_grad"]
)


def _reads_metadata(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target is builtins.getattr:
        return node.args[1] in _METADATA_ATTRIBUTES  # x.shape, not x.T
    return (node.op == "call_method" and node.target in _METADATA_METHODS) or (
        node.op == "call_function" and node.target in _METADATA_FUNCTIONS
    )


def exclusive_regions(graph: fx.Graph, deps: dict[fx.Node, set[fx.Node]]) -> dict:
    """For every live node o: the nodes whose every path to the output (or to a side effect)
    passes through o — what exists only to compute o, o included. Dead code is in none.

    These are o's post-dominated nodes (networkx' ``immediate_dominators`` on the reversed
    data-flow graph), returned as the children lists of the post-dominator tree.
    """
    live = live_nodes(graph, modules=True, random=True)
    readers: dict[fx.Node, list[fx.Node]] = {node: [] for node in live}
    for node in live:
        for dep in deps[node]:
            if dep in live:
                readers[dep].append(node)
    flow = nx.DiGraph()
    flow.add_node(_EXIT)
    for node in live:
        flow.add_node(node)
        if not readers[node]:  # the output, or a side effect nobody reads (a state write)
            flow.add_edge(_EXIT, node)
        for dep in deps[node]:
            if dep in live:
                flow.add_edge(node, dep)
    ipdom = nx.immediate_dominators(flow, _EXIT)
    children: dict[fx.Node, list[fx.Node]] = {}
    for node, parent in ipdom.items():
        if node is not _EXIT and parent is not _EXIT:
            children.setdefault(parent, []).append(node)
    return children


def subtree(children: dict, root: fx.Node) -> set[fx.Node]:
    """``root`` and everything below it in a tree given as children lists."""
    found, stack = {root}, [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            found.add(child)
            stack.append(child)
    return found


def ancestors(node: fx.Node, deps: dict[fx.Node, set[fx.Node]], within: set[fx.Node]) -> set:
    """The nodes of ``within`` that ``node`` depends on, directly or not."""
    found: set[fx.Node] = set()
    stack = [node]
    while stack:
        for dep in deps[stack.pop()]:
            if dep in within and dep not in found:
                found.add(dep)
                stack.append(dep)
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


def copy_module(gm: fx.GraphModule) -> fx.GraphModule:
    """A deep copy of ``gm``. A tensor that a forward hook stores as a plain attribute (the
    weight that hook-based ``weight_norm`` and ``spectral_norm`` recompute before every call) is
    copied detached: autograd cannot deep-copy a non-leaf tensor, and the hook recomputes it."""
    memo: dict[int, object] = {}
    for module in gm.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(gm, memo)


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
        if node.target is torch.nn.functional.scaled_dot_product_attention:
            return "attention"  # softmax(q kᵀ / √d) v, one fused call
        name = getattr(node.target, "__name__", str(node.target))
        return name.strip("_").removeprefix("i") if name.startswith("__i") else name.rstrip("_")
    return node.op


def op_summary(gm: fx.GraphModule, edge: Edge, max_ops: int = 8) -> str:
    """``conv3x3-bn-relu-conv3x3-bn`` for a branch, ``skip`` for a skip edge."""
    if edge.kind == "skip":
        return "skip"
    nodes = {n.name: n for n in gm.graph.nodes}
    labels = [op_label(gm, nodes[name]) for name in edge.nodes]
    labels = [label for label in labels if label not in QUIET_OPS] or ["identity"]
    if len(labels) > max_ops:
        labels = [*labels[: max_ops - 3], "…", *labels[-2:], f"({len(labels)} ops)"]
    return "-".join(labels)


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
