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
rewritten too, and copied into the input right where eager mode wrote it.

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
from collections.abc import Iterable

import torch
from torch import fx

from fxdnat.frontend.memory import ALIASES, WRITES, AliasGroups, is_state, written

INPLACE = "fxdnat_inplace"
"""``node.meta`` key: how a call that functionalize made out of place was written in place —
("target", the in-place target, name), ("flag", "inplace" or the flag's position, name),
("module", name), where name is the node it wrote — so that :func:`reinplace_` can write it
back where that is safe again."""

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
    rewriter = _Rewriter(gm, constants)
    for node in rewriter.writes:
        rewriter.visit(node)
    if rewriter.changed:
        gm.graph.lint()
        gm.recompile()
    return rewriter.count


class _Rewriter:
    """One pass over the writes, in graph order."""

    def __init__(self, gm: fx.GraphModule, constants: frozenset[str]) -> None:
        self.gm, self.graph, self.constants = gm, gm.graph, constants
        self.writes = [node for node in gm.graph.nodes if written(node) is not None]
        self.modules: dict[str, bool] = {}  # in-place module path -> given an out-of-place copy
        # the value each model input holds in eager mode at this point of the graph
        self.latest = {n: n for n in gm.graph.nodes if n.op == "placeholder"}
        self.count, self.changed = 0, False

    def visit(self, node: fx.Node) -> None:
        order = {n: i for i, n in enumerate(self.graph.nodes)}
        groups = AliasGroups(self.graph)
        site = node.op == "call_module" and (
            node.target in self.modules or _inplace_module(self.gm, node)
        )
        # read the target now: an earlier rewrite may have rewired what this call writes
        target = node.args[0] if site else written(node)
        inputs = [p for p, v in self.latest.items() if v in groups.group(target)]
        if site:
            if node.target not in self.modules:
                self.modules[node.target] = self._replace_module(node.target, groups, order)
            ok = self.modules[node.target]
        else:
            ok = self._rewritable(node, target, groups, order)
        if not ok:  # stays in place; an input whose value lives elsewhere gets the write too
            for p in inputs:
                if self.latest[p] is not p:
                    self._copy_back(p, self.latest[p], after=node)
            return
        node.meta.pop(ALIASES, None)
        node.meta.pop(WRITES, None)
        if site:
            node.meta[INPLACE] = ("module", target.name)
        fresh = node if site else _rewrite(node, target)
        _rewire(node, target, fresh, groups, order)
        for p in inputs:  # the write reached a model input: eager mode wrote it here
            self._copy_back(p, fresh, after=node)
            self.latest[p] = fresh
        self.count += 1
        self.changed = True

    def _rewritable(self, node, target, groups: AliasGroups, order) -> bool:
        """No other value sharing the written memory is read after the write; the memory is
        not state; and a write that reaches a model input does so through the value the input
        holds (a write through another alias of it stays in place)."""
        members = groups.group(target)
        for member in members:
            if member.op == "get_attr" and member.target not in self.constants:
                return False  # a parameter, buffer or tensor attribute: state
        if any(v in members and target is not v for v in self.latest.values()):
            return False
        same = {m for m in members if m is target or _same_attribute(m, target)}
        return not any(
            order[user] > order[node]
            for member in members
            if member not in same and member is not node and order[member] < order[node]
            for user in member.users
        )

    def _replace_module(self, path: str, groups: AliasGroups, order) -> bool:
        """Give the graph an out-of-place copy of the in-place module at ``path`` if every
        call of it can be rewritten (one module object serves all its calls)."""
        sites = [n for n in self.writes if n.op == "call_module" and n.target == path]
        if not all(self._rewritable(n, n.args[0], groups, order) for n in sites):
            return False
        _out_of_place_module(self.gm, path)
        return True

    def _copy_back(self, placeholder: fx.Node, value: fx.Node, after: fx.Node) -> None:
        """``x.copy_(value)`` right after the write: the caller's tensor is written where eager
        mode wrote it (and so is anything autograd saved of it before that point)."""
        with self.graph.inserting_after(after):
            self.graph.call_method("copy_", (placeholder, value))
        self.changed = True


def _same_attribute(a: fx.Node, b: fx.Node) -> bool:
    return a.op == b.op == "get_attr" and a.target == b.target


