"""finalize: compile decisions into a clean GraphModule with no gate, θ or fxdnat left in it.

Each ``dnat_mix`` becomes the sum of its edges' chosen candidates, in the original adds' order:
``same`` reads the op's output, ``identity`` the edge's input, ``none`` drops the operand (an add
with a missing operand becomes its other operand). Then whatever has become dead goes: nodes,
submodules and parameters.

``scale`` says what a kept candidate is multiplied by. ``"keep"`` (the default, what training
uses) keeps its learned coefficient c = θ[row, choice]: after training θ_same is 0.6-4, not 1,
and the weights (BatchNorm statistics above all) were learned under those factors, so reading θ
as one-hot would change the network. c goes into the weight and bias of the branch's last
affine op (a norm, convolution or linear layer, possibly behind dropout, drop-path or views;
see ``passes/_fold.py``) where that is exact and nothing else sees it; otherwise, and for
identity candidates, the sum multiplies the candidate by the constant c (none where c is
exactly 1). A candidate the decisions drop is not lost where a kept candidate of the same join
reads the same tensor: a residual branch's identity and the block's skip both read x, so a
block whose branch keeps "same" and whose θ_identity learned 0.35 next to a skip at 1.3 keeps
its skip at 1.65 — the same tensor, counted once with both coefficients (``_merge_dropped``).
``"one"`` reads θ as one-hot on the decisions: every candidate counts once.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping

import torch
from torch import fx

from fxdnat.arch import Architecture, dnat_mix
from fxdnat.frontend import memory
from fxdnat.frontend.functionalize import INPLACE, reinplace_
from fxdnat.ir import CHOICES, IDENTITY, META_KEY, NONE, SAME, SCALES, Edge
from fxdnat.mix import Tree
from fxdnat.passes import _graph
from fxdnat.passes._fold import fold_scale_
from fxdnat.passes.decide import _architecture, check_decisions
from fxdnat.passes.gate import ARCH, COPY_META, EDGES_META


def finalize(
    gated: fx.GraphModule,
    decisions: Mapping[str, str],
    *,
    scale: str = "keep",
    allow_dead: bool = False,
) -> fx.GraphModule:
    """The network that ``gated`` computes with θ masked to ``decisions``, without the gates.

    ``decisions`` maps edge names to choices (edges left out keep "same"); it must not remove
    every operand of a join (:func:`decide` guarantees that) unless ``allow_dead``: then such a
    join becomes a zero tensor of its shape, as NAT's derived networks have them (the NAT
    baseline emits what NAT would; DNAT never does). ``scale="keep"``: each edge's θ
    row keeps only its decided entry, at its learned value, plus the entries of dropped
    candidates that read the same tensor as a kept one of the join; ``scale="one"``: θ one-hot
    on ``decisions``. ``final.meta["fxdnat"]`` records the decisions, the scale, each kept edge's
    coefficient and the modules coefficients were folded into.
    """
    _check_scale(scale)
    arch = _architecture(gated)
    decisions = check_decisions(arch.edges, decisions, allow_dead=allow_dead)
    theta = arch().detach().cpu().tolist()  # masked: a choice a row does not allow weighs 0
    coefficients = _coefficients(arch, theta, decisions, scale)
    final = _graph.copy_module(gated)
    graph = final.graph
    before = _graph.used_tensor_names(final)
    mixes = [n for n in graph.nodes if is_mix(n)]
    # What each in-place add mutated in the original network (an op's mix stands for the op).
    inplace_targets = {
        node: _resolve(node.args[0]) for node in graph.nodes if _graph.is_inplace_add(node)
    }
    # Code that was dead before stays (finalize removes only what it makes dead), but not the gates.
    machinery = set(mixes) | set(graph.find_nodes(op="call_module", target=ARCH))
    machinery |= {node for node in graph.nodes if node.meta.get(COPY_META)}
    live = memory.live_nodes(graph)
    dead_before = set(graph.nodes) - live - machinery
    writes = _Writes(graph)
    named = {node.name: node for node in graph.nodes}
    fresh: set[fx.Node] = set()  # the adds written back: values no one else holds
    folded: dict[str, str] = {}  # edge name -> module its coefficient went into
    if scale == "keep":  # before any write-back: "the same tensor" in the gated graph, not in
        for mix in mixes:  # one where a decided join became its only operand
            _merge_dropped(mix, arch, theta, decisions, coefficients)
    for mix in mixes:
        factors = _fold(final, mix, decisions, coefficients, folded)
        edges = {e.name: e for e in arch.edges} if allow_dead else None
        created = _write_back(mix, decisions, named, writes, factors, edges)
        fresh |= created
        if mix not in live:  # a join nobody read: its adds were dead code, which stays
            dead_before |= created
    remaining = set(graph.nodes)
    for node, target in inplace_targets.items():
        if node in remaining and node.args[0] is not target:  # x += y would now mutate x
            _make_out_of_place(node)
    memory.eliminate_dead_code(final, keep=dead_before)
    reinplace_(final, fresh)  # the front end's out-of-place rewrites, back where safe
    _remove_machinery(final, before)
    record = {"decisions": decisions, "scale": scale, "coefficients": coefficients}
    final.meta[META_KEY] = {**final.meta.get(META_KEY, {}), **record, "folded": folded}
    return _graph.finish(final)


def _check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise ValueError(
            f"unknown scale {scale!r}; expected one of {SCALES} ('keep' keeps each kept "
            "candidate's learned coefficient, 'one' sets it to 1)"
        )


def _coefficients(arch: Architecture, theta: list, decisions: dict, scale: str) -> dict:
    """Each kept edge's coefficient, a Python number: its decided θ entry, or 1."""
    kept = [(edge.name, choice) for edge in arch.edges if (choice := decisions[edge.name]) != NONE]
    if scale == "one":
        return {name: 1.0 for name, _ in kept}
    return {name: theta[arch.group_of[name]][CHOICES.index(choice)] for name, choice in kept}


