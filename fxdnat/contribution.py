"""How much each edge contributes to what its join computes: the measure of contribution pruning,
the baseline a user would otherwise apply by hand at a cost budget.

For an edge into a join, ``‖op(x)‖ / ‖join‖`` — the branch's output against the sum it enters,
``x + op(x)`` for a residual block — per example, averaged over training batches; layer-dropping
work on LLMs ranks blocks by this ratio (or by the similarity of a block's input and output,
which it bounds). For an op edge (``--granularity op``), ``‖op(x) − x‖ / ‖op(x)‖``: how far the op
is from the identity it would become. Measured with θ = (0, 0, 1) (the original network's
function), in eval mode, without autograd.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import fx

from fxdnat.arch import Architecture, dnat_mix
from fxdnat.ir import CHOICES, SAME
from fxdnat.passes.gate import EDGES_META


class _Contributions(fx.Interpreter):
    """Runs the gated graph, summing each edge's per-example ratio at its mix."""

    def __init__(self, gated: fx.GraphModule, arch: Architecture) -> None:
        super().__init__(gated)
        self.kinds = {e.name: e.kind for e in arch.edges}
        self.sums = dict.fromkeys(self.kinds, 0.0)
        self.seen = 0

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n.op == "call_function" and n.target is dnat_mix:
            tensors = self.fetch_args_kwargs_from_env(n)[0][2:]
            total = _norms(result)
            for leaf in n.meta[EDGES_META].leaves:
                out = tensors[leaf.same]
                if self.kinds[leaf.edge] == "op":
                    ratio = _norms(out - tensors[leaf.identity]) / _norms(out)
                else:
                    ratio = _norms(out) / total
                self.sums[leaf.edge] += float(ratio.nan_to_num(0.0).sum())
        return result


def _norms(t: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norms (batch, ), in float32, never 0 (a zero output contributes 0)."""
    return torch.linalg.vector_norm(t.float().flatten(1), dim=1).clamp_min(1e-12)


@torch.no_grad()
def contributions(
    gated: fx.GraphModule, batches: Iterable[Any], device: torch.device | None = None
) -> dict[str, float]:
    """``{edge name: mean ratio}`` over the examples of ``batches`` (each an input tensor, or an
    ``(input, target)`` pair as a loader yields), moved to ``device`` (default: the module's).

    θ must be at its start, (0, 0, 1) on every row, so that each join computes the original sum;
    the module's train/eval mode is restored afterwards.

    Raises:
        ValueError: θ has moved from the start, or ``batches`` is empty.
    """
    arch: Architecture = gated.arch
    start = torch.zeros_like(arch.theta)
    start[:, CHOICES.index(SAME)] = 1.0
    if not torch.equal(arch.theta.detach(), start):
        raise ValueError("contributions are measured on the original function: θ must be (0, 0, 1)")
    device = device or arch.theta.device
    counter = _Contributions(gated, arch)
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
        raise ValueError("no batch to measure contributions on")
    return {name: total / counter.seen for name, total in counter.sums.items()}
