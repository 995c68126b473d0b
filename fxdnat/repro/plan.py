"""Planning a study: what it runs and how each run is configured, checked before anything
trains. A study (``ReproConfig``) is every spec × method × seed; each is a ``Job`` with its folder
``OUT/<model>/<method>/seed<k>/`` and the engine's ``RunConfig`` (`run_config`). ``shard`` slices
the jobs among launchers, and ``claim`` writes the study's manifest ``OUT/repro.json``, or
refuses a command that would mix two studies in one folder.

A budget sweep (``budgets``, fractions of the original network's cost in one resource) runs,
at each budget below 1, every method that can meet one (cell and full: DNAT with a cost term;
prune; random: decisions drawn to fit it) in ``OUT/<model>/<method>@flops=0.6/seed<k>/``. The
budget 1 is the unconstrained point, the plain study's own folders: cell and full without a
budget when 1 is listed, and original and nat, which have no cost term, once whatever the
budgets. A budgeted random run pairs with no DNAT run.

The ``random`` method is the control: a random run of (model, seed) makes as many identity and
none changes as the DNAT run of the same model and seed (the study's ``cell`` run, else its
``full`` run), placed at random. ``similarity`` removes as many branches as that run changed
(identity or none: both take the branch's op out), those whose join's output is most like its
input. Both read those counts from that run's summary, so they run after it: last among its
seed's runs, after it on a GPU of its own, and in the same shard (no shard waits on another). A
DNAT run's summary never changes once written, so a resumed run asks for the changes it started
with.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fxdnat import __version__
from fxdnat._files import write_json
from fxdnat.config import RunConfig, format_budget, format_changes, parse_changes, resolve_recipe
from fxdnat.ir import IDENTITY, NONE, RESOURCES, Device, Granularity, NatWeights, Resource, Update
from fxdnat.repro.layout import (
    BUDGET_METHODS,
    CHECKPOINT,
    DEFAULT_METHODS,
    DNAT_METHODS,
    MANIFEST,
    PAIRED_METHODS,
    RUN_RECORD,
    STUDY_METHODS,
    SUMMARY,
    model_name,
    random_source,
    read_json,
    run_folder,
)

# ReproConfig fields that say where and how a study runs, or which runs (a budget names its
# runs' folders), not what a run computes: a rerun may change them freely; every other field
# must match the study already in the folder
_WHERE = (
    "specs",
    "out",
    "seeds",
    "methods",
    "budgets",
    "budget_resource",
    "data_dir",
    "download",
    "device",
    "workers",
    "shard",
)


@dataclass
class ReproConfig:
    """A study: every spec × method × seed, trained with one recipe on one data set."""

    specs: list[str]
    out: str
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])  # the paper: five seeds
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    # a budget sweep: fractions in (0, 1] of the original's cost, 1 the unconstrained point
    budgets: list[float] | None = None  # kept in decreasing order
    budget_resource: Resource = "flops"  # what the budgets bound
    data: str = "digits"
    data_dir: str | None = None
    download: bool = False
    recipe: str | None = None
    granularity: Granularity = "branch"
    arch_update: Update = "alternate"
    epochs: int | None = None
    arch_epochs: int | None = None
    warmup_epochs: int | None = None
    fade_epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    theta_lr: float | None = None
    theta_reach: float | None = None
    theta_weight_decay: float | None = None
    search_epochs: int | None = None  # the nat method's
    nat_weights: NatWeights | None = None  # the nat method's
    limit: int | None = None
    deterministic: bool = False
    device: Device = "auto"
    workers: int = 0
    shard: tuple[int, int] | None = None  # (i, n): run only the i-th of n slices, 1 <= i <= n

    def __post_init__(self) -> None:
        from fxdnat.data import resolve_name  # lazy: fxdnat.data imports torch

        if not self.specs:
            raise ValueError("a study needs at least one model spec, e.g. zoo:resnet20")
        self.data = resolve_name(self.data)  # as each run stores it: an image folder absolute
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list without repeats, got {self.seeds}")
        unknown = [m for m in self.methods if m not in STUDY_METHODS]
        if not self.methods or unknown:
            raise ValueError(
                f"unknown method(s) {unknown or self.methods}; expected some of "
                f"{', '.join(STUDY_METHODS)}, e.g. --methods original,cell,full"
            )
        self._check_budgets()
        paired = [m for m in self.methods if m in PAIRED_METHODS]
        if paired and self.budgets is None and random_source(self.methods) is None:
            raise ValueError(
                f"--methods {','.join(self.methods)}: {' and '.join(paired)} runs make as many "
                "changes as the DNAT run of the same seed; add cell or full, e.g. --methods "
                f"original,cell,{paired[0]} (or sweep budgets, where they fit each: --budgets)"
            )
        unused = [f for f in ("search_epochs", "nat_weights") if getattr(self, f) is not None]
        if unused and "nat" not in self.methods:  # recorded, they would bind the study
            options = " and ".join("--" + f.replace("_", "-") for f in unused)
            raise ValueError(
                f"{options} set NAT's search, but --methods {','.join(self.methods)} has no nat; "
                "add nat or drop them"
            )
        if self.shard is not None:
            i, n = self.shard
            if not 1 <= i <= n:
                raise ValueError(
                    f"shard {i}/{n} does not exist; shards are numbered 1/{n}..{n}/{n}"
                )
        names = [model_name(s) for s in self.specs]
        twins = sorted(name for name, count in Counter(names).items() if count > 1)
        if twins:
            raise ValueError(
                f"specs {self.specs} share the folder name(s) {twins}; a study holds each model "
                "once"
            )

    def _check_budgets(self) -> None:
        """Budgets in (0, 1], none repeated, kept in decreasing order (every launcher of a
        sharded sweep then lists the same jobs); prune needs a budget below 1, and a sweep a
        method that meets one."""
        methods = ",".join(self.methods)
        if self.budget_resource not in RESOURCES:
            raise ValueError(
                f"unknown budget resource {self.budget_resource!r}; expected one of "
                f"{', '.join(RESOURCES)}"
            )
        if self.budgets is None:
            if "prune" in self.methods:
                raise ValueError(
                    f"--methods {methods}: prune removes the least-contributing branches until "
                    "the network fits a budget; sweep some, e.g. --budgets 1.0,0.8,0.6,0.4"
                )
            return
        if not self.budgets or not all(0 < b <= 1 for b in self.budgets):
            raise ValueError(
                f"budgets {self.budgets} must be fractions in (0, 1] of the original's cost, "
                "e.g. --budgets 1.0,0.8,0.6,0.4"
            )
        texts = Counter(f"{b:g}" for b in self.budgets)  # two that print alike share a folder
        twins = sorted(text for text, count in texts.items() if count > 1)
        if twins:
            raise ValueError(f"budgets {self.budgets} repeat {', '.join(twins)}; give each once")
        self.budgets = sorted(map(float, self.budgets), reverse=True)
        budgeted = [m for m in self.methods if m in BUDGET_METHODS]
        if not budgeted:
            raise ValueError(
                f"--budgets: --methods {methods} has no method that meets a budget; add "
                f"some of {', '.join(BUDGET_METHODS)}, e.g. --methods original,cell,prune,random"
            )
        below = [m for m in budgeted if m in ("prune", *PAIRED_METHODS)]
        if below and min(self.budgets) == 1:
            raise ValueError(
                f"--budgets {_fractions(self.budgets)}: {' and '.join(below)} run at budgets "
                "below 1 only (the unconstrained network is the original); add one, e.g. "
                "--budgets 1.0,0.6"
            )

    def settings(self) -> dict[str, Any]:
        """What the runs compute (stored in the manifest; a rerun must not change it)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in _WHERE}


