"""The checkpoint format: plain tensors and Python values, written atomically, loaded safely.

A checkpoint never pickles a module or code. It stores how to rebuild the network — the model
spec, the trace settings, the edges, the decisions, finalize's scale and θ — and the tensors;
loading replays build → trace → discover → gate (→ finalize), checks that the edges are the
ones stored, and loads the weights. ``torch.load(weights_only=True)`` can read every
checkpoint. With ``finalize_scale="keep"`` the graph holds θ's coefficients as constants, so the
replay finalizes at the θ finalize saw; a checkpoint without the field predates it: "one".

A checkpoint is data from whoever wrote it: loading one never imports or calls anything the
caller did not name (docs/training.md, "What loading a checkpoint can do"). Every value must be
a tensor or a plain value; a ``module:`` spec, or model arguments that are not plain values, are
built only when the caller typed the same spec or passed ``trust_code=True``.
"""

from __future__ import annotations

import pickle
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from fxdnat import tasks
from fxdnat._files import atomic_file
from fxdnat.frontend import trace
from fxdnat.ir import CHOICES, GRANULARITIES, SCALES, TIES, Edge, check_decisions
from fxdnat.passes import decide, discover, finalize, gate
from fxdnat.specs import BuiltModel, build_model, check_untrusted, same_spec

FORMAT = "fxdnat-checkpoint"
VERSION = 1
STAGES = ("search", "arch", "net", "done")


class CheckpointError(ValueError):
    """A file that is not a readable fxdnat checkpoint, or one that does not match its model."""


