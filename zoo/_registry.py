"""The zoo's model registry: tiny registered entry points, their facts, and `create_model`."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

EntryPoint = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """What the zoo knows about one registered model."""

    name: str
    family: str
    description: str
    reference: str  # URL of the reference implementation the model follows
    params: int  # parameters at 10 classes without auxiliary head, as the reference counts them
    cell_mode: str  # how DNAT's "cell" mode groups this model's edges
    default_recipe: str = "paper"
    input_multiple: int = 1  # input side must be a multiple of this
    min_input_size: int = 1  # smallest input side the model (auxiliary head included) accepts
    # what the model computes (fxdnat.tasks): an image classifier takes num_classes and an
    # input size; a causal LM ("causal-lm") takes vocab_size and context (tokens) instead
    task: str = "classification"


_MODELS: dict[str, tuple[EntryPoint, ModelInfo]] = {}


def register_model(
    *,
    family: str,
    description: str,
    reference: str,
    params: int,
    cell_mode: str,
    default_recipe: str = "paper",
    input_multiple: int = 1,
    min_input_size: int = 1,
    task: str = "classification",
    name: str | None = None,
) -> Callable[[EntryPoint], EntryPoint]:
    """Register the decorated entry point under ``name`` (default: its function name)."""

    def decorator(fn: EntryPoint) -> EntryPoint:
        nonlocal name
        name = name or fn.__name__
        if name in _MODELS:
            raise ValueError(f"zoo model {name!r} is registered twice")
        info = ModelInfo(
            name,
            family,
            description,
            reference,
            params,
            cell_mode,
            default_recipe,
            input_multiple,
            min_input_size,
            task,
        )
        _MODELS[name] = (fn, info)
        return fn

    return decorator


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def model_info(name: str) -> ModelInfo:
    """The facts registered for `name`."""
    return _lookup(name)[1]


def create_model(
    name: str, num_classes: int = 10, input_size: int = 32, **kwargs: Any
) -> nn.Module:
    """Build the zoo model `name` for `num_classes` classes and square inputs of side `input_size`.

    `input_size` is only checked against the model's constraints; no layer depends on it (the
    heads pool adaptively). Extra keyword arguments go to the entry point (e.g. `auxiliary`).
    A language model (task "causal-lm") has no classes and no image: it takes its sizes as
    `vocab_size` and `context` keywords, and `num_classes` and `input_size` are not read.
    """
    fn, info = _lookup(name)
    if info.task != "classification":
        _check_kwargs(fn, info, kwargs)
        return fn(**kwargs)
    _check_positive_int("num_classes", num_classes)
    _check_input_size(info, input_size)
    _check_kwargs(fn, info, kwargs)
    return fn(num_classes=num_classes, **kwargs)


def _lookup(name: str) -> tuple[EntryPoint, ModelInfo]:
    if name not in _MODELS:
        hint = did_you_mean(name, _MODELS)
        raise ValueError(f"unknown zoo model {name!r}{hint} see `fxdnat zoo`")
    return _MODELS[name]


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """The hint "; did you mean 'x'?" naming the closest choice, or ";" when none is close.

    Choices that extend the name win ('resnet2' → 'resnet20', not the equally similar
    'resnet32'), then difflib's similarity, then the shorter and the alphabetically first.
    """
    text = str(name)
    close = difflib.get_close_matches(text, list(choices), n=10, cutoff=0.6)
    if not close:
        return ";"

    def rank(choice: str) -> tuple[bool, float, int, str]:
        ratio = difflib.SequenceMatcher(None, text, choice).ratio()
        return (not choice.startswith(text), -ratio, len(choice), choice)

    return f"; did you mean {min(close, key=rank)!r}?"


def _check_positive_int(what: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")


def _check_input_size(info: ModelInfo, size: object) -> None:
    _check_positive_int("input_size", size)
    if size % info.input_multiple or size < info.min_input_size:
        raise ValueError(
            f"zoo model {info.name!r} needs an input_size that is a multiple of "
            f"{info.input_multiple} and at least {info.min_input_size}, got {size!r}"
        )


def _check_kwargs(fn: EntryPoint, info: ModelInfo, kwargs: dict) -> None:
    accepted = [p for p in inspect.signature(fn).parameters if p != "num_classes"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        known = ", ".join(accepted) or "no other arguments"
        raise TypeError(
            f"zoo model {info.name!r} does not accept {', '.join(map(repr, unknown))}; "
            f"it accepts: {known}"
        )
