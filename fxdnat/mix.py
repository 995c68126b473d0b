"""What a gated join computes, DNAT eq. 1, written plainly: the reference for every faster form.

A join's edges each contribute ``θ_none·0 + θ_identity·x + θ_same·op(x)``; the join sums them
in the association of the original adds (:data:`Tree`), so θ = (0, 0, 1) gives the original sum
bit for bit. ``fxdnat.arch.dnat_mix`` is the op in the graph; this module says what it means.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Tree = int | None | tuple["Tree", "Tree", float]
"""How a join's operands are summed: a term index, None for the literal 0 that builtin ``sum``
starts from, or ``(left, right, alpha)`` for ``left + alpha·right``; the association of the
original adds, kept for bit-exactness."""
Term = tuple[int, tuple[int, ...], float]
"""``(tensor index, flat θ indices, scale)``: contributes ``scale·(Σ θ[indices])·tensors[index]``;
``scale`` is the product of the adds' alphas above the term (the tree applies them to its leaves,
terms after the tree are added with it)."""
Spec = tuple[Tree, tuple[Term, ...]]
"""A gated place: terms ``0..k`` are the leaves of the tree (the edges' operands), later terms
are added after it (the inputs ``x`` of edges offered the identity)."""


def reference_mix(
    weights: torch.Tensor, spec: Spec, tensors: Sequence[torch.Tensor]
) -> torch.Tensor:
    """The mix of ``tensors`` by ``weights`` (masked θ, (groups, 3)) as ``spec`` says, in plain
    differentiable ops: what runs on CUDA (reading θ there would synchronise) and under
    ``torch.compile`` (which fuses these ops)."""
    tree, terms = spec
    flat = weights.reshape(-1)

    def coefficient(term: Term) -> torch.Tensor:
        _, entries, _ = term
        total = flat[entries[0]]
        for entry in entries[1:]:
            total = total + flat[entry]
        return total

    out = sum_tree(tree, lambda i: tensors[terms[i][0]] * coefficient(terms[i]))
    for term in terms[leaf_count(tree) :]:
        out = torch.addcmul(out, tensors[term[0]], coefficient(term), value=term[2])
    return out


def sum_tree(tree: Tree, leaf: Callable[[int], torch.Tensor | None]) -> torch.Tensor | None:
    """Evaluate ``tree`` with the original association; a None leaf is a term that vanished."""
    if tree is None:
        return None
    if isinstance(tree, int):
        return leaf(tree)
    left, right, alpha = tree
    a, b = sum_tree(left, leaf), sum_tree(right, leaf)
    if a is None or b is None:
        if b is None:
            return a
        return b if alpha == 1 else b * alpha
    return a + b if alpha == 1 else torch.add(a, b, alpha=alpha)


def leaf_count(tree: Tree) -> int:
    if tree is None:
        return 0
    return 1 if isinstance(tree, int) else leaf_count(tree[0]) + leaf_count(tree[1])
