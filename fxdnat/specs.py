"""Model specs: ``zoo:NAME``, ``timm:NAME``, ``torchvision:NAME``, ``hf:NAME`` (fxdnat.hf),
``module:pkg.mod:factory``.

A spec is the string a user types and a checkpoint stores; ``build_model`` turns it into a fresh
``nn.Module`` and the input size it expects, so a run can always be rebuilt from its checkpoint.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

SOURCES = ("zoo", "timm", "torchvision", "hf", "module")

PLAIN_ARGUMENTS = (bool, int, float, str, type(None))
"""Types of keyword argument that a spec from a file (not typed by the user) may carry."""
# timm's and torchvision's constructors load weights through these arguments, from a file or the
# network: taken from a checkpoint they would read or fetch whatever the file names.
WEIGHT_ARGUMENTS = frozenset(
    {
        "pretrained",
        "pretrained_cfg",
        "pretrained_cfg_overlay",
        "checkpoint_path",
        "cache_dir",
        "weights",
        "weights_backbone",
    }
)


DEFAULT_LENGTH = 256  # tokens an hf: model runs at unless told: a CPU step stays short


@dataclass(frozen=True)
class BuiltModel:
    """A built model. For a language model (``hf:``), ``input_size`` is the sequence length
    it runs at and ``num_classes`` its vocabulary; ``vocab_size`` and ``context`` (the longest
    sequence its positions allow) are set for language models only."""

    model: nn.Module
    spec: str
    input_size: int
    num_classes: int
    vocab_size: int | None = None
    context: int | None = None


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``"timm:resnet50"`` into ("timm", "resnet50"); a bare name means the zoo."""
    source, sep, name = spec.partition(":")
    if not sep:
        source, name = "zoo", spec
    if source not in SOURCES:
        raise ValueError(
            f"unknown model source {source!r} in {spec!r}; expected one of "
            + ", ".join(f"{s}:NAME" for s in SOURCES[:4])
            + " or module:package.module:factory"
        )
    if not name:
        raise ValueError(f"model spec {spec!r} names no model; e.g. zoo:resnet20 or timm:resnet50")
    return source, name


def same_spec(a: str | None, b: str) -> bool:
    """Whether two specs name the same model ("resnet20" is "zoo:resnet20")."""
    return a is not None and parse_spec(a) == parse_spec(b)


def check_untrusted(spec: str, kwargs: Mapping[Any, Any], *, origin: str) -> None:
    """Refuse what a spec the user did not type (one read from ``origin``, a file) could do
    beyond building a registered model from plain arguments.

    A ``module:`` spec would import and call code; a registry name is looked up before anything
    is built; keyword arguments must be plain values and must not name weights to load.
    """
    source, name = parse_spec(spec)
    trust = "pass --trust-code if you trust the file's author (trust_code=True in Python)"
    if source == "module":
        raise ValueError(
            f"{origin}'s model is {spec}, which would import and run code from "
            f"{name.rpartition(':')[0]!r}; a file cannot vouch for code, so fxdnat runs it only "
            f"if you ask: {trust}"
        )
    {"zoo": _zoo_name, "timm": _timm_name, "torchvision": _torchvision_name, "hf": _hf_name}[
        source
    ](name)
    for key, value in kwargs.items():
        plain = isinstance(key, str) and type(value) in PLAIN_ARGUMENTS
        if not plain or key in WEIGHT_ARGUMENTS:
            shown = f"{key}={value!r}" if plain else f"{key!r} (a {type(value).__name__})"
            raise ValueError(
                f"{origin} passes {shown} to {spec}; from a file fxdnat takes only plain numbers, "
                "strings and booleans as model arguments, and none that loads weights "
                f"({', '.join(sorted(WEIGHT_ARGUMENTS))}): {trust}"
            )


def build_model(
    spec: str,
    *,
    num_classes: int = 10,
    input_size: int | None = None,
    pretrained: bool = False,
    **kwargs: Any,
) -> BuiltModel:
    """A fresh model for ``spec`` and the square input size it runs at.

    Args:
        spec: see the module docstring.
        num_classes: size of the classifier head (not for ``hf:``: the vocabulary is the
            config's).
        input_size: input side in pixels; default: the model's own (zoo 32, timm's pretrained
            config, torchvision 224). For ``hf:``, the sequence length, at most the context
            (default: the context, at most 256).
        pretrained: load published weights (timm/torchvision/hf; needs the internet once).
        kwargs: passed to the model's constructor (for ``hf:``, config overrides).
    """
    source, name = parse_spec(spec)
    if source == "hf":
        return _hf(name, input_size, pretrained, kwargs)
    builder = {"zoo": _zoo, "timm": _timm, "torchvision": _torchvision, "module": _module}[source]
    model, size = builder(name, num_classes, input_size, pretrained, kwargs)
    return BuiltModel(model, f"{source}:{name}", size, num_classes)


