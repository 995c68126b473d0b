"""θ: the architecture parameters, and the op that mixes the candidates of a join's edges."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import fx, nn
from torch.autograd.function import once_differentiable

from fxdnat.ir import CHOICES, SAME, Edge

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


@fx.wrap
def dnat_mix(weights: torch.Tensor, spec: Spec, *tensors: torch.Tensor) -> torch.Tensor:
    """A join (or an op edge) with every edge's candidates mixed by θ, DNAT eq. 1.

    Each edge contributes ``θ_none·0 + θ_identity·x + θ_same·op(x)``; the join sums them. With
    θ = (0, 0, 1) on every row this is the original sum, bit for bit (see :data:`Tree`).

    ``weights`` is the masked θ, (groups, 3); ``spec`` (:data:`Spec`) says which entries scale
    which of ``tensors``. Wrapped for FX so that a gated module re-traces (and
    ``torch.compile``s) with one call per join.

    On the CPU, outside ``torch.compile``, it reads the coefficients as Python numbers: it
    multiplies only where a coefficient is not exactly 1 and skips terms whose coefficient is
    exactly 0. When θ needs a gradient this is one autograd function that computes it as one
    dot product per input tensor; when θ is a constant (``Architecture.frozen()``, no_grad)
    the sum is plain tensor ops, whose backward autograd runs without Python. Elsewhere (CUDA,
    where reading θ would synchronise; under ``torch.compile``, which fuses the plain ops) it
    is composed of plain differentiable ops. One difference shows: a branch whose every
    coefficient is exactly 0 is not in the CPU form's autograd graph, so its parameters get no
    gradient (None rather than zeros).
    """
    if not _reads_theta_as_numbers(weights):
        return _mix_ops(weights, spec, tensors)
    if weights.requires_grad and torch.is_grad_enabled():
        return _CpuMix.apply(weights, spec, *tensors)
    plan = _plan(spec)
    return _sum_numbers(plan, plan.coefficients(_theta_values(weights)), tensors)


def _reads_theta_as_numbers(weights: torch.Tensor) -> bool:
    """The CPU forms (the function, the plain sum with numbers) apply: reading θ costs no sync
    and no compiler is tracing."""
    return weights.is_cpu and not torch.compiler.is_compiling()


def _theta_values(weights: torch.Tensor) -> list[float]:
    """θ's entries as Python numbers, read once per forward: every mix of a forward gets the
    same ``weights`` tensor (``arch()`` runs once), so the list is kept on it."""
    cached = getattr(weights, "_fxdnat_values", None)
    if cached is None or cached[0] != weights._version:
        cached = (weights._version, weights.detach().reshape(-1).tolist())
        weights._fxdnat_values = cached
    return cached[1]


def _mix_ops(weights: torch.Tensor, spec: Spec, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    tree, terms = spec
    flat = weights.reshape(-1)

    def coefficient(term: Term) -> torch.Tensor:
        _, entries, _ = term
        total = flat[entries[0]]
        for entry in entries[1:]:
            total = total + flat[entry]
        return total

    out = _sum_tree(tree, lambda i: tensors[terms[i][0]] * coefficient(terms[i]))
    for term in terms[_leaf_count(tree) :]:
        out = torch.addcmul(out, tensors[term[0]], coefficient(term), value=term[2])
    return out


class _Plan:
    """A spec unpacked once for the CPU function: what its forward and backward look up."""

    __slots__ = ("_scatter", "entries", "leaves", "rest", "terms", "tree")

    def __init__(self, spec: Spec) -> None:
        self.tree, self.terms = spec
        self.leaves = _leaf_count(self.tree)
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

    out = _sum_tree(plan.tree, leaf)
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


def _sum_tree(tree: Tree, leaf: Callable[[int], torch.Tensor | None]) -> torch.Tensor | None:
    """Evaluate ``tree`` with the original association; a None leaf is a term that vanished."""
    if tree is None:
        return None
    if isinstance(tree, int):
        return leaf(tree)
    left, right, alpha = tree
    a, b = _sum_tree(left, leaf), _sum_tree(right, leaf)
    if a is None or b is None:
        if b is None:
            return a
        return b if alpha == 1 else b * alpha
    return a + b if alpha == 1 else torch.add(a, b, alpha=alpha)


def _leaf_count(tree: Tree) -> int:
    if tree is None:
        return 0
    return 1 if isinstance(tree, int) else _leaf_count(tree[0]) + _leaf_count(tree[1])


class Architecture(nn.Module):
    """Holds θ, one row per group of tied edges, and the mask of choices each row allows.

    Calling it returns the masked θ, so a disallowed choice has weight 0 and gets no gradient.
    """

    def __init__(self, edges: Sequence[Edge], groups: Sequence[int], tie: str) -> None:
        super().__init__()
        if len(edges) != len(groups):
            raise ValueError(f"{len(edges)} edges but {len(groups)} group indices")
        self.edges: tuple[Edge, ...] = tuple(edges)
        self.groups: tuple[int, ...] = tuple(groups)
        self.tie = tie
        self.group_of: dict[str, int] = {e.name: g for e, g in zip(edges, groups, strict=True)}
        rows = max(groups, default=-1) + 1
        mask = torch.zeros(rows, len(CHOICES), dtype=torch.bool)
        for edge, group in zip(edges, groups, strict=True):
            mask[group, [CHOICES.index(c) for c in edge.choices]] = True
        theta = torch.zeros(rows, len(CHOICES))
        theta[:, CHOICES.index(SAME)] = 1.0  # start as the original network
        self.theta = nn.Parameter(theta)
        self.register_buffer("mask", mask)

    def forward(self) -> torch.Tensor:
        return self.theta * self.mask

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """θ is a constant for forwards run inside: ω's step of the alternating update needs no
        gradient of θ, and the mixes then keep no activations for one and compute none."""
        was = self.theta.requires_grad
        self.theta.requires_grad_(False)
        try:
            yield
        finally:
            self.theta.requires_grad_(was)

    @property
    def num_groups(self) -> int:
        return self.theta.shape[0]

    def edges_of(self, group: int) -> list[Edge]:
        return [e for e, g in zip(self.edges, self.groups, strict=True) if g == group]

    @torch.no_grad()
    def assign(self, decisions: Mapping[str, str]) -> None:
        """Set θ one-hot on ``decisions`` ({edge name: choice}; missing edges keep "same")."""
        from fxdnat.passes.decide import check_decisions

        full = check_decisions(self.edges, decisions, allow_dead=True)
        rows: dict[int, str] = {}
        for edge in self.edges:
            group, choice = self.group_of[edge.name], full[edge.name]
            if rows.setdefault(group, choice) != choice:
                shared = ", ".join(e.name for e in self.edges_of(group))
                raise ValueError(
                    f"edges {shared} share one θ row (tie={self.tie!r}) but the decisions give "
                    f"them different choices; use tie='full' to set them independently"
                )
        self.theta.zero_()
        for group, choice in rows.items():
            self.theta[group, CHOICES.index(choice)] = 1.0

    def extra_repr(self) -> str:
        return f"edges={len(self.edges)}, groups={self.num_groups}, tie={self.tie!r}"
