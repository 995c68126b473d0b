"""trace: lift any nn.Module to a functional torch.fx GraphModule with shapes and memory facts.

torch.fx traces Python code once, so two things break it: code that cannot run on proxies
(control flow on tensor values, ``len(proxy)``, ...) and code that can but bakes something into
the graph that eager mode recomputes on every call (``if self.training:``, a counter incremented
in place, a tensor drawn at random). Such a submodule becomes a leaf — a single opaque call that
runs eagerly — and tracing retries, innermost module first, so that leaves stay as small as
possible. Then one eager run records shapes and memory facts, in-place calls are rewritten out of
place (:mod:`fxdnat.frontend.functionalize`), and dead code goes. The user's model is never
changed (:mod:`fxdnat.frontend.state`).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import operator
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
from torch import fx, nn

from fxdnat.frontend import dtypes, modes
from fxdnat.frontend.errors import TraceError, describe
from fxdnat.frontend.facts import FactsError, record_facts
from fxdnat.frontend.functionalize import functionalize_
from fxdnat.frontend.inputs import bind, drop_fixed_arguments, unwrap
from fxdnat.frontend.memory import eliminate_dead_code
from fxdnat.frontend.state import Writes, preserved
from fxdnat.ir import META_KEY

log = logging.getLogger(__name__)

_CONSTANT_PREFIX = "_tensor_constant"  # what torch.fx names the tensors a forward creates
_OBJECT_PREFIX = "_object_constant"  # the dataclass objects a forward passes on (see create_arg)


class _NeedsLeaf(Exception):
    """Raised through the tracer when the forward of the module at ``path`` cannot be traced."""

    def __init__(self, path: str, cause: BaseException) -> None:
        super().__init__(path)
        self.path = path
        self.cause = cause


def _timm_notrace() -> tuple[tuple[type, ...], tuple[Callable, ...]]:
    """timm's registries of modules and functions that it keeps opaque to FX."""
    try:
        from timm.layers import _fx as timm_fx  # lazy: timm is optional, and slow to import
    except ImportError:  # timm is optional for the tracer itself
        return (), ()
    return tuple(timm_fx.get_notrace_modules()), tuple(timm_fx.get_notrace_functions())


class _Proxy(fx.Proxy):
    """torch.fx's Proxy, but ``x += y`` and ``x[i] = v`` are recorded as the in-place calls
    they are in eager PyTorch: torch.fx records ``x += y`` as ``x + y``, which changes what a
    reader of x (or of a view of it) sees afterwards, and cannot record ``x[i] = v`` at all.
    functionalize makes them out of place again wherever no one could tell the difference."""

    def __setitem__(self, key: Any, value: Any) -> None:
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})


def _inplace_operator(name: str) -> Callable:
    inplace, plain = getattr(operator, f"__i{name}__"), getattr(operator, f"__{name}__")

    def method(self: _Proxy, other: Any) -> _Proxy:
        # named as torch.fx names the out-of-place call, so node names do not change
        return self.tracer.create_proxy(
            "call_function", inplace, (self, other), {}, name=plain.__name__.strip("_")
        )

    return method


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or"):
    setattr(_Proxy, f"__i{_name}__", _inplace_operator(_name))