def _hf_name(name: str) -> None:
    from fxdnat import hf  # lazy: transformers is optional and slow to import

    hf.check_name(name)


def _hf(name: str, size: int | None, pretrained: bool, kwargs: dict) -> BuiltModel:
    """An hf: model. A language-model task asks for ``vocab_size`` (its data's vocabulary) and
    ``context`` (its windows' length, the sequence length here): random weights are sized to
    the vocabulary; published ones keep theirs, which must hold the data's tokens."""
    from fxdnat import hf  # lazy: transformers is optional and slow to import

    kwargs = dict(kwargs)
    size = kwargs.pop("context", size)
    wanted = kwargs.pop("vocab_size", None) if pretrained else None
    model, vocab, context = hf.build(name, pretrained=pretrained, kwargs=kwargs)
    if wanted is not None and wanted > vocab:
        raise ValueError(
            f"hf:{name}'s published vocabulary has {vocab} tokens but the data's has {wanted}; "
            "train it on data tokenized for it, or without --pretrained"
        )
    if size is not None and size > context:
        raise ValueError(
            f"hf:{name} takes sequences of at most {context} tokens; pass a length up to that"
        )
    length = size or min(context, DEFAULT_LENGTH)
    return BuiltModel(model, f"hf:{name}", length, vocab, vocab_size=vocab, context=context)


def _zoo_name(name: str) -> None:
    from fxdnat import zoo  # lazy: the zoo's models load only when named

    zoo.model_info(name)  # an unknown name: "unknown zoo model ...; did you mean ..."


def _timm_name(name: str) -> None:
    import timm  # lazy: timm takes seconds to import

    if name not in timm.list_models():
        raise ValueError(f"unknown timm model {name!r}{_close(name, timm.list_models())}")


def _torchvision_name(name: str) -> None:
    import torchvision  # lazy: only for torchvision: specs

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise ValueError(f"unknown torchvision classification model {name!r}{_close(name, names)}")


def _zoo(name: str, num_classes: int, size: int | None, pretrained: bool, kwargs: dict):
    from fxdnat import zoo  # lazy: the zoo's models load only when named

    if pretrained:
        raise ValueError("zoo models have no published weights; drop --pretrained")
    size = size or 32
    return zoo.create_model(name, num_classes=num_classes, input_size=size, **kwargs), size


def _timm(name: str, num_classes: int, size: int | None, pretrained: bool, kwargs: dict):
    _timm_name(name)
    try:
        model = _create_timm(name, num_classes, size, pretrained, kwargs)
    except (OSError, RuntimeError) as exc:
        if pretrained:
            raise ValueError(
                f"cannot download pretrained weights for {name!r} ({exc}); "
                "drop --pretrained or connect to the internet"
            ) from exc
        raise
    default = model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    return model, size or default


def _create_timm(name: str, num_classes: int, size: int | None, pretrained: bool, kwargs: dict):
    import timm  # lazy: timm takes seconds to import

    common = {"pretrained": pretrained, "num_classes": num_classes, **kwargs}
    if size is not None and "img_size" not in kwargs:
        try:  # ViT-like models fix their input size when built
            return timm.create_model(name, img_size=size, **common)
        except TypeError:  # a model without img_size takes any size
            pass
    return timm.create_model(name, **common)


def _torchvision(name: str, num_classes: int, size: int | None, pretrained: bool, kwargs: dict):
    import torchvision  # lazy: only for torchvision: specs

    _torchvision_name(name)
    if pretrained:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        kwargs = {**kwargs, "weights": weights}
        try:
            model = torchvision.models.get_model(name, **kwargs)
        except OSError as exc:
            raise ValueError(
                f"cannot download pretrained weights for {name!r} ({exc}); "
                "drop --pretrained or connect to the internet"
            ) from exc
        if num_classes != len(weights.meta["categories"]):
            raise ValueError(
                f"pretrained {name!r} has {len(weights.meta['categories'])} classes; "
                "pass --num-classes to match"
            )
    else:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    return model, size or (299 if name == "inception_v3" else 224)


def _module(name: str, num_classes: int, size: int | None, pretrained: bool, kwargs: dict):
    path, sep, factory_name = name.rpartition(":")
    if not sep or not path:
        raise ValueError(f"module spec {name!r} must look like module:package.module:factory")
    try:
        factory = getattr(importlib.import_module(path), factory_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {path!r} for spec module:{name} ({exc})") from exc
    except AttributeError as exc:
        raise ValueError(f"module {path!r} has no factory {factory_name!r}") from exc
    if "num_classes" in inspect.signature(factory).parameters:
        kwargs = {**kwargs, "num_classes": num_classes}
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"module:{name} returned {type(model).__name__}, not an nn.Module")
    return model, size or getattr(model, "input_size", 224)


def _close(name: str, names: list[str]) -> str:
    hint = difflib.get_close_matches(name, names, n=3)
    return f"; did you mean {', '.join(repr(h) for h in hint)}?" if hint else ""
