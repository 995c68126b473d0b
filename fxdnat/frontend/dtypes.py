"""Branches on a tensor's dtype or device, decided while tracing.

Library code guards numerics on the dtype it runs in (``if hidden_states.dtype == torch.float16:
clamp``, ``if self.weight.dtype in (torch.float16, torch.bfloat16):``). torch.fx cannot branch on
a proxy, so such a module used to become an opaque leaf, and with it the residual joins of a whole
transformer block. A condition that reads nothing but dtypes and devices is decided here, for the
dtype the model has on the example inputs: the partial graph is run on them (once per node, in
order) to learn the tensor's dtype, and the branch taken is the one eager mode takes. Conditions
on anything else (shapes, values) stay refused, so nothing that varies with the batch is baked in.
The price: a model traced in float32 and later run in float16 keeps the float32 branch.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx, nn
from torch.fx import _symbolic_trace
from torch.utils import _pytree as pytree

UNKNOWN = object()
_METADATA = frozenset({"dtype", "device", "is_floating_point", "is_complex"})
_LOGIC = {
    operator.eq: operator.eq,
    operator.ne: operator.ne,
    operator.not_: operator.not_,
    operator.contains: operator.contains,
    operator.is_: operator.is_,
    operator.is_not: operator.is_not,
}


class MetadataOracle:
    """The value of a dtype/device condition node, from a run of the graph so far."""

    def __init__(self, root: nn.Module, inputs: tuple) -> None:
        self.root = root
        self.examples = [
            x.clone() for x in pytree.tree_leaves(inputs) if isinstance(x, torch.Tensor)
        ]
        self.env: dict[fx.Node, Any] = {}

    def condition(self, node: fx.Node) -> Any:
        """The node's value if it depends on dtypes and devices only, else ``UNKNOWN``."""
        if node.op == "call_function" and node.target is getattr:
            tensor, attr = node.args
            if attr not in _METADATA or not isinstance(tensor, fx.Node):
                return UNKNOWN
            value = self._run(tensor)
            return UNKNOWN if value is UNKNOWN else getattr(value, attr)
        if node.op == "call_method" and node.target in ("is_floating_point", "is_complex"):
            value = self._run(node.args[0])
            return UNKNOWN if value is UNKNOWN else getattr(value, node.target)()
        if node.op != "call_function" or node.target not in _LOGIC or node.kwargs:
            return UNKNOWN
        args = [self.condition(a) if isinstance(a, fx.Node) else a for a in node.args]
        if any(a is UNKNOWN for a in args):
            return UNKNOWN
        return _LOGIC[node.target](*args)

    def _run(self, target: fx.Node) -> Any:
        """The value ``target`` has on the example inputs (every node before it run once)."""
        if target in self.env:
            return self.env[target]
        interpreter = fx.Interpreter(self.root, graph=target.graph, garbage_collect_values=False)
        placeholders = iter(self.examples)
        # the tracer's patches (Module.__call__, wrapped functions) are off while the real
        # values run, as torch.fx does for its own eager calls
        with torch.no_grad(), _symbolic_trace._maybe_revert_all_patches():
            for node in target.graph.nodes:
                if node in self.env:
                    continue
                if node.op == "placeholder":
                    self.env[node] = next(placeholders, UNKNOWN)
                    continue
                if any(self.env.get(a) is UNKNOWN for a in node.all_input_nodes):
                    self.env[node] = UNKNOWN
                else:
                    interpreter.env = self.env
                    try:
                        self.env[node] = interpreter.run_node(node)
                    except Exception:  # a node that cannot run here: its condition stays open
                        self.env[node] = UNKNOWN
                if node is target:
                    break
        return self.env.get(target, UNKNOWN)