def save(path: str | Path, data: dict[str, Any]) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, then rename.

    A crash at any moment leaves either the previous checkpoint or the new one, never a torn
    file.
    """
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, **data}
    with atomic_file(path) as f:
        torch.save(payload, f)
    return path


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no code runs); validate its header."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))  # weights_only refused a class/function
        if not found:
            raise _unreadable(path, exc) from exc
        raise CheckpointError(
            f"{path} refers to the Python object {found[1]}; {_ONLY_PLAIN}"
        ) from exc
    except Exception as exc:  # truncated zip, foreign pickle, ...: all unreadable to us
        raise _unreadable(path, exc) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an fxdnat checkpoint (no '{FORMAT}' header)")
    if data.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {data.get('version')}; this fxdnat reads "
            f"version {VERSION}"
        )
    check_plain(data, str(path))
    return data


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    # torch's weights_only message opens with advice to load the file unsafely: keep its cause
    text = str(exc).split("Check the documentation", 1)[0].rsplit("WeightsUnpickler error:")[-1]
    if text.startswith("Weights only load failed"):
        text = text.partition("\n")[2] or text
    reason = " ".join(text.split()).split(". ")[0][:200]  # the first sentence says what broke
    detail = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
    return CheckpointError(f"{path} is not a readable fxdnat checkpoint ({detail})")


# exact types: a subclass that a process allowlisted for weights_only may behave as it likes
_MAPPINGS = (dict, OrderedDict)
_VALUES = (bool, int, float, str, type(None), torch.Tensor, nn.Parameter)


def check_plain(data: Any, origin: str = "the checkpoint") -> None:
    """Refuse any value that is not a tensor, a plain value or a container of them, at any depth.

    ``weights_only`` already refuses classes, unless the process allowlisted some of its own
    (``torch.serialization.add_safe_globals``): an object of one is still nothing a checkpoint
    holds."""
    todo = [("", data)]
    while todo:  # a stack, not recursion: a crafted file may nest deeper than Python's limit
        where, value = todo.pop()
        if type(value) in _MAPPINGS:
            for key, item in value.items():
                if type(key) not in (str, int):
                    raise CheckpointError(
                        f"{origin}: {where or 'the top level'} has a key of "
                        f"type {type(key).__name__}; {_ONLY_PLAIN}"
                    )
                todo.append((f"{where}.{key}" if where else str(key), item))
        elif type(value) in (list, tuple):
            todo.extend((f"{where}[{i}]", item) for i, item in enumerate(value))
        elif type(value) not in _VALUES:
            raise CheckpointError(
                f"{origin}: field {where} holds an object of type {type(value).__name__}; "
                f"{_ONLY_PLAIN}"
            )


_ONLY_PLAIN = "a checkpoint holds only tensors and plain values, so this file is refused"


@dataclass
class Restored:
    """A network rebuilt from a checkpoint, and what was stored with it."""

    module: fx.GraphModule  # the gated module (stage "arch") or the final one
    traced: fx.GraphModule  # the original network, traced
    edges: list[Edge]
    decisions: dict[str, str] | None
    data: dict[str, Any]
    # the gated module's fxdnat.Architecture: θ's rows and groups (its θ is the stored one only
    # while `module` is the gated module; the stored history is in data); None without edges
    arch: Any = None

    def final(self) -> tuple[fx.GraphModule, dict[str, str], bool]:
        """The clean network, its decisions, and whether they were made now: a checkpoint of
        the architecture stage is finalized on the choices its θ prefers at this point (in the
        fade before finalize, on the run's decisions)."""
        if self.decisions is not None or not self.edges:
            return self.module, self.decisions or {}, False
        fade = (self.data.get("state") or {}).get("fade")
        if type(fade) is dict and type(fade.get("decisions")) is dict:  # decided, fading out
            decisions = check_decisions(self.edges, fade["decisions"])
        else:
            decisions = decide(self.module)
        scale = self.data.get("finalize_scale", "one")
        return finalize(self.module, decisions, scale=scale), decisions, True


def build_traced(
    model: dict[str, Any], *, pretrained: bool = False
) -> tuple[BuiltModel, fx.GraphModule]:
    """Build the network a model section names and trace it: what a new run does, and what
    loading a checkpoint replays. ``model`` holds ``spec``, the task's sizes (``num_classes``
    and ``input_size``; for ``task`` "causal-lm", ``vocab_size`` and ``context``: see
    fxdnat.tasks), ``kwargs`` and, for a stored trace, ``leaves`` (the module paths the tracer
    kept opaque). Returns the built model (its spec and sizes as resolved) and the traced
    GraphModule, traced on one example of the task (an image (1, 3, S, S), or (1, context)
    token ids)."""
    task = tasks.from_model(model)
    tasks.check_model(task, model["spec"])
    built = build_model(
        model["spec"], pretrained=pretrained, **task.build_arguments(), **model["kwargs"]
    )
    example = task.resolved(built).example()
    return built, trace(built.model, example, leaves=model.get("leaves", ()))


def restore(
    data: dict[str, Any], *, strict: bool = True, trust_code: bool = False, spec: str | None = None
) -> Restored:
    """Rebuild the stored network from its spec and load its weights.

    Nothing the checkpoint names is imported or called unless the caller names it: a
    ``module:`` spec, or model arguments that are not plain values, are built only when ``spec``
    (the spec the caller typed) is the stored one or with ``trust_code=True``; a registry name
    is looked up before anything is built.
    """
    model_cfg, stored = _checked(data)
    if not (trust_code or same_spec(spec, model_cfg["spec"])):
        check_untrusted(model_cfg["spec"], model_cfg["kwargs"], origin="the checkpoint")
    _, traced = build_traced(model_cfg)
    decisions = data.get("decisions")
    arch = None
    if not stored:  # the model was trained as it is ("original")
        module = traced
    else:
        edges = discover(traced, data["granularity"])
        if edges != stored:
            raise CheckpointError(
                f"the edges of {model_cfg['spec']} no longer match the checkpoint's "
                f"({len(edges)} found, {len(stored)} stored); was it written by another version "
                "of the model or of fxdnat?"
            )
        module = gate(traced, edges, tie=data["tie"])
        arch = module.arch
        if decisions is not None:
            scale = data.get("finalize_scale", "one")
            if scale == "keep":  # the coefficients are literals of the graph: θ as finalize saw it
                _set_theta(arch, _finalize_theta(data))
            # what was trained, NAT's dead joins included (DNAT's decisions never have one)
            module = finalize(module, decisions, scale=scale, allow_dead=True)
    try:
        module.load_state_dict(data["model_state"], strict=strict)
    except RuntimeError as exc:
        raise CheckpointError(f"weights do not fit the rebuilt network: {exc}") from exc
    return Restored(module, traced, stored, decisions, data, arch)


def _finalize_theta(data: dict[str, Any]) -> torch.Tensor | None:
    """θ when the network was finalized: the stored θ, else (the engine stores the final
    module's, which has none) the last of the architecture stage's history, taken right before
    finalize; None where no architecture epoch ran (θ was still where gate starts it)."""
    if data.get("theta") is not None:
        return data["theta"]
    history = data.get("theta_history") or []
    return history[-1] if history else None


def _set_theta(arch: Any, theta: torch.Tensor | None) -> None:
    if theta is None:
        return
    if theta.shape != arch.theta.shape:
        raise CheckpointError(
            f"the checkpoint's θ has shape {tuple(theta.shape)} but its edges make "
            f"{tuple(arch.theta.shape)}; was it written by another version of fxdnat?"
        )
    with torch.no_grad():
        arch.theta.copy_(theta)


def _checked(data: dict[str, Any]) -> tuple[dict[str, Any], list[Edge]]:
    """The model section (``kwargs`` and ``leaves`` filled in) and the edges, once every field
    that reaches a builder, the tracer or a pass has the shape fxdnat writes."""
    check_plain(data)
    model = data.get("model")
    _expect(type(model) is dict, "model", "a section with the model's spec")
    model = {"kwargs": {}, "leaves": [], **model}
    _expect(type(model.get("spec")) is str, "model.spec", "a model spec string")
    task = model.get("task", "classification")
    _expect(task in tasks.TASKS, "model.task", " or ".join(tasks.TASKS))
    for key in tasks.task_class(task).fields:
        value = model.get(key)
        _expect(type(value) is int and value >= 1, f"model.{key}", "a positive integer")
    _expect(type(model["kwargs"]) is dict, "model.kwargs", "a mapping of argument names")
    leaves = model["leaves"]
    _expect(
        type(leaves) is list and all(type(x) is str for x in leaves),
        "model.leaves",
        "a list of module paths",
    )
    edges = data.get("edges")
    _expect(type(edges) is list and all(type(e) is dict for e in edges), "edges", "a list")
    try:
        stored = [Edge.from_dict(e) for e in edges]
    except (TypeError, KeyError) as exc:
        raise CheckpointError(f"the checkpoint's edges are not fxdnat edges ({exc})") from exc
    if stored:
        _expect(data.get("granularity") in GRANULARITIES, "granularity", " or ".join(GRANULARITIES))
        _expect(data.get("tie") in TIES, "tie", " or ".join(TIES))
    decisions = data.get("decisions")
    _expect(
        decisions is None
        or (type(decisions) is dict and all(c in CHOICES for c in decisions.values())),
        "decisions",
        f"a choice of {', '.join(CHOICES)} per edge",
    )
    _check_finalize_fields(data)
    _expect(type(data.get("model_state")) in _MAPPINGS, "model_state", "a state dict")
    return model, stored


def _check_finalize_fields(data: dict[str, Any]) -> None:
    """What the replay of finalize reads: its scale, and θ."""
    scale = data.get("finalize_scale", "one")  # written since finalize took a scale
    _expect(type(scale) is str and scale in SCALES, "finalize_scale", " or ".join(SCALES))
    theta, history = data.get("theta"), data.get("theta_history", [])
    _expect(theta is None or _is_theta(theta), "theta", "a (rows, 3) tensor")
    _expect(
        type(history) is list and all(_is_theta(t) for t in history),
        "theta_history",
        "a list of (rows, 3) tensors",
    )


def _is_theta(value: Any) -> bool:
    return (
        isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and value.dim() == 2
        and value.shape[1] == len(CHOICES)
    )


def _expect(ok: bool, field: str, expected: str) -> None:
    if not ok:
        raise CheckpointError(
            f"the checkpoint's field {field} is not {expected} as fxdnat writes it; "
            "was the file written by fxdnat?"
        )


def load_network(path: str | Path, *, trust_code: bool = False) -> tuple[fx.GraphModule, dict]:
    """The network stored in a checkpoint (final, or gated if not yet finalized), in eval mode,
    and the checkpoint's data.

    A checkpoint whose model is built by code (a ``module:`` spec, arguments that are not plain
    values) is refused unless ``trust_code``: loading a file never runs code you did not name.

    Raises:
        CheckpointError: not a readable fxdnat checkpoint, or one that does not fit its model.
    """
    data = load(path)
    return restore(data, trust_code=trust_code).module.eval(), data