class _LeafingTracer(fx.Tracer):
    """An FX tracer with extra leaves, that reports which submodule's forward failed."""

    def __init__(
        self, leaf_types: tuple, leaf_paths: set[str], autowrap: tuple, inputs: tuple
    ) -> None:
        super().__init__(autowrap_functions=autowrap)
        self.leaf_types = leaf_types
        self.leaf_paths = leaf_paths
        self.inputs = inputs

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)

    def create_arg(self, a: Any) -> Any:
        # torch.fx rebuilds a dataclass argument from its fields on every call; a config object
        # that holds no traced value is passed as the object itself, as eager passes it (a
        # constructor that mutates its keyword arguments cannot even be rebuilt)
        if dataclasses.is_dataclass(a) and not isinstance(a, type) and not _holds_proxy(a):
            name = self._objects.get(id(a))
            if name is None:
                name = self.get_fresh_qualname(_OBJECT_PREFIX)
                setattr(self.root, name, a)
                self._objects[id(a)] = name
            return self.create_node("get_attr", name, (), {})
        return super().create_arg(a)

    def to_bool(self, obj: fx.Proxy) -> bool:
        # a branch on dtypes or devices only: taken as eager takes it (fxdnat.frontend.dtypes)
        value = self._oracle.condition(obj.node)
        return super().to_bool(obj) if value is dtypes.UNKNOWN else bool(value)

    def trace(self, root: nn.Module | Callable, concrete_args: dict | None = None) -> fx.Graph:
        self._objects: dict[int, str] = {}
        self._oracle = dtypes.MetadataOracle(root, self.inputs)
        if isinstance(root, nn.Module):
            self._autowrap_search = [*self._autowrap_search, *_forward_modules(root)]
        return super().trace(root, concrete_args)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            module_qualified_name in self.leaf_paths
            or isinstance(m, self.leaf_types)
            or super().is_leaf_module(m, module_qualified_name)
        )

    def call_module(self, m: nn.Module, forward: Callable, args: tuple, kwargs: dict) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except _NeedsLeaf:
            raise
        except Exception as exc:  # the innermost failing module is the one to make a leaf
            raise _NeedsLeaf(self.path_of_module(m), exc) from exc


def _declared_autowrap(model: nn.Module) -> tuple[Callable, ...]:
    """The functions that the model's modules ask to keep as single calls, in their attribute
    ``fxdnat_autowrap`` (a wrapper around a library's model names the library's functions)."""
    found: dict[int, Callable] = {}
    for module in model.modules():
        for function in getattr(module, "fxdnat_autowrap", ()):
            found.setdefault(id(function), function)
    return tuple(found.values())


def _holds_proxy(obj: Any) -> bool:
    return any(isinstance(getattr(obj, f.name, None), fx.Proxy) for f in dataclasses.fields(obj))


def _forward_modules(root: nn.Module) -> list[ModuleType]:
    """The Python modules that define the forwards of ``root``'s submodules, undecorated.

    torch.fx wraps an autowrap function where it finds it in the globals of a forward; a
    decorated forward's globals are the decorator's module, not the one whose code calls the
    function, so the function would be traced through (and fail) instead of kept as one call.
    """
    found: dict[str, ModuleType] = {}
    for module in root.modules():
        forward = inspect.unwrap(type(module).forward)
        name = getattr(forward, "__module__", None)
        if name is not None and name not in found and name in sys.modules:
            found[name] = sys.modules[name]
    return list(found.values())


