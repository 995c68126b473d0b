"""``dnat_mix`` on the CPU: the same sum as :func:`fxdnat.mix.reference_mix`, with θ's entries read
as Python numbers, so that it multiplies only where a coefficient is not exactly 1 and skips
terms whose coefficient is exactly 0.

When θ needs a gradient this is one autograd function that computes it as one dot product per
input tensor; when θ is a constant (``Architecture.frozen()``, no_grad) the sum is plain tensor
ops, whose backward autograd runs without Python. One difference from the reference shows: a
branch whose every coefficient is exactly 0 is not in this form's autograd graph, so its
parameters get no gradient (None rather than zeros).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch.autograd.function import once_differentiable

from fxdnat.mix import Spec, leaf_count, sum_tree


def cpu_mix(weights: torch.Tensor, spec: Spec, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mix of ``tensors`` by ``weights`` (masked θ, (groups, 3), on the CPU) as ``spec``
    says; differentiable in θ where θ needs a gradient."""
    if weights.requires_grad and torch.is_grad_enabled():
        return _CpuMix.apply(weights, spec, *tensors)
    plan = _plan(spec)
    return _sum_numbers(plan, plan.coefficients(_theta_values(weights)), tensors)


def _theta_values(weights: torch.Tensor) -> list[float]:
    """θ's entries as Python numbers, read once per forward: every mix of a forward gets the
    same ``weights`` tensor (``arch()`` runs once), so the list is kept on it."""
    if weights.is_inference():  # inference mode: no version counter to key a cache on
        return weights.reshape(-1).tolist()
    cached = getattr(weights, "_fxdnat_values", None)
    if cached is None or cached[0] != weights._version:
        cached = (weights._version, weights.detach().reshape(-1).tolist())
        weights._fxdnat_values = cached
    return cached[1]


class _Plan:
    """A spec unpacked once for the CPU function: what its forward and backward look up."""

    __slots__ = ("_scatter", "entries", "leaves", "rest", "terms", "tree")

    def __init__(self, spec: Spec) -> None:
        self.tree, self.terms = spec
        self.leaves = leaf_count(self.tree)
        self.rest = self.terms[self.leaves :]  # terms added after the tree
        self.entries = tuple(entries for _, entries, _ in self.terms)
        self._scatter: dict[tuple[int, int, torch.dtype], torch.Tensor] = {}

    def coefficients(self, theta: Sequence[float]) -> list[float]:
        """Each term's coefficient, Σ θ over its entries, from θ's flat values."""
        return [sum([theta[e] for e in entries]) for entries in self.entries]

    def scatter(self, tensors: int, numel: int, dtype: torch.dtype) -> torch.Tensor:
        """(tensors, θ entries): θ's gradient is the inputs' dot products with ``grad`` times
        this, each entry getting the dots of the terms it scales, by their scale."""
        key = (tensors, numel, dtype)
        matrix = self._scatter.get(key)
        if matrix is None:
            matrix = torch.zeros(tensors, numel, dtype=dtype)
            for index, entries, scale in self.terms:
                for entry in entries:
                    matrix[index, entry] += scale
            self._scatter[key] = matrix
        return matrix


@functools.lru_cache(maxsize=4096)
def _plan(spec: Spec) -> _Plan:
    return _Plan(spec)


class _CpuMix(torch.autograd.Function):
    """``dnat_mix`` with Python-number coefficients and θ's gradient: the fewest passes over
    the activations.

    Every Python line here runs twice per join and step, between convolutions that have just
    flushed the caches, so the work is planned once per spec (:class:`_Plan`)."""

    @staticmethod
    def forward(ctx, weights: torch.Tensor, spec: Spec, *tensors: torch.Tensor) -> torch.Tensor:
        plan = _plan(spec)
        coefs = plan.coefficients(_theta_values(weights))
        out = _sum_numbers(plan, coefs, tensors)
        scales = [0.0] * len(tensors)  # d out / d tensor, a number
        for (index, _, scale), c in zip(plan.terms, coefs, strict=True):
            scales[index] += scale * c
        ctx.plan, ctx.scales, ctx.theta_like = plan, scales, (weights.shape, weights.dtype)
        ctx.save_for_backward(*tensors)  # for θ's gradient (dnat_mix comes here only for one)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grads = [
            None if not needed or k == 0 else grad if k == 1 else grad * k
            for needed, k in zip(ctx.needs_input_grad[2:], ctx.scales, strict=True)
        ]
        shape, dtype = ctx.theta_like
        saved = ctx.saved_tensors
        dots = torch.stack([_dot(grad, t) for t in saved]).to(dtype)
        theta_grad = (dots @ ctx.plan.scatter(len(saved), shape.numel(), dtype)).view(shape)
        return (theta_grad, None, *grads)


def _sum_numbers(
    plan: _Plan, coefs: Sequence[float], tensors: Sequence[torch.Tensor]
) -> torch.Tensor:
    """The mix with Python-number coefficients: no pass for a coefficient of exactly 1, no term
    for one of exactly 0, and never an input itself as the result (an in-place op after the
    join would change a tensor that other readers, or θ's gradient, still need)."""
    terms = plan.terms

    def leaf(i: int) -> torch.Tensor | None:
        c, t = coefs[i], tensors[terms[i][0]]
        return None if c == 0 else t if c == 1 else t * c

    out = sum_tree(plan.tree, leaf)
    fresh = out is not None and all(out is not t for t in tensors)
    for (index, _, scale), c in zip(plan.rest, coefs[plan.leaves :], strict=True):
        if c == 0:
            continue
        if out is None:
            out, fresh = tensors[index] * (scale * c), True
        elif fresh:
            out.add_(tensors[index], alpha=scale * c)
        else:
            out, fresh = torch.add(out, tensors[index], alpha=scale * c), True
    if out is None:  # every candidate is "none": the join adds nothing
        return torch.zeros_like(tensors[0])
    return out if fresh else out.clone()


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ a·b in one read of each, without the product tensor where the layouts allow."""
    if a.is_contiguous() and b.is_contiguous():
        return torch.dot(a.reshape(-1), b.reshape(-1))
    return (a * b).sum()
