"""What a graph's calls do to memory: which results share storage with an argument, which
calls write one.

torch.fx records calls, not their effects on memory. Two sources fill that in: static rules
(view methods, in-place names such as ``relu_`` and ``setitem``, modules built with
``inplace=True``) and the facts one eager run records in ``node.meta``
(:mod:`fxdnat.frontend.facts`: a leaf module that hands back its input, a function that writes an
argument). The front end uses them to make a graph functional; the passes use them so that
removing a branch or substituting a join never changes what another reader sees.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable

import torch
from torch import fx

ALIASES = "fxdnat_aliases"
"""``node.meta`` key: argument slots (index into ``args``, or a keyword) whose storage the
result shares, as one run observed."""
WRITES = "fxdnat_writes"
"""``node.meta`` key: argument slots whose contents the call changed, as one run observed."""

_VIEW_METHODS = frozenset(
    [
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
    ]
)
_VIEW_FUNCTIONS = frozenset(
    {
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
)
_INPLACE_OPERATORS = frozenset(
    [
        "iadd",
        "iand",
        "iconcat",
        "ifloordiv",
        "ilshift",
        "imatmul",
        "imod",
        "imul",
        "ior",
        "ipow",
        "irshift",
        "isub",
        "itruediv",
        "ixor",
    ]
)
# Trailing-underscore methods that change no tensor contents.
_NOT_WRITES = frozenset({"requires_grad_", "retain_grad", "share_memory_", "record_stream"})


def is_view(node: fx.Node) -> bool:
    """A call whose result may be a view of its first argument (static rule)."""
    return (node.op == "call_method" and node.target in _VIEW_METHODS) or (
        node.op == "call_function" and node.target in _VIEW_FUNCTIONS
    )


def writes_by_name(node: fx.Node) -> bool:
    """The call's name or flags say it writes its first argument: ``x.relu_()``, ``x[i] = v``,
    ``F.relu(x, inplace=True)``, ``operator.iadd``, a module built with ``inplace=True``."""
    if node.op == "call_method":
        name = str(node.target)
        return name.endswith("_") and not name.startswith("_") and name not in _NOT_WRITES
    if node.op == "call_module":
        owner = node.graph.owning_module
        return owner is not None and getattr(owner.get_submodule(node.target), "inplace", 0) is True
    if node.op != "call_function":
        return False
    if node.target is operator.setitem or node.kwargs.get("inplace") is True:
        return True
    name = getattr(node.target, "__name__", "")
    if getattr(node.target, "__module__", "") in ("_operator", "operator"):
        return name.strip("_") in _INPLACE_OPERATORS
    return name.endswith("_") and not name.startswith("_")


def written(node: fx.Node) -> fx.Node | None:
    """The argument whose contents the call changes, or None for a call that writes none."""
    slots = node.meta.get(WRITES, ())
    if not slots and writes_by_name(node):
        slots = (0,)
    for slot in slots:
        value = _slot(node, slot)
        if isinstance(value, fx.Node):
            return value
    return None


def aliased_inputs(node: fx.Node) -> list[fx.Node]:
    """Arguments whose storage the result may share: a view's base, an in-place call's target,
    and what one run saw shared (a leaf module returning its input, ``x.to(x.dtype)``)."""
    slots = set(node.meta.get(ALIASES, ()))
    if is_view(node) or writes_by_name(node):
        slots.add(0)
    values = (_slot(node, slot) for slot in slots)
    return [v for v in values if isinstance(v, fx.Node)]


def _slot(node: fx.Node, slot: int | str) -> object:
    if isinstance(slot, int):
        return node.args[slot] if slot < len(node.args) else None
    return node.kwargs.get(slot)


class AliasGroups:
    """Which nodes of a graph may share storage: views, in-place results and their targets,
    values a leaf hands back, and every ``get_attr`` of one attribute."""

    def __init__(self, graph: fx.Graph) -> None:
        self._parent: dict[fx.Node, fx.Node] = {}
        attrs: dict[str, fx.Node] = {}
        for node in graph.nodes:
            for arg in aliased_inputs(node):
                self._union(node, arg)
            if node.op == "get_attr":
                self._union(node, attrs.setdefault(node.target, node))
        self.members: dict[fx.Node, list[fx.Node]] = {}
        for node in graph.nodes:
            self.members.setdefault(self.find(node), []).append(node)

    def find(self, node: fx.Node) -> fx.Node:
        root = node
        while self._parent.get(root, root) is not root:
            root = self._parent[root]
        while node is not root:  # path compression
            self._parent[node], node = root, self._parent[node]
        return root

    def _union(self, a: fx.Node, b: fx.Node) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra is not rb:
            self._parent[ra] = rb

    def group(self, node: fx.Node) -> list[fx.Node]:
        return self.members[self.find(node)]


class LaterWrites:
    """The in-place writes a graph holds, as (position, memory written): whether one after a
    given node reaches a tensor's memory. Read once per graph; a pass that changes the graph
    reads it again."""

    def __init__(self, graph: fx.Graph) -> None:
        self.groups = AliasGroups(graph)
        self.order = {node: i for i, node in enumerate(graph.nodes)}
        self.writes = [
            (self.order[node], self.groups.find(target))
            for node in graph.nodes
            if (target := written(node)) is not None
        ]

    def reach(self, tensor: fx.Node, at: fx.Node) -> bool:
        """A write after ``at`` reaches the memory of ``tensor``."""
        root = self.groups.find(tensor)
        return any(when > self.order[at] and hit == root for when, hit in self.writes)


def write_dependencies(graph: fx.Graph) -> dict[fx.Node, set[fx.Node]]:
    """For every call that writes an argument in place: the later readers of anything sharing
    the written storage. Those readers depend on the write as much as on their arguments."""
    order = {node: i for i, node in enumerate(graph.nodes)}
    groups: AliasGroups | None = None
    readers: dict[fx.Node, set[fx.Node]] = {}
    for node in graph.nodes:
        target = written(node)
        if target is None:
            continue
        groups = groups or AliasGroups(graph)
        readers[node] = {
            user
            for member in groups.group(target)
            for user in member.users
            if order[user] > order[node]
        }
    return readers


def is_state(node: fx.Node) -> bool:
    """A model input or an attribute (parameter, buffer): writing it outlives the call."""
    return node.op in ("placeholder", "get_attr")


def writes_state(node: fx.Node, groups: AliasGroups) -> bool:
    target = written(node)
    return target is not None and any(is_state(m) for m in groups.group(target))


def live_nodes(
    graph: fx.Graph, keep: Iterable[fx.Node] = (), *, modules: bool = False, random: bool = False
) -> set[fx.Node]:
    """Nodes whose value or side effect can reach the output (``keep`` counts as reaching it).

    FX's own ``eliminate_dead_code`` treats every ``call_method`` as pure, so it would drop
    ``x.relu_()`` whose result is unused but whose write is read later. Here a write is live
    while anything sharing the written memory is live, or when that memory is state (a model
    input or attribute). ``modules`` keeps every module call (one may update state, as
    BatchNorm does in train mode); ``random`` keeps every random call (the generator's stream).
    """
    groups = AliasGroups(graph)
    live: set[fx.Node] = set(keep)
    changed = True
    while changed:
        changed = False
        for node in reversed(graph.nodes):
            if node in live or not _is_live(node, live, groups, modules, random):
                continue
            live.add(node)
            changed = True
    return live


def _is_live(node: fx.Node, live: set, groups: AliasGroups, modules: bool, random: bool) -> bool:
    if node.op in ("placeholder", "output") or any(user in live for user in node.users):
        return True
    target = written(node)
    if target is not None:
        return any(m in live or is_state(m) for m in groups.group(target) if m is not node)
    if node.op == "call_module":
        return modules
    return node.op != "get_attr" and node.is_impure(impure_random=random)


def eliminate_dead_code(
    gm: fx.GraphModule, keep: Iterable[fx.Node] = (), *, modules: bool = False, random: bool = False
) -> int:
    """Remove the nodes that are not live (see :func:`live_nodes`); returns how many went."""
    live = live_nodes(gm.graph, keep, modules=modules, random=random)
    dead = [node for node in gm.graph.nodes if node not in live]
    for node in reversed(dead):
        gm.graph.erase_node(node)
    return len(dead)