def _merge_dropped(
    mix: fx.Node, arch: Architecture, theta: list, decisions: dict, coefficients: dict
) -> None:
    """Add the coefficient of each candidate the decisions drop to that of a kept candidate of
    the same join that reads the same tensor (the first one, in the join's order). Joins whose
    adds scale an operand (``add(a, b, alpha=2)``) are left as they are: rare, and their terms
    weigh differently."""
    (_, terms), tensors = mix.args[1], [_original(t) for t in mix.args[2:]]
    if any(scale != 1 for _, _, scale in terms):
        return
    leaves = mix.meta[EDGES_META].leaves
    owner: dict[fx.Node, str] = {}  # tensor -> the edge whose kept candidate reads it
    for name, same, identity in leaves:
        index = {SAME: same, IDENTITY: identity}.get(decisions[name])
        if index is not None:
            owner.setdefault(tensors[index], name)
    for name, same, identity in leaves:
        row = arch.group_of[name]
        for choice, index in ((SAME, same), (IDENTITY, identity)):
            kept = None if index is None else owner.get(tensors[index])
            if choice != decisions[name] and kept is not None:
                coefficients[kept] += theta[row][CHOICES.index(choice)]


def _fold(final, mix: fx.Node, decisions: dict, coefficients: dict, folded: dict) -> list[float]:
    """Fold the coefficients of the mix's kept "same" candidates into their ops where that is
    exact (see ``_fold.fold_scale_``); returns the factor left to multiply, per leaf. A factor of
    0 stays a multiply: folding it would erase the op's weights."""
    factors = []
    for name, same, _ in mix.meta[EDGES_META].leaves:
        c = coefficients.get(name, 1.0)
        if decisions[name] == SAME and c not in (0.0, 1.0):
            value = _read_once(mix, same)
            if value is not None and (path := fold_scale_(final, value, c)) is not None:
                folded[name], c = path, 1.0
        factors.append(c)
    return factors


def _read_once(mix: fx.Node, index: int) -> fx.Node | None:
    """The value the mix reads as its tensor ``index``, where nothing but the mix reads it
    (directly or through gate's copy) and one leaf alone takes it as its candidate; else None."""
    leaves = mix.meta[EDGES_META].leaves
    if sum((same == index) + (identity == index) for _, same, identity in leaves) != 1:
        return None
    tensor = mix.args[2 + index]
    value = _original(tensor)
    if _graph.use_count(value) != 1 or _graph.use_count(tensor) != 1:
        return None
    return value


