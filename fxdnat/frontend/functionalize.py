"""functionalize: rewrite in-place calls on activations out of place, as torch.func.functionalize
does, but on the FX graph itself so that module calls, names and leaves stay as written.

In eager PyTorch ``relu_(x)`` changes x for every later reader: in a block whose branch starts
with ``nn.ReLU(inplace=True)`` the skip reads the rectified x. A compiler that deletes that
branch, or replaces a join by one of its operands, would change what those readers see. After this
pass such a call writes a fresh tensor and the later readers of the written value read the fresh
one, so the graph's data flow is the whole truth.

Rewritten: calls whose out-of-place form is known (``x.relu_()`` → ``x.relu()``,
``F.relu(x, inplace=True)``, a module built with ``inplace=True`` — the graph gets its own copy
with ``inplace=False``), and any other write (``x[i] = v``, ``x.copy_(y)``, a random fill, a leaf
module seen writing its input), which then writes a private clone. Writes to a model input are
rewritten too and copied back into the input at the end, as ``torch.export`` does.

Kept in place: writes to parameters, buffers and tensor attributes (state the model keeps on
purpose, such as a counter), and a write whose memory another value shares and is read after it
(a view of the same tensor, a leaf that handed back its input). The passes treat those
conservatively (:func:`fxdnat.frontend.memory.write_dependencies`).
"""

from __future__ import annotations

import copy
import inspect
import operator
import sys

import torch
from torch import fx

from fxdnat.frontend.memory import ALIASES, WRITES, AliasGroups, written

# In-place fills whose out-of-place twin draws differently (or not at all): they write a clone,
# so the random stream stays the eager one.
_KEEP_KERNEL = frozenset(
    [
        "bernoulli_",
        "uniform_",
        "normal_",
        "random_",
        "exponential_",
        "geometric_",
        "cauchy_",
        "log_normal_",
        "resize_",
        "resize_as_",
        "set_",
        "map_",
        "apply_",
    ]
)


def functionalize_(gm: fx.GraphModule, constants: frozenset[str] = frozenset()) -> int:
    """Rewrite ``gm``'s in-place calls (see the module docstring); returns how many.

    ``gm`` must carry the facts of :func:`fxdnat.frontend.facts.record_facts`. ``constants``
    names the tensor attributes that tracing created (``_tensor_constant0``: a tensor the
    forward makes afresh on every call, so writing it is not state).
    """
    graph = gm.graph
    writes = [node for node in graph.nodes if written(node) is not None]
    backs = _copy_backs(graph, writes)
    modules: dict[str, bool] = {}  # in-place module path -> the graph got an out-of-place copy
    count = 0
    for node in writes:
        order = {n: i for i, n in enumerate(graph.nodes)}
        groups = AliasGroups(graph)
        is_site = node.op == "call_module" and (node.target in modules or _inplace_module(gm, node))
        # read the target now: an earlier rewrite may have rewired what this call writes
        target = node.args[0] if is_site else written(node)
        if is_site:
            if node.target not in modules:
                modules[node.target] = _replace_module(
                    gm, node.target, writes, groups, order, constants
                )
            if not modules[node.target]:
                continue
        elif not _rewritable(node, target, groups, order, constants):
            continue
        node.meta.pop(ALIASES, None)
        node.meta.pop(WRITES, None)
        fresh = node if is_site else _rewrite(node, target)
        _rewire(node, target, fresh, groups, order, backs)
        count += 1
    for back in backs:
        if back.args[1] is back.args[0]:  # nothing wrote that input after all
            graph.erase_node(back)
    if count:
        graph.lint()
        gm.recompile()
    return count


def _replace_module(gm, path: str, writes, groups, order, constants) -> bool:
    """Give the graph an out-of-place copy of the in-place module at ``path`` if every call of it
    can be rewritten (one module object serves all its calls)."""
    sites = [n for n in writes if n.op == "call_module" and n.target == path]
    if not all(_rewritable(n, n.args[0], groups, order, constants) for n in sites):
        return False
    _out_of_place_module(gm, path)
    return True


def _rewritable(node, target, groups: AliasGroups, order, constants) -> bool:
    """True when no other value sharing the written memory is read after the write, and the
    memory is not state (an input is, unless it is written directly)."""
    members = groups.group(target)
    for member in members:
        if member.op == "get_attr" and member.target not in constants:
            return False  # a parameter, buffer or tensor attribute: state
        if member.op == "placeholder" and member is not target:
            return False  # a view of a model input: the caller sees the write
    same = {m for m in members if m is target or _same_attribute(m, target)}
    return not any(
        order[user] > order[node]
        for member in members
        if member not in same and member is not node and order[member] < order[node]
        for user in member.users
    )