@dataclass(frozen=True)
class Job:
    """One run of a study."""

    spec: str
    method: str  # one of STUDY_METHODS
    seed: int
    pairs_with: str | None = None  # a paired job: the DNAT method whose changes it copies
    budget: str | None = None  # a sweep's job below 1: its RunConfig.budget, "flops=0.6"

    @property
    def model(self) -> str:
        return model_name(self.spec)

    @property
    def source(self) -> Job | None:
        """The DNAT run a random or similarity job copies its number of changes from; at a
        budget it copies none (its decisions fit the budget)."""
        if self.method not in PAIRED_METHODS or self.budget is not None:
            return None
        if self.pairs_with not in DNAT_METHODS:
            raise ValueError(
                f"{self.method} job {self} pairs with {self.pairs_with!r}; expected one of "
                f"{DNAT_METHODS}"
            )
        return Job(self.spec, self.pairs_with, self.seed)

    def folder(self, out: str | Path) -> Path:
        return Path(out) / self.model / run_folder(self.method, self.budget) / f"seed{self.seed}"

    def __str__(self) -> str:
        return f"{self.model} {run_folder(self.method, self.budget)} seed {self.seed}"


def parse_seeds(text: str) -> list[int]:
    """ "1-5" → [1, 2, 3, 4, 5]; "0,3,7-8" → [0, 3, 7, 8]."""
    seeds: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None or (match[2] is not None and int(match[2]) < int(match[1])):
            raise ValueError(f"bad seed list {text!r}; write e.g. 1-5 or 0,3,7-8")
        low, high = int(match[1]), int(match[2] or match[1])
        seeds.extend(range(low, high + 1))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seed list {text!r} repeats a seed")
    return seeds


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in STUDY_METHODS]
    if not methods or unknown:
        raise ValueError(
            f"unknown method(s) {unknown or text!r} in {text!r}; expected a comma list of "
            f"{', '.join(STUDY_METHODS)}"
        )
    return methods


