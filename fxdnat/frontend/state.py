"""Keep a model exactly as it was while fxdnat traces and runs it.

Tracing runs a module's Python code: code that is not traced symbolically runs for real.
``self.bn.num_batches_tracked += 1`` increments the real buffer (FX hands out buffers as plain
tensors), ``self.cache = x`` stores a tracer Proxy on the module, ``torch.randn`` draws from the
global generator, and the eager runs fxdnat makes update BatchNorm statistics. :func:`preserved`
undoes all of that on exit: module attributes, buffers (copied on entry: they are small),
parameters (copied on their first write, so a large model is not copied) and the random number
generators. It also reports which module's code wrote to a tensor the model keeps — a traced
graph would silently drop such a write, so that module must stay opaque.
"""

from __future__ import annotations

import contextlib
import copy
import types
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode


@dataclass
class Writes:
    """Tensors of the model written while :func:`preserved` was active, by the module whose code
    was running (the tracer's innermost module, "" for the root or outside a trace)."""

    modules: dict[str, str] = field(default_factory=dict)  # module path -> tensor name
    numbers: dict[str, str] = field(default_factory=dict)  # module path -> attribute changed


@contextlib.contextmanager
def preserved(*modules: nn.Module, tracer=None) -> Iterator[Writes]:
    """Restore ``modules`` (and their submodules) and the RNG state on exit.

    Args:
        modules: every module whose state must not change.
        tracer: the ``torch.fx.Tracer`` running inside, to attribute writes to its current module.
    """
    attributes = _snapshot(modules)
    rng = _rng_state()
    named = [pair for m in modules for pair in _tensor_attributes(m)]
    tensors = {_key(t): (name, t) for name, t in named if _key(t) is not None}
    versions = {key: t._version for key, (_, t) in tensors.items()}
    # Buffers are copied now and always put back: some kernels write them without saying so
    # in their schema or version counter (native_batch_norm's running statistics).
    buffers = {
        key: t.untyped_storage().clone()
        for key, (_, t) in tensors.items()
        if not isinstance(t, nn.Parameter)
    }
    writes = Writes()
    guard = _CopyOnWrite(tensors, writes, tracer, skip=buffers.keys())
    try:
        with guard:
            yield writes
    finally:
        with torch.no_grad():
            for key, saved in {**buffers, **guard.saved}.items():
                tensors[key][1].untyped_storage().copy_(saved)
        writes.numbers.update(_changed_numbers(modules[0], attributes))
        _restore(attributes)
        _set_rng_state(rng)
        _check_parameters(tensors, versions, guard.saved)


def _tensor_attributes(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters, buffers and plain tensor attributes of ``module`` and its submodules."""
    found = []
    for path, m in module.named_modules(remove_duplicate=False):
        prefix = path + "." if path else ""
        values = [*m._parameters.items(), *m._buffers.items(), *vars(m).items()]
        found += [(prefix + k, v) for k, v in values if isinstance(v, torch.Tensor)]
    return found


_DEPTH = 4  # how far into plain objects and containers below a module's attributes to look


def _snapshot(modules: tuple[nn.Module, ...]) -> list[tuple[nn.Module, dict]]:
    """Each module's attribute dict, and the contents of the containers and plain objects
    reachable from it (a list of logged activations, a meter object, a class-level registry),
    so that a Proxy appended or a counter incremented anywhere there is undone too."""
    saved: list[tuple[object, object]] = []
    seen: set[int] = set()
    for root in modules:
        for m in root.modules():
            if id(m) in seen:
                continue
            seen.add(id(m))
            state = dict(vars(m))
            saved.append((m, state))
            for value in state.values():
                _capture(value, saved, seen, _DEPTH)
            for value in vars(type(m)).values():  # mutable class attributes
                if isinstance(value, (list, dict, set)):
                    _capture(value, saved, seen, _DEPTH)
    return saved


def _capture(value: object, saved: list, seen: set[int], depth: int) -> None:
    if depth < 0 or id(value) in seen or isinstance(value, (torch.Tensor, nn.Module)):
        return
    if isinstance(value, (list, dict, set)):
        contents = copy.copy(value)
        children = list(value.values()) if isinstance(value, dict) else list(value)
    elif _plain_object(value):
        contents = dict(vars(value))
        children = list(contents.values())
    else:
        return
    seen.add(id(value))
    saved.append((value, contents))
    for child in children:
        _capture(child, saved, seen, depth - 1)


def _plain_object(value: object) -> bool:
    """An instance of a user class with attributes (not a type, function or module)."""
    return (
        hasattr(value, "__dict__")
        and not isinstance(value, (type, types.FunctionType, types.MethodType, types.ModuleType))
        and not callable(value)
    )


def _changed_numbers(root: nn.Module, saved: list[tuple[nn.Module, dict]]) -> dict[str, str]:
    """Modules whose number or flag attributes changed (a step counter, an annealed
    temperature): their forward would behave differently on the next call."""
    paths = {id(m): path for path, m in root.named_modules(remove_duplicate=False)}
    changed = {}
    for m, state in saved:
        if not isinstance(m, nn.Module):
            continue
        for name, before in state.items():
            now = vars(m).get(name, before)
            if isinstance(before, (int, float)) and name != "training" and now != before:
                changed.setdefault(paths.get(id(m), "?"), f"{name} ({before!r} -> {now!r})")
    return changed


def _restore(saved: list[tuple[object, object]]) -> None:
    """Put every captured object's contents back, in place: others may hold the objects
    (a module's ``_modules`` dict, a registry list)."""
    for obj, contents in saved:
        if isinstance(obj, nn.Module):
            for name in set(vars(obj)) - set(contents):
                delattr(obj, name)
            for name, value in contents.items():
                object.__setattr__(obj, name, value)
        elif isinstance(obj, list):
            obj[:] = contents
        elif isinstance(obj, (dict, set)):
            obj.clear()
            obj.update(contents)
        else:
            vars(obj).clear()
            vars(obj).update(contents)


def _key(t: torch.Tensor) -> tuple | None:
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    return (storage.data_ptr(), t.device) if storage.nbytes() else None


class _CopyOnWrite(TorchDispatchMode):
    """Before the first write to a watched tensor's memory, keep a copy of it to restore."""

    def __init__(self, tensors: dict, writes: Writes, tracer, skip) -> None:
        super().__init__()
        self.tensors, self.writes, self.tracer, self.skip = tensors, writes, tracer, skip
        self.saved: dict[tuple, torch.UntypedStorage] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for i, argument in enumerate(func._schema.arguments):
            if argument.alias_info is None or not argument.alias_info.is_write:
                continue
            value = args[i] if i < len(args) else kwargs.get(argument.name)
            for t in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(t, torch.Tensor):
                    self._before_write(t)
        return func(*args, **kwargs)

    def _before_write(self, t: torch.Tensor) -> None:
        key = _key(t)
        if key not in self.tensors:
            return
        name, watched = self.tensors[key]
        if key not in self.saved and key not in self.skip:
            self.saved[key] = watched.untyped_storage().clone()
        stack = list((getattr(self.tracer, "module_stack", None) or {}).values())
        self.writes.modules.setdefault(stack[-1][0] if stack else "", name)


def _check_parameters(tensors: dict, versions: dict, saved: dict) -> None:
    """A parameter written by a kernel whose schema does not say so could not be put back."""
    for key, (name, t) in tensors.items():
        if isinstance(t, nn.Parameter) and key not in saved and t._version != versions[key]:
            raise RuntimeError(
                f"parameter {name!r} was written while fxdnat ran the model and could not be "
                "restored; please report this model"
            )


def _rng_state() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
