"""What a residual branch computes, read from the modules it runs: attention, an MLP, or other.

A transformer block has two branches, attention and MLP, and what a method removes is told by
kind: "2 attention branches and 1 MLP branch removed". A branch is "attention" when it calls
``scaled_dot_product_attention`` or ``nn.MultiheadAttention``, or runs inside a module named like
one (``attn``, ``self_attn``, ``attention``: nanoGPT, timm, Hugging Face); "mlp" when it runs
inside a module named ``mlp``, ``ffn``, ``feed_forward``. Every other edge keeps its kind from the
IR ("branch", "skip", "op").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import torch.nn.functional as F
from torch import fx, nn

from fxdnat.ir import NONE, Edge

ATTENTION, MLP = "attention", "mlp"
_ATTENTION_NAMES = frozenset(
    {"attn", "attention", "self_attn", "self_attention", "selfattention", "cross_attn", "mha"}
)
_MLP_NAMES = frozenset({"mlp", "ffn", "feed_forward", "feedforward", "ff", "mlp_block"})


def branch_kind(gm: fx.GraphModule, edge: Edge) -> str:
    """The kind of ``edge``'s branch: "attention", "mlp", or the edge's IR kind ("branch", "skip",
    "op"); ``gm`` is the traced module the edge was discovered on."""
    nodes = {n.name: n for n in gm.graph.nodes}
    names: set[str] = set()
    attention = False
    for name in edge.nodes:
        node = nodes[name]
        attention |= node.op == "call_function" and node.target is F.scaled_dot_product_attention
        if node.op == "call_module":
            attention |= isinstance(gm.get_submodule(node.target), nn.MultiheadAttention)
        for path in (node.meta.get("nn_module_stack") or {}).values():
            names.update(part.lower() for part in str(path[0]).split("."))
    if attention or names & _ATTENTION_NAMES:
        return ATTENTION
    if names & _MLP_NAMES:
        return MLP
    return edge.kind


def removed_by_kind(
    gm: fx.GraphModule, edges: Sequence[Edge], decisions: Mapping[str, str], choice: str = NONE
) -> dict[str, int]:
    """How many branches of each kind (:func:`branch_kind`) ``decisions`` remove ("none"; or
    turn into ``choice``, e.g. "identity"), for every kind the network has, zero or not; skips
    removed are counted as "skip"."""
    kinds = {edge.name: branch_kind(gm, edge) for edge in edges}
    counted = Counter(kinds[name] for name, chose in decisions.items() if chose == choice)
    return {kind: counted.get(kind, 0) for kind in sorted(set(kinds.values()))}
