"""What defines a training run: ``RunConfig``, the recipe it resolves to, and what resuming may
change.

A run's checkpoint stores its config, and ``--resume`` continues that run. The fields that say
where and how fast it runs (:data:`RUNTIME`) may change; every other one the user gives must
agree with the stored run: a run cannot become another run halfway, since every epoch is seeded
from its seed and its learning rate follows one cosine schedule over all of its epochs.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fxdnat.ir import (
    CHANGE_KINDS,
    DEVICES,
    GRANULARITIES,
    METHODS,
    NAT_WEIGHTS,
    RESOURCES,
    TIES,
    UPDATES,
    Device,
    Granularity,
    Method,
    NatWeights,
    Tie,
    Update,
)

RUNTIME = ("out", "data_dir", "download", "device", "workers", "compile", "channels_last")
"""Fields a resumed run may change: where and how fast it runs, not what it computes."""
# compared as the recipe they resolve to: "--epochs 15" agrees with a run whose recipe has 15
_RECIPE_FIELDS = (
    "recipe",
    "epochs",
    "arch_epochs",
    "warmup_epochs",
    "fade_epochs",
    "batch_size",
    "lr",
    "theta_lr",
    "theta_reach",
    "theta_weight_decay",
    "search_epochs",
    "nat_weights",
)
BUDGET_FADE = 8
"""A budgeted run fades for 1/8 of its architecture stage unless told (``--fade-epochs``): 10 of
the quick recipe's 80 epochs (docs/budgets.md, "The fade")."""
_NAT_FIELDS = {"search_epochs": "search_epochs", "nat_weights": "weight_archs"}
"""RunConfig fields that override the recipe's NAT schedule (``Recipe.nat``), and theirs."""


