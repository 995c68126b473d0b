"""NAT's policy on fxdnat's edges: a graph convolutional network that proposes, for every θ row,
one of {none, identity, same}, trained by REINFORCE (Guo et al., NeurIPS 2019, "NAT: Neural
Architecture Transformer for Accurate and Compact Architectures"; the facts of its reference
code are in the project's REFERENCES.md).

An adaptation, named as such wherever a result is reported: NAT's code handles DARTS cells (two
inputs per node); here its policy runs on the edges :func:`fxdnat.passes.discover` finds in any
traced network. The architecture graph's nodes are the edges' sources and joins (an op edge's
output stands for its join); each edge carries an embedding of its kind and its current choice,
and the policy's categorical is one per θ row, so that edges tied by ``tie="cell"`` share a
choice, as NAT's one genotype per cell type does. The supernet is the gated module with θ set
one-hot to a sampled architecture: there is no second model definition.

Deviations from the reference code, each for a reason: node features are the *sum* of the
in-edges' embeddings (NAT concatenates exactly two) plus a sinusoidal code of the node's
position in the graph (NAT's cells are small and every position is its own node; a whole
ResNet's blocks would otherwise look alike to the policy); the head reads the edge's embedding
and its two end nodes' states (NAT's reads the node's), and starts at zero, so that every
allowed choice starts equally likely.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fxdnat.ir import CHOICES, KINDS, NONE, SAME, Edge, joins_of

EMBEDDING = 100  # NAT: op embeddings of 100 dimensions
PROJECTION = 1024  # NAT: node features projected to 1024
HIDDEN = 100  # NAT: the GCN's hidden states
_POSITION = 16  # sinusoidal code of a node's place in the graph (ours, see the module text)
_MASKED = -1e9  # a disallowed choice's logit: probability exactly 0, no nan in the entropy


@dataclass(frozen=True)
class ArchGraph:
    """The architecture as the policy reads it: E edges between N nodes, G θ rows.

    ``source``/``target``: (E,) node indices; ``kind``/``choice``: (E,) indices into
    :data:`fxdnat.ir.KINDS` and :data:`fxdnat.ir.CHOICES` (the edge's current choice: "same" in
    the source network); ``group``: (E,) θ row of each edge; ``position``: (N,) each node's place
    in graph order, in [0, 1]; ``mask``: (G, 3) the choices each row allows.
    """

    nodes: tuple[str, ...]
    source: torch.Tensor
    target: torch.Tensor
    kind: torch.Tensor
    choice: torch.Tensor
    group: torch.Tensor
    position: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def build(
        cls,
        edges: Sequence[Edge],
        groups: Sequence[int],
        mask: torch.Tensor,
        order: Sequence[str],
        current: Mapping[str, str] | None = None,
    ) -> ArchGraph:
        """From the edge IR: ``groups`` (each edge's θ row), ``mask`` (rows × 3), ``order`` (the
        traced graph's node names in graph order) and each edge's current choice (default
        "same": the source network)."""
        place = {name: i for i, name in enumerate(order)}
        ends = [(e.source, e.join if e.join is not None else e.operand) for e in edges]
        nodes = tuple(sorted({n for pair in ends for n in pair}, key=place.__getitem__))
        index = {name: i for i, name in enumerate(nodes)}
        current = current or {}
        return cls(
            nodes=nodes,
            source=torch.tensor([index[s] for s, _ in ends], dtype=torch.long),
            target=torch.tensor([index[t] for _, t in ends], dtype=torch.long),
            kind=torch.tensor([KINDS.index(e.kind) for e in edges], dtype=torch.long),
            choice=torch.tensor(
                [CHOICES.index(current.get(e.name, SAME)) for e in edges], dtype=torch.long
            ),
            group=torch.tensor(list(groups), dtype=torch.long),
            position=torch.tensor([place[n] / max(len(order) - 1, 1) for n in nodes]),
            mask=mask.clone().bool(),
        )


class Policy(nn.Module):
    """NAT's policy: a 2-layer GCN over :class:`ArchGraph`, one categorical per θ row.

    ``policy()`` returns the logits, (G, 3), a disallowed choice at -1e9 (probability 0). The
    adjacency is directed (a node aggregates its in-edges' sources), without self-loops and not
    normalised, as NAT's.
    """

    def __init__(self, graph: ArchGraph) -> None:
        super().__init__()
        self.kind_embedding = nn.Embedding(len(KINDS), EMBEDDING)
        self.choice_embedding = nn.Embedding(len(CHOICES), EMBEDDING)
        self.project = nn.Linear(EMBEDDING + _POSITION, PROJECTION)
        self.gc1 = nn.Linear(PROJECTION, HIDDEN)
        self.gc2 = nn.Linear(HIDDEN, HIDDEN)
        self.head = nn.Linear(2 * HIDDEN + EMBEDDING, len(CHOICES))
        # every allowed choice starts equally likely: the sums over in-edges of an unnormalised
        # adjacency make default-initialised logits of tens, a policy sure of one architecture
        # before its first reward (ours; NAT's code leaves the default initialisation)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        nodes, rows = len(graph.nodes), graph.mask.shape[0]
        adjacency = torch.zeros(nodes, nodes)
        adjacency[graph.target, graph.source] = 1.0  # row = target
        members = torch.zeros(rows, len(graph.group))
        members[graph.group, torch.arange(len(graph.group))] = 1.0
        for name, value in (
            ("source", graph.source),
            ("target", graph.target),
            ("kind", graph.kind),
            ("choice", graph.choice),
            ("adjacency", adjacency),
            ("members", members / members.sum(1, keepdim=True).clamp(min=1)),  # row mean
            ("positions", _sinusoid(graph.position)),
            ("mask", graph.mask),
        ):
            self.register_buffer(name, value, persistent=False)

    def forward(self) -> torch.Tensor:
        edge = self.kind_embedding(self.kind) + self.choice_embedding(self.choice)  # (E, 100)
        incoming = torch.zeros(len(self.adjacency), EMBEDDING, device=edge.device)
        incoming = incoming.index_add(0, self.target, edge)  # the in-edges' ops, on the target
        x = self.project(torch.cat([incoming, self.positions], 1))  # (N, 1024)
        h = F.relu(self.adjacency @ self.gc1(x))
        h = self.adjacency @ self.gc2(h)  # (N, 100)
        per_edge = self.head(torch.cat([h[self.source], h[self.target], edge], 1))  # (E, 3)
        logits = self.members @ per_edge  # (G, 3): a row's edges decide together
        return logits.masked_fill(~self.mask, _MASKED)


def _sinusoid(position: torch.Tensor) -> torch.Tensor:
    """(N,) in [0, 1] → (N, 16): sines and cosines of the position at 8 frequencies."""
    frequencies = math.pi * 2.0 ** torch.arange(_POSITION // 2)
    angles = position[:, None] * frequencies
    return torch.cat([angles.sin(), angles.cos()], 1)


@dataclass
class Sample:
    """One architecture drawn from the policy: a choice index per θ row, (G,), and the sum over
    rows of its log-probability and of the distributions' entropy (0-dim, differentiable)."""

    rows: torch.Tensor
    log_prob: torch.Tensor
    entropy: torch.Tensor


def sample(logits: torch.Tensor, generator: torch.Generator | None = None) -> Sample:
    """Draw one choice per row of ``logits`` (G, 3) from its categorical."""
    log_p = F.log_softmax(logits, dim=1)
    rows = torch.multinomial(log_p.exp().detach(), 1, generator=generator).squeeze(1)
    return Sample(rows, score(logits, rows), entropy(logits))


def score(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """log p(rows) under ``logits`` (G, 3): the sum over rows (0-dim)."""
    return F.log_softmax(logits, dim=1).gather(1, rows[:, None]).sum()


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """The rows' categoricals' entropy, summed (nats; masked choices contribute 0)."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum()


def reinforce_loss(
    drawn: Sample, reward: float, baseline: float, entropy_weight: float
) -> torch.Tensor:
    """NAT's policy loss: −log p(architecture)·(reward − baseline) − entropy_weight·entropy."""
    return -drawn.log_prob * (reward - baseline) - entropy_weight * drawn.entropy


def update_baseline(baseline: float, reward: float, decay: float) -> float:
    """NAT's baseline after a reward: an exponential moving average (decay 0.99) of the
    *advantage* reward − baseline, as NAT's code computes it (``Transformer.update_baseline``
    is handed the reward minus the baseline), not of the reward: the baseline settles at about
    half the mean reward, b ← (2·decay − 1)·b + (1 − decay)·reward."""
    return decay * baseline + (1 - decay) * (reward - baseline)


def decisions_of(rows: torch.Tensor, edges: Sequence[Edge], groups: Sequence[int]) -> dict:
    """``{edge name: choice}`` from a choice index per θ row."""
    chosen = rows.tolist()
    return {e.name: CHOICES[chosen[g]] for e, g in zip(edges, groups, strict=True)}


def uniform_rows(mask: torch.Tensor, generator: torch.Generator, *, live: bool = True):
    """A choice index per row, uniform over the row's allowed choices (never "none" if ``live``,
    as NAT's random source architectures contain no null edge, unless a row allows only none)."""
    allowed = mask.clone().bool()
    if live:
        only_none = allowed.sum(1) == 1
        allowed[~only_none, CHOICES.index(NONE)] = False
    return torch.multinomial(allowed.float(), 1, generator=generator).squeeze(1)


def dead_joins(edges: Sequence[Edge], decisions: Mapping[str, str]) -> list[str]:
    """The joins every one of whose operands chose "none" (a zero tensor flows on), sorted.
    NAT has no guard against them; DNAT's ``decide`` never makes one."""
    return sorted(
        join
        for join, members in joins_of(edges).items()
        if all(decisions.get(e.name, SAME) == NONE for e in members)
    )
