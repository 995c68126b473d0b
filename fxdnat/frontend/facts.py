"""facts: run a traced module once and record, per node, its shapes and what it did to memory.

Like torch's ``ShapeProp`` it writes ``tensor_meta`` (shapes, dtypes); it also writes which
arguments each result shares storage with and which arguments each call wrote
(:data:`~fxdnat.frontend.memory.ALIASES`, :data:`~fxdnat.frontend.memory.WRITES`), found by
comparing storages and version counters around the call. The run is in eval mode, under
``no_grad``; callers keep the model's state (:mod:`fxdnat.frontend.state`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import _extract_tensor_metadata
from torch.utils import _pytree as pytree

from fxdnat.frontend.memory import ALIASES, WRITES


class FactsError(RuntimeError):
    """The module failed on a node; ``node`` names it."""

    def __init__(self, node: fx.Node, cause: BaseException) -> None:
        super().__init__(f"{node.format_node()}: {cause}")
        self.node = node
        self.cause = cause


def record_facts(gm: fx.GraphModule, inputs: tuple) -> Any:
    """Run ``gm`` on ``inputs`` in eval mode and write the facts into ``node.meta``.

    Raises:
        FactsError: naming the node where the run failed.
    """
    modes = {m: m.training for m in gm.modules()}
    gm.eval()
    try:
        with torch.no_grad():
            return _Recorder(gm).run(*inputs)
    finally:
        for m, training in modes.items():
            m.training = training


class _Recorder(fx.Interpreter):
    def run_node(self, n: fx.Node) -> Any:
        with self._set_current_node(n):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            slots = [(i, v) for i, v in enumerate(args)] + list(kwargs.items())
            tensors = [(slot, v) for slot, v in slots if isinstance(v, torch.Tensor)]
            versions = [_version(t) for _, t in tensors]
            try:
                result = getattr(self, n.op)(n.target, args, kwargs)
            except Exception as exc:
                raise FactsError(n, exc) from exc
        found = False

        def extract(obj: Any) -> Any:
            nonlocal found
            if isinstance(obj, torch.Tensor):
                found = True
                return _extract_tensor_metadata(obj)
            return obj

        meta = map_aggregate(result, extract)
        if found:
            n.meta["tensor_meta"] = meta
        n.meta["type"] = type(result)
        if n.op not in ("placeholder", "get_attr", "output"):
            out = {_storage(t) for t in pytree.tree_leaves(result) if isinstance(t, torch.Tensor)}
            out.discard(None)
            n.meta[ALIASES] = tuple(slot for slot, t in tensors if _storage(t) in out)
            n.meta[WRITES] = tuple(
                slot
                for (slot, t), before in zip(tensors, versions, strict=True)
                if _version(t) != before
            )
        return result


def _storage(t: torch.Tensor) -> tuple | None:
    """Identifies the memory behind ``t`` (None where it has none to share)."""
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse, nested, ...
        return None
    return (storage.data_ptr(), t.device) if storage.nbytes() else None


def _version(t: torch.Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # inference tensors have no version counter
        return None
