"""facts: run a traced module once and record, per node, its shapes and what it did to memory.

Like torch's ``ShapeProp`` it writes ``tensor_meta`` (shapes, dtypes); it also writes which
arguments each result shares storage with and which arguments each call wrote
(:data:`~fxdnat.frontend.memory.ALIASES`, :data:`~fxdnat.frontend.memory.WRITES`), found by
comparing storages and version counters around the call. The run is in eval mode, under
``no_grad``; an opaque leaf (one that is not a torch.nn layer) is also called in train mode on
copies of its arguments, since a leaf that depends on the mode may write only in training. Callers
keep the model's state (:mod:`fxdnat.frontend.state`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn
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
            tensors = _tensor_slots(args, kwargs)
            versions = [_version(t) for _, t in tensors]
            try:
                result = getattr(self, n.op)(n.target, args, kwargs)
            except Exception as exc:
                raise FactsError(n, exc) from exc
        _record_meta(n, result)
        if n.op not in ("placeholder", "get_attr", "output"):
            aliases, writes = _effects(tensors, versions, result)
            if n.op == "call_module" and _opaque(self.module.get_submodule(n.target)):
                more = _train_mode_effects(self.module.get_submodule(n.target), args, kwargs)
                aliases, writes = aliases | more[0], writes | more[1]
            n.meta[ALIASES] = tuple(sorted(aliases, key=str))
            n.meta[WRITES] = tuple(sorted(writes, key=str))
        return result


def _tensor_slots(args: tuple, kwargs: dict) -> list[tuple[int | str, torch.Tensor]]:
    slots = [*enumerate(args), *kwargs.items()]
    return [(slot, v) for slot, v in slots if isinstance(v, torch.Tensor)]


def _record_meta(n: fx.Node, result: Any) -> None:
    """Shapes and dtypes, as torch's ShapeProp records them."""
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


def _effects(tensors: list, versions: list, result: Any) -> tuple[set, set]:
    """The argument slots the result shares storage with, and those the call wrote."""
    out = {_storage(t) for t in pytree.tree_leaves(result) if isinstance(t, torch.Tensor)}
    out.discard(None)
    aliases = {slot for slot, t in tensors if _storage(t) in out}
    writes = {
        slot for (slot, t), before in zip(tensors, versions, strict=True) if _version(t) != before
    }
    return aliases, writes


def _opaque(module: nn.Module) -> bool:
    """A leaf whose code fxdnat has not seen: not one of torch.nn's own layers."""
    return not type(module).__module__.startswith("torch.nn")


def _train_mode_effects(module: nn.Module, args: tuple, kwargs: dict) -> tuple[set, set]:
    """The same facts for an opaque leaf called in train mode on copies of its arguments: a
    leaf made opaque because it depends on the mode may write its input in train mode only."""
    args, kwargs = pytree.tree_map(
        lambda v: v.clone() if isinstance(v, torch.Tensor) else v, (args, kwargs)
    )
    tensors = _tensor_slots(args, kwargs)
    versions = [_version(t) for _, t in tensors]
    modes = {m: m.training for m in module.modules()}
    module.train()
    try:
        result = module(*args, **kwargs)
    except Exception:  # it does not run in train mode on these inputs (BatchNorm on one value)
        return set(), set()
    finally:
        for m, training in modes.items():
            m.training = training
    return _effects(tensors, versions, result)


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