def _same_attribute(a: fx.Node, b: fx.Node) -> bool:
    return a.op == b.op == "get_attr" and a.target == b.target


def _rewrite(node: fx.Node, target: fx.Node) -> fx.Node:
    """Make ``node`` leave ``target`` as it was; returns the node that holds the written value."""
    twin = _twin(node)
    if twin is not None and _same_dtypes(node, target):
        node.target = twin
        return node
    if node.op == "call_function" and _clear_inplace_flag(node):
        return node
    graph = node.graph
    with graph.inserting_before(node):
        clone = graph.call_method("clone", (target,))
    clone.meta = {k: v for k, v in target.meta.items() if k in ("tensor_meta", "nn_module_stack")}
    node.replace_input_with(target, clone)
    node.meta[WRITES] = (0,)  # it now writes the private clone
    return clone


def _twin(node: fx.Node):
    """The out-of-place form of an in-place call (same arguments), or None."""
    if node.op == "call_method":
        name = str(node.target)
        twin = name[:-1]
        if name not in _KEEP_KERNEL and name.endswith("_") and hasattr(torch.Tensor, twin):
            return twin
        return None
    if node.op != "call_function":
        return None
    name = getattr(node.target, "__name__", "")
    if getattr(node.target, "__module__", "") in ("_operator", "operator"):
        base = name[3:] if name.startswith("__i") else name[1:] if name.startswith("i") else None
        base = f"__{base}" if name.startswith("__i") else base
        return getattr(operator, base, None) if base else None
    if name.endswith("_") and name not in _KEEP_KERNEL:
        module = sys.modules.get(getattr(node.target, "__module__", None) or "torch", torch)
        return getattr(module, name[:-1], None) or getattr(torch, name[:-1], None)
    return None


def _same_dtypes(node: fx.Node, target: fx.Node) -> bool:
    """The out-of-place form keeps the target's dtype only if every tensor operand has it
    (in-place calls cast to the target's dtype; out-of-place ones promote)."""
    dtype = _dtype(target)
    return all(_dtype(a) in (None, dtype) for a in node.all_input_nodes)


def _dtype(node: fx.Node):
    return getattr(node.meta.get("tensor_meta"), "dtype", None)


def _clear_inplace_flag(node: fx.Node) -> bool:
    """``F.relu(x, inplace=True)`` (keyword or position) → ``inplace=False``."""
    if node.kwargs.get("inplace") is True:
        node.kwargs = {**node.kwargs, "inplace": False}
        return True
    try:
        names = list(inspect.signature(node.target).parameters)
    except (TypeError, ValueError):
        return False
    position = names.index("inplace") if "inplace" in names else None
    if position is not None and position < len(node.args) and node.args[position] is True:
        node.args = (*node.args[:position], False, *node.args[position + 1 :])
        return True
    return False


def _inplace_module(gm: fx.GraphModule, node: fx.Node) -> bool:
    return getattr(gm.get_submodule(node.target), "inplace", None) is True


def _out_of_place_module(gm: fx.GraphModule, path: str) -> None:
    """The graph's own copy of the module at ``path``, with ``inplace=False`` (the user's model
    keeps its module: GraphModule shares leaf modules, not the containers above them)."""
    parent, _, name = path.rpartition(".")
    module = copy.copy(gm.get_submodule(path))
    module.inplace = False
    setattr(gm.get_submodule(parent), name, module)


def _rewire(node, target, fresh, groups: AliasGroups, order, backs: set[fx.Node]) -> None:
    """Readers of the written value after ``node`` read ``fresh`` instead (a copy back into a
    model input reads it, and still writes the input)."""
    same = [m for m in groups.group(target) if m is target or _same_attribute(m, target)]
    for member in same:
        for user in list(member.users):
            if user is fresh or user is node or order.get(user, -1) <= order[node]:
                continue
            if user in backs:
                user.args = (user.args[0], fresh if user.args[1] is member else user.args[1])
            else:
                user.replace_input_with(member, fresh)


def _copy_backs(graph: fx.Graph, writes: list[fx.Node]) -> set[fx.Node]:
    """``x.copy_(x)`` before the output for every model input that a write may reach, as the
    last reader of its value: rewrites then rewire it to the input's final value (and a write
    through an alias of that value stays in place, since this reads it later). Those left
    copying an input onto itself are removed again."""
    groups = AliasGroups(graph)
    reached = {m for node in writes for m in groups.group(written(node)) if m.op == "placeholder"}
    output = next(n for n in reversed(graph.nodes) if n.op == "output")
    backs = set()
    for placeholder in (n for n in graph.nodes if n in reached):
        with graph.inserting_before(output):
            backs.add(graph.call_method("copy_", (placeholder, placeholder)))
    return backs