def trace(
    model: nn.Module,
    example_inputs: Any,
    *,
    leaves: Iterable[str | type] = (),
    autowrap_functions: Sequence[Callable] = (),
    max_leaves: int = 200,
) -> fx.GraphModule:
    """Trace ``model`` into a functional GraphModule whose nodes carry shapes and memory facts.

    Args:
        model: any module; a DataParallel, DistributedDataParallel or ``torch.compile`` wrapper
            is unwrapped.
        example_inputs: a tensor, or a tuple with one value per argument of ``forward``. A
            dict, list or tuple of tensors is traced as structured input; non-tensor values and
            arguments left out (which must have defaults) are fixed at their values. Used to
            record shapes only.
        leaves: extra module paths (``"blocks.3.attn"``) or classes to keep opaque.
        autowrap_functions: extra functions to keep as single calls (like ``torch.fx.wrap``),
            wherever a forward calls them by a global name (a decorated forward too). A
            module may name its own in an attribute ``fxdnat_autowrap`` (a tuple of functions).
        max_leaves: give up after making this many submodules leaves.

    Returns:
        The GraphModule (sharing parameters with ``model``, in ``model``'s train/eval mode). In
        ``gm.meta["fxdnat"]``: ``leaves`` (submodules made opaque, with the reason),
        ``opaque_params`` and ``params`` (parameters inside opaque submodules, and in all).

    Raises:
        TraceError: naming the model, the submodule and the reason, with what to try.
    """
    model = unwrap(model)
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    registry, registry_functions = _timm_notrace()
    # timm keeps these modules opaque for FX's sake. Those without parameterised children (a
    # DropPath whose rate changes after tracing, a padded conv) stay so; inside the others
    # (whole blocks) fxdnat's own leaf rules may do without, which keeps their residual joins
    # visible: they are traced inside and kept opaque only where that is not exact.
    listed = {type(m) for m in model.modules() if isinstance(m, registry)}
    blocks = tuple(sorted((t for t in listed if _holds_blocks(model, t)), key=str))
    search = _Search(
        model=model,
        inputs=inputs,
        concrete=bind(model, inputs),
        autowrap=tuple(autowrap_functions) + registry_functions + _declared_autowrap(model),
        leaf_types=tuple(x for x in leaves if isinstance(x, type))
        + tuple(t for t in listed if t not in blocks),
        leaf_paths={x for x in leaves if isinstance(x, str)},
        max_leaves=max_leaves,
    )
    if not blocks:
        return search.build()
    try:
        gm = search.copy().build()
        if _matches_eager(model, gm, inputs):
            return gm
        why = "traced inside, it does not compute what the eager model does"
    except TraceError as exc:
        why = f"traced inside, {exc}"
    log.info("keeping timm's no-trace modules opaque (%s)", why)
    search.leaf_types += blocks
    search.listed = (blocks, f"timm lists it as not traceable ({why})")
    return search.build()


def _holds_blocks(model: nn.Module, kind: type) -> bool:
    """Instances of ``kind`` in ``model`` have children with parameters of their own."""
    return any(
        any(next(child.parameters(), None) is not None for child in m.children())
        for m in model.modules()
        if type(m) is kind
    )


