"""What each edge does to the join it enters, measured on training data: the scores of the
one-shot removal baselines a user would otherwise apply by hand.

**Contribution** (method ``prune``): for an edge into a join, ``‖op(x)‖ / ‖join‖`` — the
branch's output against the sum it enters, ``x + op(x)`` for a residual block — per example.
Layer-dropping work on LLMs ranks blocks by this ratio. For an op edge (``--granularity op``),
``‖op(x) − x‖ / ‖op(x)‖``: how far the op is from the identity it would become.

**Similarity** (method ``similarity``): the cosine similarity of the branch's input ``x`` and the
join's output, ``cos(x, x + op(x))``, averaged over positions — ShortGPT's Block Influence is one
minus it (Men et al. 2024, "ShortGPT: Layers in Large Language Models are More Redundant Than
You Expect", eq. 1; they average over tokens). A position is a token of a (batch, tokens,
features) tensor and a pixel of a (batch, channels, height, width) one: the cosine runs over the
feature (channel) axis. The most similar branches change their input least and go first. For an
op edge, ``cos(x, op(x))``. An edge without an identity candidate (a branch that changes shape)
has no input to compare with: its similarity is −1, so it is removed last.

Both are measured with θ = (0, 0, 1) (the original network's function), in eval mode, without
autograd, and averaged over the examples of the batches given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import fx

from fxdnat.arch import Architecture, dnat_mix
from fxdnat.ir import CHOICES, SAME
from fxdnat.passes.gate import EDGES_META

# (x: the edge's input or None, out: op(x), total: the join's output, kind) → per-example score
Measure = Callable[[torch.Tensor | None, torch.Tensor, torch.Tensor, str], torch.Tensor]


class _Scores(fx.Interpreter):
    """Runs the gated graph, summing each edge's per-example score at its mix."""

    def __init__(self, gated: fx.GraphModule, arch: Architecture, measure: Measure) -> None:
        super().__init__(gated)
        self.kinds = {e.name: e.kind for e in arch.edges}
        self.sums = dict.fromkeys(self.kinds, 0.0)
        self.measure = measure
        self.seen = 0

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n.op == "call_function" and n.target is dnat_mix:
            tensors = self.fetch_args_kwargs_from_env(n)[0][2:]
            for leaf in n.meta[EDGES_META].leaves:
                x = None if leaf.identity is None else tensors[leaf.identity]
                score = self.measure(x, tensors[leaf.same], result, self.kinds[leaf.edge])
                self.sums[leaf.edge] += float(score.nan_to_num(0.0).sum())
        return result


def _norms(t: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norms (batch, ), in float32, never 0 (a zero output contributes 0)."""
    return torch.linalg.vector_norm(t.float().flatten(1), dim=1).clamp_min(1e-12)


def _contribution(x, out, total, kind) -> torch.Tensor:
    if kind == "op" and x is not None:
        return _norms(out - x) / _norms(out)
    return _norms(out) / _norms(total)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-example mean over positions of the cosine along the feature axis (batch, )."""
    a, b = a.float(), b.float()
    if a.dim() >= 4 or a.dim() == 2:  # (batch, channels, ...) or (batch, features)
        cos = torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12)
    else:  # (batch, tokens, features); a 1-d output is one feature per example
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)
    return cos.reshape(len(cos), -1).mean(1)


def _similarity(x, out, total, kind) -> torch.Tensor:
    if x is None or x.shape != total.shape:
        return torch.full((len(out),), -1.0)
    return _cosine(x, out if kind == "op" else total)


@torch.no_grad()
def _measure(
    gated: fx.GraphModule, batches: Iterable[Any], device: torch.device | None, measure: Measure
) -> dict[str, float]:
    arch: Architecture = gated.arch
    start = torch.zeros_like(arch.theta)
    start[:, CHOICES.index(SAME)] = 1.0
    if not torch.equal(arch.theta.detach(), start):
        raise ValueError("branches are measured on the original function: θ must be (0, 0, 1)")
    device = device or arch.theta.device
    counter = _Scores(gated, arch, measure)
    was_training = gated.training
    gated.eval()
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            counter.run(x.to(device))
            counter.seen += len(x)
    finally:
        gated.train(was_training)
    if not counter.seen:
        raise ValueError("no batch to measure the edges on")
    return {name: total / counter.seen for name, total in counter.sums.items()}


def contributions(
    gated: fx.GraphModule, batches: Iterable[Any], device: torch.device | None = None
) -> dict[str, float]:
    """``{edge name: mean contribution ratio}`` (≥ 0; 0 for a silent branch) over the examples
    of ``batches`` (each an input tensor, or an ``(input, target)`` pair as a loader yields),
    moved to ``device`` (default: θ's).

    θ must be at its start, (0, 0, 1) on every row, so that each join computes the original sum;
    the module's train/eval mode is restored afterwards.

    Raises:
        ValueError: θ has moved from the start, or ``batches`` is empty.
    """
    return _measure(gated, batches, device, _contribution)


def similarities(
    gated: fx.GraphModule, batches: Iterable[Any], device: torch.device | None = None
) -> dict[str, float]:
    """``{edge name: mean cosine similarity of its input and its join's output}`` in [−1, 1]
    (1: the join passes its input on unchanged; ShortGPT's Block Influence is 1 − this), over
    the examples of ``batches`` as :func:`contributions` takes them.

    Raises:
        ValueError: θ has moved from the start, or ``batches`` is empty.
    """
    return _measure(gated, batches, device, _similarity)