def _remove_machinery(final: fx.GraphModule, before: set[str]) -> None:
    """θ's module, and the submodules and tensors nothing reads any more."""
    if any(node.op == "call_module" and node.target == ARCH for node in final.graph.nodes):
        raise RuntimeError("the architecture is still read after finalize; please report this")
    final.delete_submodule(ARCH)
    final.delete_all_unused_submodules()
    _graph.delete_tensors(final, before - _graph.used_tensor_names(final))


class _Writes:
    """The in-place writes the front end left in a graph (to state, or through a view): a value
    that one of them writes later cannot stand in for a mix, whose result was a tensor of its
    own. Looked up on the graph as it is now, since earlier write-backs changed it."""

    def __init__(self, graph: fx.Graph) -> None:
        self.graph = graph
        self.any = any(memory.written(node) is not None for node in graph.nodes)

    def need_copy(self, mix: fx.Node, value: fx.Node) -> bool:
        """``value`` cannot stand in for ``mix`` as it is: a write after the mix reaches the
        memory of one of them. The mix's result was a tensor of its own, so in the gated module
        such a write reached neither the other's readers nor a tensor autograd saved for them
        (``relu(x)[:, :1].mul_(2)`` with the relu's output standing in for the mix would fail
        in backward); the copy keeps both, and is rare: the front end rewrote every other
        in-place call out of place. An op edge that keeps its op needs none: the value is the
        tensor the model itself wrote."""
        if not self.any or value is _resolve(mix):
            return False
        later = memory.LaterWrites(self.graph)
        return later.reach(mix, mix) or later.reach(value, mix)


def _write_back(
    mix: fx.Node,
    decisions: dict,
    named: dict,
    writes: _Writes,
    factors: list[float],
    edges: dict[str, Edge] | None = None,
) -> set[fx.Node]:
    """Replace ``mix`` by the sum of its edges' choices, each times its leaf's factor; returns
    the nodes created. Where the sum collapses to an existing value that is written in place
    later, the value is copied; where nothing is left, it is a zero tensor if dead joins are
    allowed (``edges``: the edges by name)."""
    (tree, _), tensors = mix.args[1], [_original(t) for t in mix.args[2:]]
    values = [
        _chosen(
            decisions[leaf.edge],
            tensors[leaf.same],
            None if leaf.identity is None else tensors[leaf.identity],
        )
        for leaf in mix.meta[EDGES_META].leaves
    ]
    writer = _Sum(mix, named, factors)
    value = writer.emit(tree, values)
    if value is None and edges is not None:
        value = _zeros(
            writer,
            mix,
            [
                _input(edges[leaf.edge], leaf, named, tensors)
                for leaf in mix.meta[EDGES_META].leaves
            ],
        )
    if value is None:
        raise RuntimeError(f"every operand of {mix.name} is 'none'; please report this")
    if value not in writer.created and writes.need_copy(mix, value):
        value = writer.copy(value)
    mix.replace_all_uses_with(value)
    mix.graph.erase_node(mix)
    return writer.created


def _input(edge: Edge, leaf, named: dict, tensors: list[fx.Node]) -> fx.Node:
    """The value x an edge reads, as the graph holds it now: a skip's operand is x itself; a
    branch's x is what its first op reads (a join upstream may have been written back since)."""
    if not edge.nodes:
        return tensors[leaf.same]
    first = named[edge.nodes[0]]
    return next(a for a in first.all_input_nodes if a.op != "get_attr")


def _zeros(writer: _Sum, mix: fx.Node, inputs: list[fx.Node]) -> fx.Node:
    """A dead join's value: zeros of its shape, made from its edges' input x (computed anyway),
    so that no removed branch is computed for it — ``zeros_like(x)`` where x has the join's
    shape, else ``x.new_zeros((x.size(0), *shape[1:]))`` (a strided block: the batch follows
    x). Without a recorded shape, zeros like a branch output (which then stays computed)."""
    out = _original(mix.args[2 + mix.meta[EDGES_META].leaves[0].same])
    shape = _shape(out)
    if shape is None:
        return writer.zeros_like(out)
    x = next((t for t in inputs if _shape(t) == shape), None)
    if x is not None:
        return writer.zeros_like(x)
    x = inputs[0]
    batch = writer.call_method("size", (x, 0))
    return writer.call_method("new_zeros", (x, (batch, *shape[1:])))


def _shape(node: fx.Node) -> tuple | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if hasattr(meta, "shape") else None