@dataclass
class RunConfig:
    """Everything that defines a run; stored in its checkpoint. None means "the recipe's"."""

    spec: str
    out: str
    data: str = "digits"  # an imagefolder: path is stored absolute
    data_dir: str | None = None  # stored absolute
    download: bool = False
    recipe: str | None = None  # default: the zoo model's, else "paper"
    method: Method = "dnat"  # "original": untouched; "random": the control; "nat": the baseline
    changes: str | None = None  # method "random": how many edges change, "identity=2,none=1"
    budget: str | None = None  # "flops=0.7": the emitted network's cost, a fraction of the original
    tie: Tie = "cell"
    granularity: Granularity = "branch"
    arch_update: Update = "alternate"
    epochs: int | None = None
    arch_epochs: int | None = None
    warmup_epochs: int | None = None
    fade_epochs: int | None = None  # default: 0, or an eighth of the architecture stage at a budget
    batch_size: int | None = None
    lr: float | None = None
    theta_lr: float | None = None
    theta_reach: float | None = None
    theta_weight_decay: float | None = None
    search_epochs: int | None = None  # method "nat": epochs of NAT's search
    nat_weights: NatWeights | None = None  # method "nat": what the supernet's weights train on
    seed: int = 0
    deterministic: bool = False
    device: Device = "auto"
    amp: bool | None = None  # default: bf16 autocast on CUDA
    channels_last: bool | None = None  # default: on CUDA
    compile: bool = False
    workers: int = 0
    limit: int | None = None  # use only the first N examples of each split
    pretrained: bool = False

    def __post_init__(self) -> None:
        from fxdnat.data import resolve_name  # lazy, as every import of torch here (--help)

        for name, value, allowed in (
            ("method", self.method, METHODS),
            ("arch_update", self.arch_update, UPDATES),
            ("tie", self.tie, TIES),
            ("granularity", self.granularity, GRANULARITIES),
            ("device", self.device, DEVICES),
            ("nat_weights", self.nat_weights or NAT_WEIGHTS[0], NAT_WEIGHTS),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; expected one of {allowed}")
        if self.changes is not None:  # checked against the method once it is known
            self.changes = format_changes(parse_changes(self.changes))  # (a resume may omit it)
        if self.budget is not None:
            self.budget = format_budget(parse_budget(self.budget))
        # the checkpoint must find the data from any working folder (`fxdnat eval` elsewhere)
        self.data = resolve_name(self.data)
        if self.data_dir is not None:
            self.data_dir = str(Path(self.data_dir).expanduser().resolve())


def resolve_recipe(c: RunConfig):
    """The recipe ``c`` trains with: its own or the model's, with ``c``'s overrides."""
    from fxdnat import zoo  # lazy: torch (this module serves `fxdnat --help`)
    from fxdnat.specs import parse_spec

    source, name = parse_spec(c.spec)
    # the paper's recipe trains image classifiers; a language model of another source (hf:)
    # trains with the quick recipe's language-model override unless told otherwise
    text = c.data.partition(":")[0] == "text"
    default = (
        zoo.model_info(name).default_recipe if source == "zoo" else "quick" if text else "paper"
    )
    recipe = zoo.get_recipe(
        c.recipe or default, model=c.spec if source == "zoo" else None, dataset=c.data
    )
    overrides = {
        k: v
        for k, v in (
            ("epochs", c.epochs),
            ("arch_epochs", c.arch_epochs),
            ("warmup_epochs", c.warmup_epochs),
            ("fade_epochs", c.fade_epochs),
            ("batch_size", c.batch_size),
            ("lr", c.lr),
            ("theta_lr", c.theta_lr),
            ("theta_reach", c.theta_reach),
            ("theta_weight_decay", c.theta_weight_decay),
        )
        if v is not None
    }
    if "epochs" in overrides and "arch_epochs" not in overrides:
        overrides["arch_epochs"] = min(recipe.arch_epochs, overrides["epochs"])
    if c.method in ("original", "nat"):  # no architecture stage: no θ, no warm-up before it
        overrides["arch_epochs"] = overrides["warmup_epochs"] = 0  # (NAT's search is apart)
        overrides["fade_epochs"] = 0
    nat = {theirs: getattr(c, mine) for mine, theirs in _NAT_FIELDS.items()}
    if "epochs" in overrides and nat["search_epochs"] is None:  # as --epochs caps DNAT's stage
        nat["search_epochs"] = min(recipe.nat.search_epochs, overrides["epochs"])
    if any(v is not None for v in nat.values()):
        overrides["nat"] = dataclasses.replace(
            recipe.nat, **{k: v for k, v in nat.items() if v is not None}
        )
    if c.theta_lr is not None and c.theta_reach is not None:
        raise ValueError(
            "give θ's learning rate (--theta-lr) or its reach (--theta-reach, which sets the lr "
            "to REACH / T), not both"
        )
    if "warmup_epochs" not in overrides:  # a shorter stage keeps at least one θ epoch
        arch = overrides.get("arch_epochs", recipe.arch_epochs)
        overrides["warmup_epochs"] = min(recipe.warmup_epochs, max(arch - 1, 0))
    if "fade_epochs" not in overrides and c.budget is not None:
        # a budget removes candidates θ still weighs (and prune / random remove branches of the
        # trained original): fading them out keeps finalize from breaking the trained network
        arch = overrides.get("arch_epochs", recipe.arch_epochs)
        room = max(arch - overrides["warmup_epochs"] - 1, 0)
        overrides["fade_epochs"] = min(arch // BUDGET_FADE, room)
    if c.theta_lr is not None:  # an explicit lr is taken as it is
        overrides["theta_reach"] = None
    return dataclasses.replace(recipe, **overrides)


def parse_changes(text: str) -> dict[str, int]:
    """``"identity=2,none=1"`` → ``{"identity": 2, "none": 1}``; ValueError naming the part."""
    counts: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, sep, number = part.partition("=")
        if not sep or kind not in CHANGE_KINDS or not number.isdigit():
            raise ValueError(
                f"--changes: cannot read {part!r}; expected KIND=COUNT with KIND one of "
                f"{', '.join(CHANGE_KINDS)} (a branch becoming the identity, a branch removed, "
                "a skip removed, an op becoming the identity), e.g. identity=2,skip-none=1"
            )
        if kind in counts:
            raise ValueError(f"--changes: {kind} is given twice; give each kind once")
        counts[kind] = int(number)
    return counts


def parse_budget(text: str) -> dict[str, float]:
    """``"flops=0.7,params=0.5"`` → ``{"flops": 0.7, "params": 0.5}``: each resource's bound as a
    fraction of the original network's cost, in (0, 1]. ValueError naming the part."""
    budget: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        resource, sep, number = part.partition("=")
        resource = resource.strip()
        try:
            fraction = float(number) if sep else math.nan
        except ValueError:
            fraction = math.nan
        if resource not in RESOURCES or not 0 < fraction <= 1:
            raise ValueError(
                f"--budget: cannot read {part!r}; expected RESOURCE=FRACTION with RESOURCE one of "
                f"{', '.join(RESOURCES)} and FRACTION in (0, 1] of the original network's cost, "
                "e.g. flops=0.7"
            )
        if resource in budget:
            raise ValueError(f"--budget: {resource} is given twice; give each resource once")
        budget[resource] = fraction
    if not budget:
        raise ValueError("--budget is empty; give RESOURCE=FRACTION, e.g. flops=0.7")
    return budget


def format_budget(budget: dict[str, float]) -> str:
    """The canonical string of ``budget``: resources in RESOURCES order, fractions as given."""
    return ",".join(f"{r}={budget[r]:g}" for r in RESOURCES if r in budget)


def check_method(config: RunConfig) -> None:
    """``changes`` belong to the random control and similarity removal, NAT's options to NAT, a
    budget to the methods that emit a transformed network by deciding at the stage's end (dnat,
    random, prune, similarity); prune needs one, similarity one or changes. Refused
    otherwise."""
    if config.budget is not None and config.method not in ("dnat", "random", "prune", "similarity"):
        raise ValueError(
            f"--budget is for --method dnat, random, prune or similarity; this run's method is "
            f"{config.method} (NAT's search has no cost term here)"
        )
    if config.method == "prune" and config.budget is None:
        raise ValueError(
            "--method prune removes the least-contributing branches until the network fits a "
            "budget; give one, e.g. --budget flops=0.6"
        )
    if config.method == "similarity" and config.budget is None and config.changes is None:
        raise ValueError(
            "--method similarity removes the branches whose output is most like their input "
            "until the network fits a budget, or makes as many changes as a DNAT run; give "
            "--budget flops=0.6 or --changes none=4 (a DNAT run's `changes`)"
        )
    if config.budget is not None and config.changes:
        raise ValueError(
            "give --changes (how many edges change) or --budget (what the network may cost), "
            "not both"
        )
    if config.method not in ("random", "similarity") and config.changes:
        raise ValueError(
            f"--changes is for --method random or similarity only; this run's method is "
            f"{config.method}"
        )
    if config.method in ("original", "nat") and config.fade_epochs:
        raise ValueError(
            f"--fade-epochs fades out what finalize drops at the architecture stage's end; "
            f"--method {config.method} has no such stage"
        )
    for name in _NAT_FIELDS:
        if config.method != "nat" and getattr(config, name) is not None:
            raise ValueError(
                f"{flag(name)} is for --method nat (the NAT baseline) only; this run's method "
                f"is {config.method}"
            )


def format_changes(counts: dict[str, int]) -> str:
    """The canonical string of ``counts``: kinds in CHANGE_KINDS order, zeros left out."""
    return ",".join(f"{k}={counts[k]}" for k in CHANGE_KINDS if counts.get(k))


def resumed_config(
    stored: dict[str, Any], given: RunConfig, typed: Collection[str] | None = None
) -> RunConfig:
    """The config a resumed run goes on with: the stored run's, with ``given``'s RUNTIME fields.

    ``typed`` names the fields of ``given`` that the user set (None: every field, as a library
    caller or ``fxdnat repro`` passes a whole config). Any of them outside RUNTIME that differs
    from the stored run is refused, each difference named.
    """
    kept = stored_config(stored)
    typed = {f.name for f in dataclasses.fields(RunConfig)} if typed is None else set(typed)
    asked = dataclasses.replace(kept, **{n: getattr(given, n) for n in typed - set(RUNTIME)})
    differences = _differences(kept, asked, typed)
    if differences:
        extended = {"epochs", "arch_epochs"} & {name for name, _ in differences}
        why = (
            ". A run cannot be extended: its learning rate follows one cosine schedule over all "
            "of its epochs"
        )
        raise ValueError(
            f"--resume: {given.out} holds another run than the one asked for: "
            f"{', '.join(text for _, text in differences)}; to continue that run drop what "
            f"differs, for a new run choose another --out{why if extended else ''}"
        )
    runtime = {n: getattr(given, n) for n in RUNTIME if n in typed or n == "out"}
    return dataclasses.replace(kept, **runtime)


def _differences(kept: RunConfig, asked: RunConfig, typed: set[str]) -> list[tuple[str, str]]:
    """(field, "--option VALUE (the run's: VALUE)") for every typed field where ``asked``
    differs from ``kept``."""
    from fxdnat.specs import parse_spec  # lazy: torch

    found = []
    for field in dataclasses.fields(RunConfig):
        name = field.name
        if name not in typed or name in RUNTIME or name in _RECIPE_FIELDS:
            continue
        mine, theirs = getattr(asked, name), getattr(kept, name)
        same = parse_spec(mine) == parse_spec(theirs) if name == "spec" else mine == theirs
        if not same:
            found.append(_difference(name, mine, theirs))
    mine_r, theirs_r = resolve_recipe(asked), resolve_recipe(kept)
    for name in _RECIPE_FIELDS:
        mine, theirs = _recipe_value(mine_r, name), _recipe_value(theirs_r, name)
        if name in typed and mine != theirs:
            found.append(_difference(name, mine, theirs))
    return found


def _recipe_value(recipe: Any, name: str) -> Any:
    """The value of the RunConfig field ``name`` in a resolved recipe."""
    if name in _NAT_FIELDS:
        return getattr(recipe.nat, _NAT_FIELDS[name])
    return getattr(recipe, "name" if name == "recipe" else name)


def _difference(name: str, mine: Any, theirs: Any) -> tuple[str, str]:
    def shown(value: Any) -> str:
        return "default" if value is None else str(value)

    option = "SPEC" if name == "spec" else flag(name)
    return name, f"{option} {shown(mine)} (the run's: {shown(theirs)})"


def flag(name: str) -> str:
    """The command-line option that sets the RunConfig field ``name``."""
    return "--" + name.replace("_", "-")


def stored_config(stored: dict[str, Any]) -> RunConfig:
    """The RunConfig a checkpoint holds, each field of the type RunConfig declares."""
    from fxdnat.checkpoint import CheckpointError  # lazy: torch
    from fxdnat.specs import same_spec

    config = stored.get("config")
    hints = typing.get_type_hints(RunConfig)
    if type(config) is not dict:
        raise CheckpointError(f"the checkpoint's run config is {config!r}, not a mapping")
    unknown = sorted(set(config) - set(hints), key=str)
    if unknown:
        raise CheckpointError(
            f"the checkpoint's run config has fields this fxdnat does not know: "
            f"{', '.join(map(str, unknown))}; was it written by another version of fxdnat?"
        )
    for name, value in config.items():
        if not _fits(value, hints[name]):
            raise CheckpointError(
                f"the checkpoint's run config has {name}={value!r}; expected {hints[name]}"
            )
    kept = RunConfig(**config)
    model = stored.get("model")
    built = model.get("spec") if type(model) is dict else None
    # the typed spec vouches for the model only if the run config and the model name the same
    if type(built) is not str or not same_spec(kept.spec, built):
        raise CheckpointError(
            f"the checkpoint's run config names {kept.spec} but its model is {built}; "
            "was it written by fxdnat?"
        )
    return kept


def _fits(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:  # a vocabulary of fxdnat.ir
        return type(value) is str and value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # X | None
        return any(_fits(value, option) for option in typing.get_args(hint))
    if type(value) is int:  # an int is no bool, but may stand for a float
        return hint in (int, float)
    return type(value) is hint or (value is None and hint is type(None))