def parse_budgets(text: str) -> list[float]:
    """ "1.0,0.8,0.6" → [1.0, 0.8, 0.6]: a sweep's budgets, fractions of the original's cost."""
    budgets = []
    for part in text.split(","):
        try:
            budgets.append(float(part))
        except ValueError:
            raise ValueError(
                f"bad budget list {text!r}: {part.strip()!r} is no number; write fractions in "
                "(0, 1] of the original's cost, e.g. 1.0,0.8,0.6,0.4"
            ) from None
    return budgets


def _fractions(budgets: Sequence[float]) -> str:
    return ",".join(f"{b:g}" for b in budgets)


def parse_shard(text: str) -> tuple[int, int]:
    """ "2/4" → (2, 4): the second of four slices."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None or int(match[2]) < 1:
        raise ValueError(f"bad shard {text!r}; write i/n with 1 <= i <= n, e.g. 2/4")
    i, n = int(match[1]), int(match[2])
    if not 1 <= i <= n:
        raise ValueError(f"shard {text!r} does not exist; shards are numbered 1/{n}..{n}/{n}")
    return i, n


def jobs(config: ReproConfig) -> list[Job]:
    """The study's runs: models in the order given, then seeds, then methods, so that a
    cut-short study already holds every method for its first seeds. Random and similarity come
    last for their seed, whatever the order given: they copy the changes of that seed's DNAT
    run. A budget
    sweep goes budget by budget within a seed, the unconstrained point first (`_sweep`)."""
    if config.budgets is not None:
        return [
            job
            for spec in config.specs
            for seed in config.seeds
            for job in _sweep(config, spec, seed)
        ]
    source = random_source(config.methods)
    paired = PAIRED_METHODS
    methods = sorted(config.methods, key=lambda m: m in paired)  # stable: the rest as given
    return [
        Job(spec, method, seed, source if method in paired else None)
        for spec in config.specs
        for seed in config.seeds
        for method in methods
    ]


def _sweep(config: ReproConfig, spec: str, seed: int) -> list[Job]:
    """One seed's runs of a budget sweep: unconstrained, original and nat (no cost term: once,
    whatever the budgets) and cell and full if 1 is a budget; then, at each budget below 1, the
    methods that meet one, in the order given."""
    unconstrained = [
        m
        for m in config.methods
        if m in ("original", "nat") or (m in DNAT_METHODS and 1.0 in config.budgets)
    ]
    budgeted = [m for m in config.methods if m in BUDGET_METHODS]
    return [Job(spec, m, seed) for m in unconstrained] + [
        Job(spec, m, seed, budget=budget) for budget in _budget_texts(config) for m in budgeted
    ]


def _budget_texts(config: ReproConfig) -> list[str]:
    """The sweep's budgets below 1 as each run's RunConfig.budget has them: "flops=0.6"."""
    return [format_budget({config.budget_resource: b}) for b in config.budgets or () if b < 1]


def shard(all_jobs: Sequence[Job], i: int, n: int) -> list[Job]:
    """The i-th of n slices (1-based). A DNAT run and the random and similarity runs that copy
    it form a group, which stays in one slice, so no shard waits on another; each group, in the
    jobs' order, goes to the slice with the fewest jobs so far (the first of those): plain round
    robin when no job is paired. Every launcher that gets the same specs, seeds and methods
    computes the same disjoint slices, and together they cover all jobs."""
    groups: dict[Job, list[Job]] = {}
    for job in all_jobs:
        groups.setdefault(job.source or job, []).append(job)
    load = [0] * n
    slot: dict[Job, int] = {}
    for members in groups.values():
        k = min(range(n), key=lambda s: (load[s], s))
        load[k] += len(members)
        slot.update(dict.fromkeys(members, k))
    return [job for job in all_jobs if slot[job] == i - 1]


def run_config(config: ReproConfig, job: Job) -> RunConfig:
    """The engine's RunConfig for one job: the study's settings that the engine shares by name
    (data, recipe and its overrides, device, ...), and the job's spec, folder, method and seed.
    A random or similarity job also gets its DNAT run's tie and number of changes
    (`random_changes`, `similarity_changes`); a job of a budget sweep, its budget."""
    shared = {f.name for f in dataclasses.fields(RunConfig)} & {
        f.name for f in dataclasses.fields(ReproConfig)
    }
    shared.discard("out")  # the study's folder; the run's is below it
    if job.method == "original":
        method = {"method": "original", "tie": "cell"}
    elif job.method in ("random", "prune", "similarity") and job.budget is not None:
        # no θ decides: each edge on its own, as a DNAT run of tie full
        method = {"method": job.method, "tie": "full", "budget": job.budget}
    elif job.method == "random":
        source = job.source
        method = {"method": "random", "tie": source.method, "changes": random_changes(config, job)}
    elif job.method == "similarity":
        changes = similarity_changes(random_changes(config, job))
        method = {"method": "similarity", "tie": job.source.method, "changes": changes}
    elif job.method == "nat":  # NAT's genotype is one per cell type: tie cell
        method = {"method": "nat", "tie": "cell"}
    else:
        method = {"method": "dnat", "tie": job.method, "budget": job.budget}
    if job.method != "nat":  # NAT's options are refused by the other methods
        shared -= {"search_epochs", "nat_weights"}
    return RunConfig(
        **{name: getattr(config, name) for name in shared},
        **method,
        spec=job.spec,
        out=str(job.folder(config.out)),
        seed=job.seed,
    )


def random_changes(config: ReproConfig, job: Job) -> str:
    """A paired job's changes, "identity=2,none=1": what its DNAT run (same model and seed)
    changed, counted by kind, read from that run's summary. Raises RuntimeError, saying why,
    when that run has no summary (it failed, or has not run yet)."""
    source = job.source
    folder = source.folder(config.out)
    summary = read_json(folder / SUMMARY)
    if not summary:
        record = read_json(folder / RUN_RECORD)
        status = record.get("status", "not run")
        why = "failed" if status == "failed" else f"has no result yet ({status})"
        raise RuntimeError(
            f"its DNAT run ({source}) {why}; a {job.method} run copies that run's number of "
            "changes: "
            "rerun the study to retry both"
        )
    changes = summary.get("changes")
    if isinstance(changes, str):  # counted by kind of edge by the engine
        return changes
    return changes_text(summary.get("changed", {}))  # a summary written before it did


def similarity_changes(changes: str) -> str:
    """A DNAT run's changes as similarity removal makes them: a branch that became the identity
    or was removed both lose their op, so "identity=2,none=1" → "none=3"; skip and op changes
    as they are."""
    counts = parse_changes(changes)
    branches = counts.pop(IDENTITY, 0) + counts.pop(NONE, 0)
    if branches:
        counts[NONE] = branches
    return format_changes(counts)


def changes_text(changed: Mapping[str, str]) -> str:
    """{edge: choice} of the edges that changed → the engine's "identity=2,none=1" (kinds in
    sorted order, those with no edge left out; "" for no change)."""
    counts = Counter(changed.values())
    odd = sorted(set(counts) - {IDENTITY, NONE})
    if odd:
        raise ValueError(
            f"changed edges with choice(s) {odd}; a random run places only {IDENTITY} and {NONE}"
        )
    return ",".join(f"{kind}={counts[kind]}" for kind in sorted(counts))


# ------------------------------------------------------------------- the manifest
def claim(config: ReproConfig) -> None:
    """Write the study's manifest, or check that the folder's study computes the same thing:
    a skipped run of another recipe would silently mix two studies in one table."""
    path = Path(config.out) / MANIFEST
    settings = json.loads(json.dumps(config.settings()))
    recipes = _recipes(config)
    manifest = read_json(path) or {"settings": settings, "recipes": {}}
    _refuse_changes(config.out, "the study's settings", manifest["settings"], settings)
    for model, recipe in recipes.items():
        if _has_runs(Path(config.out) / model):  # with its runs deleted, a model starts afresh
            _refuse_changes(
                config.out, f"the recipe of {model}", manifest["recipes"].get(model), recipe
            )
        manifest["recipes"][model] = recipe
    _pair_random(config, manifest)
    asked = [("specs", config.specs), ("seeds", config.seeds), ("methods", config.methods)]
    if config.budgets is not None:  # the budgets below 1 swept, as the folders name them
        asked.append(("budgets", _budget_texts(config)))
    for key, values in asked:
        manifest[key] = manifest.get(key, []) + [
            v for v in values if v not in manifest.get(key, [])
        ]
    manifest["fxdnat"] = __version__
    write_json(path, manifest)


def _recipes(config: ReproConfig) -> dict[str, dict[str, Any]]:
    """The recipe each model trains with (its DNAT runs), resolved as the engine resolves it;
    a bad spec, recipe or data set is refused here, once, before any run fails on it."""
    from fxdnat.data import dataset_info  # lazy: both import torch
    from fxdnat.engine import check_device

    check_device(config.device)
    dataset_info(config.data, config.data_dir)
    recipes = {}
    for spec in config.specs:
        run = run_config(config, Job(spec, "cell", config.seeds[0]))  # checks its own choices
        recipes[model_name(spec)] = json.loads(json.dumps(dataclasses.asdict(resolve_recipe(run))))
    return recipes


def _pair_random(config: ReproConfig, manifest: dict[str, Any]) -> None:
    """Record which DNAT runs the study's random and similarity runs copy; a command that would
    pair them with the other tie is refused while such runs exist, as the table would mix two
    controls."""
    source = random_source(config.methods)
    paired = [m for m in PAIRED_METHODS if m in config.methods]
    if not paired or source is None or config.budgets is not None:
        return  # a sweep's paired runs fit their budget: they copy no run
    stored = manifest.get("random_pairs_with", source)
    made = any(
        any(Path(config.out).glob(f"*/{method}/seed*/{name}"))
        for method in PAIRED_METHODS
        for name in (CHECKPOINT, SUMMARY)
    )
    if stored != source and made:
        raise ValueError(
            f"{config.out}'s {' and '.join(paired)} runs copy the changes of its {stored} runs, "
            f"but with --methods {','.join(config.methods)} they would copy its {source} runs "
            f"(they pair with cell when --methods has it, else full); give --methods that pair "
            f"them with {stored}, or delete {config.out}/*/{{{','.join(PAIRED_METHODS)}}} to "
            "redo those runs"
        )
    manifest["random_pairs_with"] = source


def _has_runs(folder: Path) -> bool:
    return any(folder.glob(f"*/seed*/{CHECKPOINT}")) or any(folder.glob(f"*/seed*/{SUMMARY}"))


def _refuse_changes(out: str, what: str, stored: dict | None, wanted: dict) -> None:
    if stored is None or stored == wanted:
        return
    differ = sorted(k for k in stored.keys() | wanted.keys() if stored.get(k) != wanted.get(k))
    if not differ:  # a setting added since, left at its default: the same study
        return
    have = ", ".join(f"{k}={stored.get(k)!r}" for k in differ)
    want = ", ".join(f"{k}={wanted.get(k)!r}" for k in differ)
    raise ValueError(
        f"{out} holds runs made with {have} ({what}), but this command asks for {want}; "
        "rerun with the study's options, or choose another --out (or delete those runs to redo "
        "them)"
    )