@dataclass
class _Search:
    """Tracing with the leaves found so far; each retry adds the leaves the last one needed."""

    model: nn.Module
    inputs: tuple
    concrete: dict
    autowrap: tuple
    leaf_types: tuple
    leaf_paths: set[str]
    max_leaves: int
    reasons: dict[str, str] = field(default_factory=dict)
    listed: tuple[tuple[type, ...], str] = ((), "")  # timm's blocks kept opaque, and why

    def copy(self) -> _Search:
        return _Search(**{**vars(self), "leaf_paths": set(self.leaf_paths), "reasons": {}})

    def build(self) -> fx.GraphModule:
        gm, constants = self._trace()
        for path, module in gm.named_modules():  # the containers GraphModule made: same modes
            module.training = self.model.get_submodule(path).training
        gm.graph._tracer_cls = None  # a pickled module must not need fxdnat to load
        gm._tracer_cls = None
        gm.recompile()
        self._facts(gm)
        if functionalize_(gm, constants) + eliminate_dead_code(gm, modules=True, random=True):
            gm.graph.lint()
            gm.recompile()
            self._facts(gm)
        gm.meta[META_KEY] = self._meta()
        for path, reason in self.reasons.items():
            log.info("leaf %s: %s", path, reason)
        return gm

    def _trace(self) -> tuple[fx.GraphModule, frozenset[str]]:
        while True:
            if len(self.reasons) > self.max_leaves:
                raise TraceError(
                    f"gave up tracing {self._name}: over {self.max_leaves} submodules needed "
                    f"to be leaves (first {', '.join(list(self.reasons)[:3])}); raise "
                    "max_leaves or name leaves yourself"
                )
            runs = [self._trace_in_mode(mode) for mode in (True, False)]
            failure = next((r for r in runs if isinstance(r, _NeedsLeaf)), None)
            if failure is not None:
                cause = describe(failure.cause)
                self._add(failure.path, cause, root=(f"cannot be traced ({cause})", _UNTRACEABLE))
                continue
            (train, train_effects), (eval_, eval_effects) = runs
            if self._leaf_side_effects(train_effects, eval_effects):
                continue
            if self._leaf_what_differs(train, eval_):
                continue
            return train, _constants(train)

    def _leaf_side_effects(self, *effects: Writes) -> bool:
        """Modules whose code changed the model's state while tracing become leaves; the
        traced graph would not replay those changes. Returns whether any did."""
        numbers = {p: c for e in effects for p, c in e.numbers.items()}
        tensors = {p: t for e in effects for p, t in e.modules.items()}
        for path, change in numbers.items():
            self._add(
                path,
                f"changes its attribute {change} in forward, which tracing cannot replay",
                root=(
                    f"changes its attribute {change} (a counter or schedule), which a traced "
                    "graph would not",
                    "set that schedule from the training loop instead of in forward",
                ),
            )
        for path, tensor in tensors.items():
            if path not in numbers:
                self._add(
                    path,
                    f"writes {tensor!r} in place, which tracing cannot replay",
                    root=(
                        f"writes the tensor {tensor!r} in place (a counter or running "
                        "statistic), which a traced graph would drop",
                        "move that update into a submodule, which fxdnat then keeps opaque",
                    ),
                )
        return bool(numbers or tensors)

    def _leaf_what_differs(self, train: fx.GraphModule, eval_: fx.GraphModule) -> bool:
        """Modules whose traced form depends on the mode, or that drew a random constant while
        tracing, become leaves; returns whether any did."""
        if modes.merge(train.graph, eval_.graph) is not None:
            modes.hold_flags(train)
            random = modes.random_constants(train, eval_)
            for path in random:
                self._add(
                    path,
                    "draws a random tensor in forward, which tracing would freeze",
                    root=(
                        "draws a random tensor that depends on no input (torch.rand(...)), "
                        "which a traced graph would replay on every call",
                        "draw it from the input (torch.rand_like(x)) or in a submodule",
                    ),
                )
            return bool(random)
        differing = modes.dependent_modules(train.graph, eval_.graph)
        for path in differing:  # none: the traces differ in names only
            self._add(
                path,
                "its traced form depends on train/eval mode",
                root=(
                    "branches on train/eval mode (self.training)",
                    "build the model without that train-only feature (a constructor flag, "
                    "e.g. a drop or noise rate of 0)",
                ),
            )
        return bool(differing)

    def _trace_in_mode(self, training: bool):
        tracer = _LeafingTracer(self.leaf_types, self.leaf_paths, self.autowrap, self.inputs)
        with preserved(self.model, tracer=tracer) as writes:
            self.model.train(training)
            # different draws in the two traces, so that a tensor drawn while tracing shows
            # (see modes.random_constants); `preserved` puts the caller's generator back
            torch.manual_seed(int(training))
            try:
                graph = tracer.trace(self.model, concrete_args=self.concrete or None)
            except _NeedsLeaf as failure:
                return failure
            except TraceError:
                raise
            except Exception as exc:
                reason = f"cannot be traced ({describe(exc)})"
                raise TraceError(_root_failure(self.model, (reason, _UNTRACEABLE))) from exc
            drop_fixed_arguments(graph, self.concrete, given=len(self.inputs))
            gm = fx.GraphModule(tracer.root, graph, class_name=self._name)
        return gm, writes

    def _add(self, path: str, reason: str, root: tuple[str, str]) -> None:
        """Make the module at ``path`` a leaf for ``reason``; ``root`` says the same of the
        model's own forward, which cannot become a leaf, and what to do about it."""
        if path == "":
            raise TraceError(_root_failure(self.model, root))
        if path in self.leaf_paths:  # a leaf that still fails cannot be fixed by leafing it again
            module = type(self.model.get_submodule(path)).__name__
            raise TraceError(
                f"cannot trace {self._name}: submodule '{path}' ({module}) fails even as an "
                f"opaque leaf: {reason}; check that the model runs on the example inputs"
            )
        self.leaf_paths.add(path)
        self.reasons[path] = reason

    def _facts(self, gm: fx.GraphModule) -> None:
        with preserved(self.model, gm):
            try:
                record_facts(gm, _copy(self.inputs))
            except FactsError as exc:
                raise TraceError(_run_failure(self._name, self.inputs, exc)) from exc

    def _meta(self) -> dict:
        opaque = set(self.leaf_paths) | {
            path for path, m in self.model.named_modules() if isinstance(m, self.leaf_types)
        }
        kinds, why = self.listed
        for path, m in self.model.named_modules():
            if isinstance(m, kinds):
                self.reasons.setdefault(path, why)
        return {
            "leaves": dict(self.reasons),
            # GraphModule keeps only the modules it calls, so keep the cell names declared by
            # modules that were traced through (see passes.gate: `fxdnat_cell`).
            "cells": {
                path: m.fxdnat_cell
                for path, m in self.model.named_modules()
                if isinstance(getattr(m, "fxdnat_cell", None), str)
            },
            "input_shapes": [
                tuple(x.shape) if isinstance(x, torch.Tensor) else None for x in self.inputs
            ],
            "opaque_params": _params_inside(self.model, opaque),
            "params": sum(p.numel() for p in self.model.parameters()),
        }

    @property
    def _name(self) -> str:
        return type(self.model).__name__