def _original(tensor: fx.Node) -> fx.Node:
    """The value gate copied for the mix (see ``gate.COPY_META``), or ``tensor`` itself."""
    return tensor.args[0] if tensor.meta.get(COPY_META) else tensor


def is_mix(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target is dnat_mix


def _chosen(choice: str, op_x: fx.Node, x: fx.Node | None) -> fx.Node | None:
    """What an edge delivers: op(x), x, or nothing for "none"."""
    return op_x if choice == SAME else x if choice == IDENTITY else None


def _resolve(value: object) -> object:
    """The original value a mix stands in for: an op edge's mix (one leaf) stands for op(x)."""
    if isinstance(value, fx.Node) and is_mix(value) and isinstance(value.args[1][0], int):
        (leaf,) = value.meta[EDGES_META].leaves
        return _original(value.args[2 + leaf.same])
    return value


_ZERO = object()  # the literal 0 of builtin sum, while it is still added to something


class _Sum:
    """Writes a mix's sum back as adds, each with its original op where that stays correct."""

    def __init__(self, mix: fx.Node, named: dict[str, fx.Node], factors: list[float]):
        self.graph, self.mix, self.named, self.factors = mix.graph, mix, named, factors
        self.adds = iter(mix.meta[EDGES_META].adds)  # in pre-order, as gate wrote them
        self.created: set[fx.Node] = set()

    def emit(self, tree: Tree, values: list[fx.Node | None], at: str | None = None):
        """Adds of the live ``values`` in ``tree``'s association; None where nothing is left.
        A leaf's factor is multiplied in where the add that reads it stands (``at``)."""
        if tree is None:
            return _ZERO
        if isinstance(tree, int):
            value, c = values[tree], self.factors[tree]
            if value is None or c == 1:
                return value
            return self._create(at, "call_function", operator.mul, (value, c))
        add = next(self.adds)
        op, target, anchor = add.op, add.target, add.anchor
        left, right, alpha = tree
        a, b = self.emit(left, values, anchor), self.emit(right, values, anchor)
        if a is None or b is None:  # one side went: the other alone (`0 +` nothing is nothing)
            kept = b if a is None else a
            if kept is _ZERO or kept is None:  # both sides went (a dead join, allow_dead)
                return None
            if kept is b and alpha != 1:
                return self._create(anchor, "call_function", operator.mul, (b, alpha))
            return kept
        if a is _ZERO or b is _ZERO:  # builtin sum's `0 + x`: kept, as the original has it
            a, b = (0 if a is _ZERO else a), (0 if b is _ZERO else b)
            return self._create(anchor, op, target, (a, b))
        # x += y stays in place only on the value it wrote before (nobody else reads that one)
        # or on a sum written back here (a left subtree that collapsed to one operand is not)
        if add.mutated is not None and not (a.name == add.mutated or a in self.created):
            target = _OUT_OF_PLACE[target]
        node = self._create(anchor, op, target, (a, b), {} if alpha == 1 else {"alpha": alpha})
        if add.inplace is not None and (a.name == add.inplace[-1] or a in self.created):
            # the value x += y wrote in the model (or a sum of our own): reinplace_ may write
            # it in place again, where nothing reads it after
            node.meta[INPLACE] = (*add.inplace[:-1], a.name)
        return node

    def zeros_like(self, value: fx.Node) -> fx.Node:
        """``torch.zeros_like(value)`` where the mix stood: a dead join's value."""
        return self._create(None, "call_function", torch.zeros_like, (value,))

    def call_method(self, method: str, args: tuple) -> fx.Node:
        """``args[0].method(*args[1:])`` where the mix stood."""
        return self._create(None, "call_method", method, args)

    def copy(self, value: fx.Node) -> fx.Node:
        """``value.clone()`` where the mix stood."""
        return self._create(None, "call_method", "clone", (value,))

    def _create(self, anchor: str | None, op: str, target, args: tuple, kwargs=None) -> fx.Node:
        """A node where the original add stood (see gate's ``_anchor``)."""
        with self.graph.inserting_before(self.named[anchor] if anchor else self.mix):
            node = self.graph.create_node(op, target, args, kwargs)
        self.created.add(node)
        return node


_OUT_OF_PLACE = {"add_": "add", operator.iadd: operator.add}


def _make_out_of_place(node: fx.Node) -> None:
    node.target = _OUT_OF_PLACE[node.target]
