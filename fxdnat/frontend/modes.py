"""One graph for train and eval mode, or the submodules that stop it.

torch.fx traces a forward once, so ``if self.training:`` bakes one mode into the graph. The
tracer therefore traces in both modes and compares: traces that differ only in constants equal to
the mode flag (``F.dropout(x, p, training=self.training)``) merge into one graph that reads the
flag of the module that passed it at run time; otherwise the innermost submodules whose own code
traced differently must become leaves (a DropPath, not the residual block around it).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Any

import torch
from torch import fx

from fxdnat.ir import within


def merge(train: fx.Graph, eval_: fx.Graph) -> fx.Graph | None:
    """``train`` with the mode flags read at run time, when the two traces differ only in
    constants equal to the mode flag; None when they differ in any other way."""
    pairs = list(zip(train.nodes, eval_.nodes, strict=False))
    if len(train.nodes) != len(eval_.nodes) or any(
        (a.op, a.target, a.name) != (b.op, b.target, b.name) for a, b in pairs
    ):
        return None
    if not all(_differs_only_by_mode(a, b) for a, b in pairs):
        return None
    slots = [(a, b) for a, b in pairs if _has_mode_flag((a.args, a.kwargs), (b.args, b.kwargs))]
    flags: dict[str, fx.Node] = {}
    for a, b in slots:
        # the flag of the module whose code passed it: a frozen part in eval mode, or dropout
        # kept on for Monte-Carlo inference, keeps its own mode
        path = owner(a)
        if path not in flags:
            first = next(n for n in train.nodes if n.op != "placeholder")
            with train.inserting_before(first), warnings.catch_warnings():
                # FX warns that `training` is no parameter, buffer or module; it is a plain
                # attribute that every module has, which is exactly what must be read
                warnings.simplefilter("ignore", UserWarning)
                flags[path] = train.get_attr(f"{path}.training" if path else "training")
        a.args = _swap_mode(a.args, b.args, flags[path])
        a.kwargs = _swap_mode(a.kwargs, b.kwargs, flags[path])
    return train


def hold_flags(gm: fx.GraphModule) -> None:
    """Give ``gm`` the modules whose ``training`` flag its merged graph reads. GraphModule copied
    only what the first trace referenced, and a module traced through without parameters (a
    torchvision ``StochasticDepth``) is not among them; an empty module keeps its place and
    flag (``build`` sets every container's flag from the model)."""
    for node in gm.graph.find_nodes(op="get_attr"):
        path, _, name = node.target.rpartition(".")
        if name == "training" and path:
            try:
                gm.get_submodule(path)
            except AttributeError:
                gm.add_submodule(path, torch.nn.Module())


def random_constants(train: fx.GraphModule, eval_: fx.GraphModule) -> list[str]:
    """Modules whose forward made a tensor constant that differs between the two traces: it was
    drawn at random while tracing, and a traced graph would replay that one draw forever."""
    found = []
    for a, b in zip(train.graph.nodes, eval_.graph.nodes, strict=False):
        if a.op != "get_attr" or a.target != b.target:
            continue
        x, y = getattr(train, a.target, None), getattr(eval_, b.target, None)
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and not _equal(x, y):
            found.append(owner(a))
    return sorted(set(found))


def _equal(x: torch.Tensor, y: torch.Tensor) -> bool:
    return x.shape == y.shape and x.dtype == y.dtype and bool(torch.equal(x, y))


def dependent_modules(train: fx.Graph, eval_: fx.Graph) -> list[str]:
    """Innermost modules whose own code traced differently in train and eval mode ("" for the
    root). A module whose difference comes from a child's (a DropPath that returns its input in
    eval mode changes what its parent's add reads) is left for the next round: once the child is
    a leaf, the parent traces alike in both modes.

    Each module's signature lists the nodes its forward created, with arguments normalised to
    positions inside the module (or the owning module's path, for values made elsewhere), so a
    difference in one submodule does not spill into its neighbours. A module whose own nodes
    agree and that reads a value made elsewhere (a neighbour that adds nodes in train mode only)
    is likewise left for the next round, while another module differs in its own nodes.
    """

    def differing(sources: bool) -> set[str]:
        a, b = (_module_signatures(g, sources) for g in (train, eval_))
        # a module that only passes its flag merges once the others are leaves
        return {path for path in set(a) | set(b) if not _same_but_flags(a.get(path), b.get(path))}

    found = differing(sources=False) or differing(sources=True)
    return sorted(p for p in found if not any(q != p and within(q, p) for q in found))


def owner(node: fx.Node) -> str:
    """The module whose forward created ``node`` ("" for the root)."""
    stack = [path for path, _ in node.meta.get("nn_module_stack", {}).values()]
    if node.op == "call_module":  # the stack ends with the called leaf itself
        stack = stack[:-1]
    return stack[-1] if stack else ""


def _differs_only_by_mode(a: fx.Node, b: fx.Node) -> bool:
    return _same_but_flags(a.args, b.args) and _same_but_flags(a.kwargs, b.kwargs)


def _same_but_flags(x: Any, y: Any) -> bool:
    """Equal, but where ``x`` (traced in train mode) has True and ``y`` has False: the mode
    flag, which merge reads at run time. Nodes are equal by name."""
    if isinstance(x, bool) and isinstance(y, bool):
        return x == y or (x is True and y is False)
    if isinstance(x, fx.Node) or isinstance(y, fx.Node):
        return isinstance(x, fx.Node) and isinstance(y, fx.Node) and x.name == y.name
    if isinstance(x, slice) and isinstance(y, slice):  # x[:, : x.size(1) // 2]: nodes inside
        return _same_but_flags((x.start, x.stop, x.step), (y.start, y.stop, y.step))
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return len(x) == len(y) and all(_same_but_flags(i, j) for i, j in zip(x, y, strict=True))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_same_but_flags(x[k], y[k]) for k in x)
    return type(x) is type(y) and x == y


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


def _module_signatures(graph: fx.Graph, sources: bool) -> dict[str, list]:
    """Per module, the nodes its forward made; ``sources``: whether a value made elsewhere is
    told apart by the module that made it."""
    local_index: dict[fx.Node, tuple[str, int]] = {}
    signatures: dict[str, list] = defaultdict(list)

    def normalise(arg: Any) -> Any:
        if isinstance(arg, fx.Node):
            source, index = local_index[arg]
            if source == current:
                return (source, index)
            return (source,) if sources else ("elsewhere",)
        if isinstance(arg, (list, tuple)):
            return tuple(normalise(a) for a in arg)
        if isinstance(arg, dict):
            return tuple((k, normalise(v)) for k, v in arg.items())
        if isinstance(arg, slice):  # its bounds may be nodes, named differently in each trace
            return ("slice", normalise((arg.start, arg.stop, arg.step)))
        if isinstance(arg, bool):  # kept: _same_but_flags tells a mode flag from other values
            return arg
        if isinstance(arg, (int, float, str, type(None), torch.dtype, torch.device)):
            return repr(arg)
        return type(arg).__name__

    for node in graph.nodes:
        current = owner(node)
        local_index[node] = (current, len(signatures[current]))
        target = (
            node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        )
        signatures[current].append((node.op, target, normalise(node.args), normalise(node.kwargs)))
    return signatures