def _rewrite(node: fx.Node, target: fx.Node) -> fx.Node:
    """Make ``node`` leave ``target`` as it was; returns the node that holds the written value."""
    twin = _twin(node)
    if twin is not None and _same_dtypes(node, target):
        node.meta[INPLACE] = ("target", node.target, target.name)
        node.target = twin
        return node
    if node.op == "call_function" and (flag := _clear_inplace_flag(node)) is not None:
        node.meta[INPLACE] = ("flag", flag, target.name)
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


def _clear_inplace_flag(node: fx.Node) -> str | int | None:
    """``F.relu(x, inplace=True)`` → ``inplace=False``; returns where the flag was ("inplace"
    for the keyword, else its position), None where there was none."""
    if node.kwargs.get("inplace") is True:
        node.kwargs = {**node.kwargs, "inplace": False}
        return "inplace"
    try:
        names = list(inspect.signature(node.target).parameters)
    except (TypeError, ValueError):
        return None
    position = names.index("inplace") if "inplace" in names else None
    if position is not None and position < len(node.args) and node.args[position] is True:
        node.args = (*node.args[:position], False, *node.args[position + 1 :])
        return position
    return None


def _inplace_module(gm: fx.GraphModule, node: fx.Node) -> bool:
    return getattr(gm.get_submodule(node.target), "inplace", None) is True


def _out_of_place_module(gm: fx.GraphModule, path: str) -> None:
    """The graph's own copy of the module at ``path``, with ``inplace=False`` (the user's model
    keeps its module: GraphModule shares leaf modules, not the containers above them)."""
    parent, _, name = path.rpartition(".")
    module = copy.copy(gm.get_submodule(path))
    module.inplace = False
    setattr(gm.get_submodule(parent), name, module)


def _rewire(node, target, fresh, groups: AliasGroups, order) -> None:
    """Readers of the written value after ``node`` read ``fresh`` instead."""
    same = [m for m in groups.group(target) if m is target or _same_attribute(m, target)]
    for member in same:
        for user in list(member.users):
            if user is not fresh and user is not node and order.get(user, -1) > order[node]:
                user.replace_input_with(member, fresh)


def reinplace_(gm: fx.GraphModule, fresh: Iterable[fx.Node] = ()) -> int:
    """Write calls that functionalize made out of place back in place where that is as safe
    as in the model its author wrote: the call still writes the value it wrote there (or a
    ``fresh`` one, made by finalize in place of a join), and nothing reads that value after it.
    A finalized network then saves the allocations its author saved. Returns how many. A module
    called at several places goes back to ``inplace=True`` only if every call may."""
    graph = gm.graph
    groups, order = AliasGroups(graph), {n: i for i, n in enumerate(graph.nodes)}
    fresh = set(fresh)
    safe = {
        node: _unread_after(node, groups, order)
        and (node.args[0].name == node.meta[INPLACE][-1] or node.args[0] in fresh)
        for node in graph.nodes
        if INPLACE in node.meta and isinstance(node.args[0] if node.args else None, fx.Node)
    }
    modules: dict[str, bool] = {}
    for node, ok in safe.items():
        if node.meta[INPLACE][0] == "module":
            modules[node.target] = modules.get(node.target, True) and ok
    count = 0
    for node, ok in safe.items():
        form = node.meta[INPLACE]
        if form[0] == "module":
            ok = modules[node.target]
            if ok:
                gm.get_submodule(node.target).inplace = True
        elif ok and form[0] == "target":
            node.target = form[1]
        elif ok:
            where = form[1]
            if where == "inplace":
                node.kwargs = {**node.kwargs, "inplace": True}
            else:
                node.args = (*node.args[:where], True, *node.args[where + 1 :])
        if ok:
            del node.meta[INPLACE]
            count += 1
    if count:
        graph.lint()
        gm.recompile()
    return count


def _unread_after(node: fx.Node, groups: AliasGroups, order: dict) -> bool:
    """Nothing sharing the memory ``node`` would write is read after it, and that memory is
    not a model input or attribute."""
    members = groups.group(node.args[0])
    return not any(is_state(m) for m in members) and not any(
        order[user] > order[node] for m in members for user in m.users if user is not node
    )
