"""The Edge IR: the places in a traced graph where DNAT's three candidates apply.

An Edge is plain data (strings, tuples) so that it can be stored in a checkpoint, compared after a
re-trace, and shown by the CLI without importing torch.
"""

from __future__ import annotations

import difflib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal, get_args

META_KEY = "fxdnat"
"""Key of the dict that fxdnat keeps in ``GraphModule.meta`` (leaves, input shapes, decisions)."""

CHOICES: tuple[str, ...] = ("none", "identity", "same")
"""Candidate operations of every edge, in θ's column order (DNAT, Kim & Lee 2020, eq. 1)."""

NONE, IDENTITY, SAME = CHOICES

KINDS: tuple[str, ...] = ("branch", "skip", "op")
"""branch: a residual branch into a join; skip: an empty branch (the edge already is the identity);
op: a shape-preserving module call offered the identity ("op" granularity, NAT-style)."""
CHANGE_KINDS = ("identity", "none", "skip-none", "op-identity")
"""What a change is, by the edge's kind and its new choice: a residual branch becoming the
identity or removed, a skip removed (which costs the network nothing), an op becoming the
identity. Removing a branch and removing a skip are different changes (the random control
keeps them apart)."""

# The vocabularies of the passes, the engine, the harness and the CLI, each defined once here:
# a ``Literal`` for type checkers and its values as a tuple for validation and ``click.Choice``.
Granularity = Literal["branch", "op"]
GRANULARITIES: tuple[Granularity, ...] = get_args(Granularity)
"""Where edges are found (:func:`fxdnat.passes.discover`): residual branches and skips of each
join ("branch", the paper's), or also every shape-preserving module call ("op", NAT's)."""
Tie = Literal["cell", "full"]
TIES: tuple[Tie, ...] = get_args(Tie)
"""How edges share θ rows (:func:`fxdnat.passes.gate`): one row per role within a cell type,
shared by the cells of that type ("cell", DNAT's reading of DARTS); one row per edge ("full")."""
Scale = Literal["keep", "one"]
SCALES: tuple[Scale, ...] = get_args(Scale)
"""What finalize multiplies a kept candidate by: its learned θ entry ("keep"), or 1 ("one")."""
Update = Literal["alternate", "joint"]
UPDATES: tuple[Update, ...] = get_args(Update)
"""How ω and θ train in the architecture stage: ω's step then θ's on the same minibatch, θ seeing
the updated ω ("alternate", the paper's), or one backward for both ("joint")."""
Method = Literal["dnat", "original", "random", "nat", "prune", "similarity"]
METHODS: tuple[Method, ...] = get_args(Method)
"""What a run trains: DNAT's two stages, the untouched model, the random control (θ frozen,
as many changes as a DNAT run made, or changes that fit a cost budget, placed at random), the
NAT baseline (a policy searched on a weight-sharing supernet, its best sample retrained from
scratch; fxdnat/nat.py), contribution pruning (θ frozen; at the stage's end the branches
that contribute least, ‖op(x)‖ / ‖x + op(x)‖ on training data, are removed to fit a budget), or
similarity removal (likewise, the branches whose join's output is most like their input,
cos(x, x + op(x)), go first: ShortGPT's heuristic; at a budget or a DNAT run's changes)."""
Resource = Literal["flops", "params", "latency"]
RESOURCES: tuple[Resource, ...] = get_args(Resource)
"""What a cost budget bounds (fxdnat/cost.py): FLOPs as torch's flop counter counts them,
parameter elements, or latency measured on the run's device."""
NatWeights = Literal["uniform", "source", "policy"]
NAT_WEIGHTS: tuple[NatWeights, ...] = get_args(NatWeights)
"""The architectures NAT's supernet weights train on, one drawn per weight step: uniform over
each θ row's choices but none (NAT trains on random source architectures without null edges),
the source network alone, or samples of the current policy."""
Device = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[Device, ...] = get_args(Device)


@dataclass(frozen=True)
class Edge:
    """One edge of the architecture: ``source`` ─(nodes)─► ``operand`` ─► ``join``.

    All graph references are node names of the traced GraphModule, which FX derives
    deterministically from the module's code, so they are stable across runs and re-traces.
    """

    name: str
    """Stable readable id, ``"{cell}:{role}"`` (``"layer1.0:0"``; the root cell is ``""``)."""
    kind: str
    """One of :data:`KINDS`."""
    source: str
    """The edge's input x: the fork where the branch starts (equals ``operand`` for a skip)."""
    operand: str
    """The node whose value the edge delivers: the branch output (op(x))."""
    nodes: tuple[str, ...]
    """The branch between ``source`` and ``operand``, in graph order; empty for a skip."""
    join: str | None
    """The node holding the sum the edge enters (the last add of a chain); None for an op edge."""
    user: str | None
    """The add node that consumes ``operand`` (``join`` itself or an inner add of the chain)."""
    index: int | None
    """Position of ``operand`` among ``user``'s arguments: the use that the gate replaces."""
    choices: tuple[str, ...]
    """Allowed candidates, a subset of :data:`CHOICES` in that order."""
    cell: str
    """Module path of the cell that owns the edge (the deepest module holding join and branch)."""
    role: str
    """The edge's place inside its cell: join edges are numbered, op edges named by module."""

    def to_dict(self) -> dict:
        """Plain-Python form, as stored in checkpoints and printed by ``fxdnat edges --json``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Edge:
        fields = dict(data)
        fields["nodes"] = tuple(fields["nodes"])
        fields["choices"] = tuple(fields["choices"])
        return cls(**fields)


def change_kind(edge: Edge, choice: str) -> str:
    """The :data:`CHANGE_KINDS` entry of ``edge`` choosing ``choice`` (not "same")."""
    return choice if edge.kind == "branch" else f"{edge.kind}-{choice}"


def check_decisions(
    edges: Sequence[Edge], decisions: Mapping[str, str], *, allow_dead: bool = False
) -> dict[str, str]:
    """Validate ``decisions`` against ``edges``; complete missing edges with "same".

    Raises ValueError naming the edge for an unknown edge, a choice the edge does not allow, or
    (unless ``allow_dead``) a join left without a live operand.
    """
    by_name = {edge.name: edge for edge in edges}
    for name, choice in decisions.items():
        if name not in by_name:
            hint = difflib.get_close_matches(name, by_name, n=1)
            raise ValueError(
                f"unknown edge {name!r} in decisions"
                + (f"; did you mean {hint[0]!r}?" if hint else "; see `fxdnat edges`")
            )
        if choice not in by_name[name].choices:
            raise ValueError(
                f"edge {name!r} cannot choose {choice!r}; it allows {by_name[name].choices}"
            )
    full = {edge.name: decisions.get(edge.name, SAME) for edge in edges}
    if not allow_dead:
        for join, members in joins_of(edges).items():
            if all(full[e.name] == NONE for e in members):
                raise ValueError(
                    f"decisions remove every operand of join {join!r} (edges "
                    f"{', '.join(e.name for e in members)}); keep at least one"
                )
    return full


def joins_of(edges: Sequence[Edge]) -> dict[str, list[Edge]]:
    """The edges of each join, by the join's node name (op edges belong to none)."""
    joins: dict[str, list[Edge]] = defaultdict(list)
    for edge in edges:
        if edge.join is not None:
            joins[edge.join].append(edge)
    return joins


def within(path: str, module: str) -> bool:
    """Whether module ``path`` (a dotted path, as ``named_modules`` gives) is ``module`` or
    inside it; every path is within the root module ``""``."""
    return not module or path == module or path.startswith(module + ".")