def _constants(gm: fx.GraphModule) -> frozenset[str]:
    return frozenset(
        n.target
        for n in gm.graph.nodes
        if n.op == "get_attr" and n.target.startswith(_CONSTANT_PREFIX)
    )


def _params_inside(model: nn.Module, paths: set[str]) -> int:
    """Parameters of the modules at ``paths`` (each counted once, nested leaves too)."""
    inside = {id(p) for path in paths for p in model.get_submodule(path).parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) in inside)


def _matches_eager(model: nn.Module, gm: fx.GraphModule, inputs: tuple) -> bool:
    """``gm`` computes what ``model`` does on ``inputs`` in eval mode (within float noise)."""
    with preserved(model, gm), torch.no_grad():
        model.eval()
        gm.eval()
        want = torch.utils._pytree.tree_leaves(model(*_copy(inputs)))
        got = torch.utils._pytree.tree_leaves(gm(*_copy(inputs)))
    return len(want) == len(got) and all(
        not isinstance(w, torch.Tensor)
        or (isinstance(g, torch.Tensor) and w.shape == g.shape and torch.allclose(w, g, 1e-4, 1e-5))
        for w, g in zip(want, got, strict=True)
    )


def _copy(inputs: tuple) -> tuple:
    """The example inputs, for one run: a model may write its inputs in place."""
    return torch.utils._pytree.tree_map(
        lambda v: v.clone() if isinstance(v, torch.Tensor) else v, inputs
    )


_UNTRACEABLE = (
    "make that code traceable (no Python control flow on tensor values, no .item() or int() of "
    "a tensor)"
)


def _root_failure(model: nn.Module, root: tuple[str, str]) -> str:
    """What to say when the model's own forward, which cannot become a leaf, is the problem:
    the reason, the fix, and the child that holds most of the blocks, if there is one."""
    reason, fix = root
    blocks = [
        (name, sum(p.numel() for p in child.parameters()))
        for name, child in model.named_children()
        if next(child.children(), None) is not None  # a container of blocks, not one layer
    ]
    part = max(blocks, key=lambda b: b[1])[0] if blocks else None
    return (
        f"cannot trace {type(model).__name__}: its own forward {reason}; only submodules can "
        f"be made opaque, so {fix}"
        + (
            f", or trace the part that holds its blocks: `fxdnat.trace(model.{part}, ...)`"
            if part
            else ""
        )
    )


def _run_failure(name: str, inputs: tuple, exc: FactsError) -> str:
    where = modes.owner(exc.node) if exc.node.op != "call_module" else exc.node.target
    shapes = [tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__ for x in inputs]
    place = f"in submodule '{where}'" if where else "in its own forward"
    return (
        f"{name} does not run on inputs of shapes {shapes}: {place} at {exc.node.name}: "
        f"{describe(exc.cause)}; check --input-size or the example inputs"
    )
