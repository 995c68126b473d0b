"""Reproducibility harness: a multi-seed study of (model, method, seed) runs, resumable and
shardable, aggregated into the paper's tables (Kim & Lee 2020: mean / std / cost over 5 seeds)
and into how sure DNAT was of its decisions.

Every run trains into ``OUT/<model>/<method>/seed<k>/`` through `fxdnat.engine.transform`, so a
rerun of the same study skips finished runs (``summary.json``) and resumes cut ones
(``checkpoint.pt``). Besides the engine's files, each run folder holds ``run.json``: the harness's
own record of every attempt (wall time, device, errors), from which the cost is summed.

The ``random`` method is the control: a random run of (model, seed) makes as many identity and
none changes as the DNAT run of the same model and seed (the study's ``cell`` run, else its
``full`` run), placed at random. It reads those counts from that run's summary, so it runs after
it: last among its seed's runs, after it on a GPU of its own, and in the same shard (no shard
waits on another). A DNAT run's summary never changes once written, so a resumed random run
asks for the changes it started with.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import itertools
import json
import logging
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fxdnat._files import write_json
from fxdnat.allocator import tune_cpu_allocator
from fxdnat.ir import CHOICES, IDENTITY, NONE, SAME
from fxdnat.reach import NEEDED, NOISY, UNSURE

log = logging.getLogger(__name__)

METHODS = ("original", "cell", "full", "random")
METHOD_LABELS = {
    "original": "original",
    "cell": "DNAT cell",
    "full": "DNAT full",
    "random": "random (control)",
}
DNAT_METHODS = ("cell", "full")  # DNAT's θ ties; a random run copies the first one listed
DEFAULT_METHODS = ("original", "cell", "full")  # `fxdnat repro`'s --methods default
MANIFEST, RUN_RECORD, RUN_LOG = "repro.json", "run.json", "log.txt"
# the engine's file names (fxdnat.engine.CHECKPOINT, METRICS, SUMMARY), repeated here so that
# `fxdnat repro --report` aggregates without importing torch
CHECKPOINT, METRICS, SUMMARY = "checkpoint.pt", "metrics.jsonl", "summary.json"
REPORT = "report.md"
MISSING = "—"  # a report's cell for what no run says (yet)
# issue 15: θ_same starts at 1 and θ_identity, θ_none at 0, so an edge changes once θ has moved
# by about 1; lr·√T (the θ steps' noise) above 0.3 made the seeds' decisions mostly noise; a
# margin under 0.1 is a decision θ barely preferred
# ReproConfig fields that say where and how a study runs, not what it computes: a rerun may
# change them freely; every other field must match the study already in the folder
_WHERE = ("specs", "out", "seeds", "methods", "data_dir", "download", "device", "workers", "shard")


@dataclass
class ReproConfig:
    """A study: every spec × method × seed, trained with one recipe on one data set."""

    specs: list[str]
    out: str
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])  # the paper: five seeds
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    data: str = "digits"
    data_dir: str | None = None
    download: bool = False
    recipe: str | None = None
    granularity: str = "branch"
    arch_update: str = "alternate"
    epochs: int | None = None
    arch_epochs: int | None = None
    warmup_epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    theta_lr: float | None = None
    theta_reach: float | None = None
    theta_weight_decay: float | None = None
    limit: int | None = None
    deterministic: bool = False
    device: str = "auto"
    workers: int = 0
    shard: tuple[int, int] | None = None  # (i, n): run only the i-th of n slices, 1 <= i <= n

    def __post_init__(self) -> None:
        from fxdnat.data import resolve_name

        if not self.specs:
            raise ValueError("a study needs at least one model spec, e.g. zoo:resnet20")
        self.data = resolve_name(self.data)  # as each run stores it: an image folder absolute
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list without repeats, got {self.seeds}")
        unknown = [m for m in self.methods if m not in METHODS]
        if not self.methods or unknown:
            raise ValueError(
                f"unknown method(s) {unknown or self.methods}; expected some of "
                f"{', '.join(METHODS)}, e.g. --methods original,cell,full"
            )
        if "random" in self.methods and random_source(self.methods) is None:
            raise ValueError(
                f"--methods {','.join(self.methods)}: random places as many changes as the DNAT "
                "run of the same seed; add cell or full, e.g. --methods original,cell,random"
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

    def settings(self) -> dict[str, Any]:
        """What the runs compute (stored in the manifest; a rerun must not change it)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in _WHERE}


@dataclass(frozen=True)
class Job:
    """One run of a study."""

    spec: str
    method: str  # one of METHODS
    seed: int
    pairs_with: str | None = None  # a random job: the DNAT method whose changes it copies

    @property
    def model(self) -> str:
        return model_name(self.spec)

    @property
    def source(self) -> Job | None:
        """The DNAT run a random job copies its number of changes from."""
        if self.method != "random":
            return None
        if self.pairs_with not in DNAT_METHODS:
            raise ValueError(
                f"random job {self} pairs with {self.pairs_with!r}; expected one of {DNAT_METHODS}"
            )
        return Job(self.spec, self.pairs_with, self.seed)

    def folder(self, out: str | Path) -> Path:
        return Path(out) / self.model / self.method / f"seed{self.seed}"

    def __str__(self) -> str:
        return f"{self.model} {self.method} seed {self.seed}"


@dataclass(frozen=True)
class RunResult:
    """What happened to a job in this invocation."""

    job: Job
    status: str  # "skipped" (already done), "done", "failed", "interrupted"
    resumed: bool = False
    seconds: float = 0.0  # wall time of this attempt
    test_acc: float | None = None  # fraction, from the run's summary
    error: str | None = None


def model_name(spec: str) -> str:
    """The folder and table name of a spec: "zoo:resnet20" → "resnet20"."""
    name = spec.split(":")[-1]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "model"


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


def random_source(methods: Sequence[str]) -> str | None:
    """The DNAT method whose runs a study's random runs copy: the first of cell and full in
    ``methods``, as the user ordered them (``--methods original,full,cell,random`` copies full)."""
    return next((m for m in methods if m in DNAT_METHODS), None)


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise ValueError(
            f"unknown method(s) {unknown or text!r} in {text!r}; expected a comma list of "
            f"{', '.join(METHODS)}"
        )
    return methods


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
    cut-short study already holds every method for its first seeds. Random comes last for its
    seed, whatever the order given: it copies the changes of that seed's DNAT run."""
    source = random_source(config.methods)
    methods = sorted(config.methods, key=lambda m: m == "random")  # stable: the rest as given
    return [
        Job(spec, method, seed, source if method == "random" else None)
        for spec in config.specs
        for seed in config.seeds
        for method in methods
    ]


def shard(all_jobs: Sequence[Job], i: int, n: int) -> list[Job]:
    """The i-th of n slices (1-based): round robin over the jobs, except that a random job goes
    with the DNAT run it copies, so no shard waits on another. Every launcher that gets the same
    specs, seeds and methods computes the same disjoint slices, and together they cover all
    jobs."""
    slot: dict[Job, int] = {}
    turn = 0
    for job in all_jobs:
        source = job.source
        if source in slot:
            slot[job] = slot[source]
        else:
            slot[job], turn = turn % n, turn + 1
    return [job for job in all_jobs if slot[job] == i - 1]


def run_config(config: ReproConfig, job: Job) -> Any:
    """The engine's RunConfig for one job: the study's settings that the engine shares by name
    (data, recipe and its overrides, device, ...), and the job's spec, folder, method and seed.
    A random job also gets its DNAT run's tie and number of changes (`random_changes`)."""
    from fxdnat.config import RunConfig

    shared = {f.name for f in dataclasses.fields(RunConfig)} & {
        f.name for f in dataclasses.fields(ReproConfig)
    }
    shared.discard("out")  # the study's folder; the run's is below it
    if job.method == "original":
        method = {"method": "original", "tie": "cell"}
    elif job.method == "random":
        source = job.source
        method = {"method": "random", "tie": source.method, "changes": random_changes(config, job)}
    else:
        method = {"method": "dnat", "tie": job.method}
    return RunConfig(
        **{name: getattr(config, name) for name in shared},
        **method,
        spec=job.spec,
        out=str(job.folder(config.out)),
        seed=job.seed,
    )


def random_changes(config: ReproConfig, job: Job) -> str:
    """A random job's changes, "identity=2,none=1": what its DNAT run (same model and seed)
    changed, counted by kind, read from that run's summary. Raises RuntimeError, saying why,
    when that run has no summary (it failed, or has not run yet)."""
    source = job.source
    folder = source.folder(config.out)
    summary = _read_json(folder / SUMMARY)
    if not summary:
        record = _read_json(folder / RUN_RECORD)
        status = record.get("status", "not run")
        why = "failed" if status == "failed" else f"has no result yet ({status})"
        raise RuntimeError(
            f"its DNAT run ({source}) {why}; a random run copies that run's number of changes: "
            "rerun the study to retry both"
        )
    return changes_text(summary.get("changed", {}))


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


# ------------------------------------------------------------------------------ running
class ReproReporter:
    """Progress of a study; the CLI prints it, the default logs."""

    def begin(self, todo: Sequence[Job], pending: Sequence[Job]) -> None:
        log.info("%d runs, %d to train", len(todo), len(pending))

    def run_start(self, job: Job, index: int, total: int, resumed: bool) -> None:
        log.info("[%d/%d] %s: %s", index + 1, total, job, "resuming" if resumed else "training")

    def epoch_end(self, job: Job, record: dict) -> None:
        log.debug("%s: epoch %(epoch)d test acc %(test_acc).4f", job, record)

    def run_end(self, result: RunResult, index: int, total: int) -> None:
        log.info("[%d/%d] %s: %s", index + 1, total, result.job, result.error or result.status)


class LineReporter(ReproReporter):
    """One line per run and per epoch, handed to ``write`` (the CLI's ``click.echo``)."""

    def __init__(self, write: Callable[[str], Any]) -> None:
        self.write = write

    def begin(self, todo: Sequence[Job], pending: Sequence[Job]) -> None:
        runs = f"{len(todo)} run{'s' if len(todo) != 1 else ''}"
        self.write(f"{runs}: {len(todo) - len(pending)} done, {len(pending)} to train")

    def run_start(self, job: Job, index: int, total: int, resumed: bool) -> None:
        self.write(f"[{index + 1}/{total}] {job}: {'resuming' if resumed else 'training'}")

    def epoch_end(self, job: Job, record: dict) -> None:
        self.write(
            f"    {job} epoch {record['epoch']} {record['stage']}: "
            f"test {100 * record['test_acc']:.2f}%, {record['seconds']:.0f} s"
        )

    def run_end(self, result: RunResult, index: int, total: int) -> None:
        if result.status == "done" and result.test_acc is not None:
            outcome = f"{100 * result.test_acc:.2f}% in {result.seconds / 60:.1f} min"
        else:
            outcome = f"{result.status}: {result.error}" if result.error else result.status
        self.write(f"[{index + 1}/{total}] {result.job}: {outcome}")


def run_study(config: ReproConfig, reporter: ReproReporter | None = None) -> list[RunResult]:
    """Train every job of ``config`` (or of its shard) not yet done; one failure does not stop
    the others. Runs go one after another, or one per GPU when several are visible. Ctrl-C or
    SIGTERM stop the study (``fxdnat.engine.Interrupted``); the same call resumes it."""
    reporter = reporter or ReproReporter()
    _claim(config)
    todo = jobs(config)
    if config.shard is not None:
        todo = shard(todo, *config.shard)
    pending = [job for job in todo if not (job.folder(config.out) / SUMMARY).exists()]
    reporter.begin(todo, pending)
    gpus = _gpus(config.device) if pending else []
    if len(gpus) > 1:
        trained = _run_parallel(config, pending, gpus, reporter)
    else:
        trained = [
            _run_reported(config, job, k, len(pending), reporter) for k, job in enumerate(pending)
        ]
    done = {r.job: r for r in trained}
    return [done.get(job) or RunResult(job, "skipped") for job in todo]


def run_one(config: ReproConfig, job: Job, reporter: ReproReporter | None = None) -> RunResult:
    """Train (or resume, or skip) one job, recording the attempt in its ``run.json``.

    An exception is recorded and returned as a failed result; an interrupt (Ctrl-C, SIGTERM, a
    ``SystemExit``) is recorded and raised again, since it asks the whole study to stop.
    """
    from fxdnat.engine import Interrupted
    from fxdnat.engine import transform as train

    folder = job.folder(config.out)
    if (folder / SUMMARY).exists():
        return RunResult(job, "skipped")
    resumed = (folder / CHECKPOINT).exists()
    if not resumed:  # a fresh start: the log of an attempt that saved nothing is stale
        (folder / METRICS).unlink(missing_ok=True)
    attempt = _open_attempt(folder, job, config, resumed)
    start = time.perf_counter()
    try:
        summary = train(
            run_config(config, job), _RunLog(folder / RUN_LOG, job, reporter), resume=resumed
        )
    except BaseException as exc:
        seconds = time.perf_counter() - start
        stop = isinstance(exc, (Interrupted, KeyboardInterrupt, SystemExit))
        status = "interrupted" if stop else "failed"
        _close_attempt(folder, attempt, status, seconds, exc, _planned_device(config.device))
        if stop or not isinstance(exc, Exception):
            raise
        log.warning("%s failed: %s", job, _one_line(exc))
        return RunResult(job, "failed", resumed, seconds, error=_one_line(exc))
    seconds = time.perf_counter() - start
    _close_attempt(folder, attempt, "done", seconds, device=summary["device"])
    return RunResult(job, "done", resumed, seconds, test_acc=summary["test_acc"])


def _run_reported(
    config: ReproConfig, job: Job, index: int, total: int, reporter: ReproReporter
) -> RunResult:
    resumed = (job.folder(config.out) / CHECKPOINT).exists()
    reporter.run_start(job, index, total, resumed)
    result = run_one(config, job, reporter)
    reporter.run_end(result, index, total)
    return result


def _recipes(config: ReproConfig) -> dict[str, dict[str, Any]]:
    """The recipe each model trains with (its DNAT runs), resolved as the engine resolves it;
    a bad spec, recipe or data set is refused here, once, before any run fails on it."""
    from fxdnat.config import resolve_recipe
    from fxdnat.data import dataset_info
    from fxdnat.engine import check_device

    check_device(config.device)
    dataset_info(config.data, config.data_dir)
    recipes = {}
    for spec in config.specs:
        run = run_config(config, Job(spec, "cell", config.seeds[0]))  # checks its own choices
        recipes[model_name(spec)] = json.loads(json.dumps(dataclasses.asdict(resolve_recipe(run))))
    return recipes


def _claim(config: ReproConfig) -> None:
    """Write the study's manifest, or check that the folder's study computes the same thing:
    a skipped run of another recipe would silently mix two studies in one table."""
    path = Path(config.out) / MANIFEST
    settings = json.loads(json.dumps(config.settings()))
    recipes = _recipes(config)
    manifest = _read_json(path) or {"settings": settings, "recipes": {}}
    _refuse_changes(config.out, "the study's settings", manifest["settings"], settings)
    for model, recipe in recipes.items():
        if _has_runs(Path(config.out) / model):  # with its runs deleted, a model starts afresh
            _refuse_changes(
                config.out, f"the recipe of {model}", manifest["recipes"].get(model), recipe
            )
        manifest["recipes"][model] = recipe
    _pair_random(config, manifest)
    for key, values in (
        ("specs", config.specs),
        ("seeds", config.seeds),
        ("methods", config.methods),
    ):
        manifest[key] = manifest.get(key, []) + [
            v for v in values if v not in manifest.get(key, [])
        ]
    manifest["fxdnat"] = _version()
    write_json(path, manifest)


def _pair_random(config: ReproConfig, manifest: dict[str, Any]) -> None:
    """Record which DNAT runs the study's random runs copy; a command that would pair them with
    the other tie is refused while random runs exist, as the table would mix two controls."""
    source = random_source(config.methods)
    if "random" not in config.methods or source is None:
        return
    stored = manifest.get("random_pairs_with", source)
    made = any(
        any(Path(config.out).glob(f"*/random/seed*/{name}")) for name in (CHECKPOINT, SUMMARY)
    )
    if stored != source and made:
        raise ValueError(
            f"{config.out}'s random runs copy the changes of its {stored} runs, but with "
            f"--methods {','.join(config.methods)} they would copy its {source} runs (random "
            f"pairs with cell when --methods has it, else full); give --methods that pair random "
            f"with {stored}, or delete {config.out}/*/random to redo those runs"
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


def _gpus(device: str) -> list[str]:
    """The CUDA devices a study may spread over, as CUDA_VISIBLE_DEVICES entries."""
    if device == "cpu":
        return []
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
    return (ids or [str(k) for k in range(count)])[:count]


# --------------------------------------------------------------------- one GPU per run
def _run_parallel(
    config: ReproConfig, pending: Sequence[Job], gpus: Sequence[str], reporter: ReproReporter
) -> list[RunResult]:
    """One subprocess per GPU (CUDA_VISIBLE_DEVICES), each taking the next pending job that is
    ready: a random job once its DNAT run has ended (if that failed, it fails at once)."""
    from fxdnat.engine import Interrupted

    todo, children = _Pending(pending), _Children()

    def work(gpu: str) -> None:
        while (taken := todo.take()) is not None:
            index, job = taken
            folder = job.folder(config.out)
            reporter.run_start(job, index, len(pending), (folder / CHECKPOINT).exists())
            try:
                if todo.source_failed(job):  # nothing to train: recorded as failed, here
                    result = run_one(config, job)
                else:
                    result = _run_child(config, job, gpu, children)
            except BaseException:
                todo.stop()  # a job waiting on this one would wait forever
                raise
            todo.end(job, result)
            reporter.run_end(result, index, len(pending))

    with children.forward_sigterm(), ThreadPoolExecutor(len(gpus)) as pool:
        futures = [pool.submit(work, gpu) for gpu in gpus]
        try:
            for future in futures:
                future.result()
        except KeyboardInterrupt:
            todo.stop()
            children.interrupt()  # each saves its checkpoint and exits
    if todo.stopped:
        raise Interrupted("the study was interrupted; rerun the same command to resume it")
    return [todo.ended[job] for job in pending if job in todo.ended]


class _Pending:
    """The jobs not yet handed out, in order; a random job waits while its DNAT run, pending in
    the same study, has not ended. An interrupted run stops the handing out."""

    def __init__(self, pending: Sequence[Job]) -> None:
        self.waiting = list(enumerate(pending))
        self.pending = set(pending)
        self.ended: dict[Job, RunResult] = {}
        self.stopped = False
        self.changed = threading.Condition()

    def take(self) -> tuple[int, Job] | None:
        """The next job that is ready; None when every job is handed out or the study stops."""
        with self.changed:
            while not self.stopped and self.waiting:
                for k, (_, job) in enumerate(self.waiting):
                    source = job.source
                    if source is None or source not in self.pending or source in self.ended:
                        return self.waiting.pop(k)
                self.changed.wait()  # only random jobs are left, their DNAT runs still running
            return None

    def end(self, job: Job, result: RunResult) -> None:
        with self.changed:
            self.ended[job] = result
            self.stopped |= result.status == "interrupted"
            self.changed.notify_all()

    def stop(self) -> None:
        with self.changed:
            self.stopped = True
            self.changed.notify_all()

    def source_failed(self, job: Job) -> bool:
        source = job.source
        return source in self.ended and self.ended[source].status != "done"


class _Children:
    """The live run subprocesses, to pass an interrupt on to."""

    def __init__(self) -> None:
        self.live: set[subprocess.Popen] = set()
        self.lock = threading.Lock()

    def start(self, args: list[str], **kwargs: Any) -> subprocess.Popen:
        with self.lock:
            process = subprocess.Popen(args, **kwargs)
            self.live.add(process)
        return process

    def finish(self, process: subprocess.Popen) -> int:
        code = process.wait()
        with self.lock:
            self.live.discard(process)
        return code

    def interrupt(self) -> None:
        import signal

        with self.lock:
            for process in self.live:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGINT)

    @contextlib.contextmanager
    def forward_sigterm(self) -> Iterator[None]:
        """A launcher's SIGTERM to this process reaches the runs as Ctrl-C (they save)."""
        import signal

        def handler(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        try:
            previous = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread: leave signals alone
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)


def _run_child(config: ReproConfig, job: Job, gpu: str, children: _Children) -> RunResult:
    """Run one job in ``python -m fxdnat.repro`` on one GPU; its output goes to output.log."""
    folder = job.folder(config.out)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": dataclasses.asdict(dataclasses.replace(config, shard=None)),
        "job": dataclasses.asdict(job),
    }
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
    start = time.perf_counter()
    with (folder / "output.log").open("a") as output:
        process = children.start(
            [sys.executable, "-m", "fxdnat.repro", json.dumps(payload)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the study only; it passes it on once
        )
        code = children.finish(process)
    return _child_result(job, folder, process.pid, code, time.perf_counter() - start)


def _child_result(job: Job, folder: Path, pid: int, code: int, seconds: float) -> RunResult:
    """Read back what a run subprocess recorded; a process that died before recording fails."""
    record = _read_json(folder / RUN_RECORD)
    attempt = record["attempts"][-1] if record.get("attempts") else None
    if attempt is not None and attempt["pid"] != pid:
        attempt = None  # an earlier invocation's: this process died before it recorded anything
    if attempt is None or attempt["status"] == "running":
        error = f"the run's process exited with code {code}; see {folder / 'output.log'}"
        if attempt is not None:
            _close_attempt(folder, attempt, "failed", seconds, RuntimeError(error), "cuda")
        return RunResult(job, "failed", seconds=seconds, error=error)
    summary = _read_json(folder / SUMMARY)
    return RunResult(
        job,
        attempt["status"],
        attempt["action"] == "resumed",
        attempt["wall_seconds"],
        test_acc=summary.get("test_acc"),
        error=attempt.get("error"),
    )


def _child_main(payload: str) -> int:
    """Entry of a run subprocess: one job, recorded; exit 130 when interrupted."""
    from fxdnat.engine import Interrupted

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    tune_cpu_allocator()  # a process of its own, as the fxdnat command
    data = json.loads(payload)
    try:
        run_one(ReproConfig(**data["config"]), Job(**data["job"]))
    except (Interrupted, KeyboardInterrupt):
        return 130
    return 0


# ------------------------------------------------------------------------ run records
class _RunLog:
    """The engine's Reporter interface: a run's progress into its folder's log.txt, epoch
    records passed on to the study's reporter."""

    def __init__(self, path: Path, job: Job, reporter: ReproReporter | None) -> None:
        self.path, self.job, self.reporter = path, job, reporter

    def _write(self, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(f"{_now()} {text}\n")

    def start(self, info: dict) -> None:
        self._write(f"start {json.dumps(info, default=str)}")

    def epoch_start(self, epoch: int, stage: str, steps: int) -> None:
        pass

    def step(self, epoch: int, step: int, loss: float | None) -> None:
        pass

    def epoch_end(self, record: dict) -> None:
        self._write(f"epoch {json.dumps(record)}")
        if self.reporter is not None:
            self.reporter.epoch_end(self.job, record)

    def event(self, name: str, data: dict) -> None:
        self._write(f"{name} {json.dumps(data)}")

    def finish(self, summary: dict) -> None:
        self._write(f"finish {json.dumps(summary)}")


def _open_attempt(folder: Path, job: Job, config: ReproConfig, resumed: bool) -> dict:
    """Append a "running" attempt to run.json; an earlier attempt still "running" was killed
    outright, and its wall time is taken up to its last save."""
    record = _read_json(folder / RUN_RECORD) or {
        "spec": job.spec,
        "model": job.model,
        "method": job.method,
        "seed": job.seed,
        "data": config.data,
        "attempts": [],
    }
    starts = [a["start_time"] for a in record["attempts"]] + [time.time()]
    for old, next_start in zip(record["attempts"], starts[1:], strict=True):
        if old["status"] == "running":  # at most until the next attempt began
            old["status"] = "killed"
            end = min(_last_save(folder), next_start)
            old["wall_seconds"] = max(0.0, end - old["start_time"])
    attempt = {
        "action": "resumed" if resumed else "fresh",
        "status": "running",
        "started": _now(),
        "start_time": time.time(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "wall_seconds": 0.0,
    }
    if "CUDA_VISIBLE_DEVICES" in os.environ:  # which GPU(s) of the host the run was given
        attempt["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
    record["attempts"].append(attempt)
    _store_record(folder, record)
    return attempt


def _close_attempt(
    folder: Path,
    attempt: dict,
    status: str,
    seconds: float,
    error: BaseException | None = None,
    device: str | None = None,
) -> None:
    record = _read_json(folder / RUN_RECORD)
    stored = next(a for a in record["attempts"] if a["start_time"] == attempt["start_time"])
    stored.update(status=status, wall_seconds=seconds, **_describe_device(device))
    if error is not None:
        stored["error"] = _one_line(error) if str(error) else type(error).__name__
        stored["traceback"] = "".join(traceback.format_exception(error))
    attempt.update(stored)
    _store_record(folder, record)


def _store_record(folder: Path, record: dict) -> None:
    """run.json, with the totals a report reads: the last status, the summed wall time."""
    attempts = record["attempts"]
    record["status"] = attempts[-1]["status"]
    record["wall_seconds"] = sum(a["wall_seconds"] for a in attempts)
    record["error"] = attempts[-1].get("error")
    write_json(folder / RUN_RECORD, record)


def _last_save(folder: Path) -> float:
    times = [
        p.stat().st_mtime
        for p in (folder / CHECKPOINT, folder / METRICS, folder / RUN_LOG)
        if p.exists()
    ]
    return max(times, default=0.0)


def _describe_device(device: str | None) -> dict[str, str]:
    """The device type ("cpu", "cuda") and its name; unknown when the run never started."""
    if device is None:
        return {}
    import torch

    kind = device.split(":")[0]
    if kind == "cuda":
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        threads = torch.get_num_threads()
        name = f"{_cpu_name()}, {threads} thread{'s' if threads > 1 else ''}"
    return {"device": kind, "device_name": name}


def _planned_device(device: str) -> str:
    """The device a run that failed was meant for (as the engine picks it)."""
    import torch

    return "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "CPU"


def _read_json(path: Path) -> dict:
    """The file's object, {} when it does not exist (every writer replaces files atomically)."""
    return json.loads(path.read_text()) if path.exists() else {}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _version() -> str:
    from fxdnat import __version__

    return __version__


# -------------------------------------------------------------------------- aggregation
@dataclass(frozen=True)
class Agreement:
    """How alike the seeds decided: the mean over edges of the fraction of seed pairs that
    chose alike, and the share of edges on which every seed chose alike."""

    pairwise: float
    unanimous: float
    edges: int
    seeds: int


def agreement(
    decisions: Sequence[Mapping[str, str]], edges: int | None = None, default: str = SAME
) -> Agreement | None:
    """Seed agreement of ``decisions`` (one {edge: choice} per seed); None under two seeds.

    A mapping may list only the edges that changed (a summary's "changed"): an edge it does not
    name took ``default``, and ``edges`` counts the network's edges, named or not.
    """
    if len(decisions) < 2:
        return None
    names = sorted(set().union(*decisions))
    total = len(names) if edges is None else edges
    if total < len(names):
        raise ValueError(
            f"{len(names)} edges are named but edges={edges}; pass the network's count"
        )
    if total == 0:
        return None
    pairs = len(decisions) * (len(decisions) - 1) / 2
    alike = unanimous = float(total - len(names))  # unnamed edges: every seed took the default
    for name in names:
        counts = Counter(d.get(name, default) for d in decisions)
        alike += sum(c * (c - 1) / 2 for c in counts.values()) / pairs
        unanimous += len(counts) == 1
    return Agreement(alike / total, unanimous / total, total, len(decisions))


@dataclass
class RunRow:
    """One run of a study as the report sees it: its summary and the harness's record."""

    data: str
    model: str
    method: str
    seed: int
    status: str  # "done", "failed", "interrupted", "killed", "running"
    test_acc: float | None = None  # percent
    wall_seconds: float = 0.0  # the harness's, over every attempt (failed ones cost too)
    train_seconds: float | None = None  # the engine's: training epochs only
    device: str = "?"
    device_name: str = "?"
    edges: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    changed: dict[str, str] = field(default_factory=dict)
    params: tuple[int | None, int | None] = (None, None)  # before, after
    flops: tuple[int | None, int | None] = (None, None)
    error: str | None = None
    # how sure DNAT was; None where the summary does not say (older fxdnat, original runs)
    tie: str | None = None  # a DNAT or random run's θ tie
    margins: dict[str, float] | None = None  # per edge: θ's largest allowed entry − the second
    flipped: list[str] | None = None  # edges whose decision changed in the last arch. epochs
    finalize: dict[str, Any] | None = None  # accuracy (0..1) before and after finalize
    reach: dict[str, Any] | None = None  # θ's steps and lr, lr·T, lr·√T


@dataclass
class Report:
    """An aggregated study: its runs, the Markdown report and the files written."""

    rows: list[RunRow]
    markdown: str
    files: list[Path]


def collect(out: str | Path) -> list[RunRow]:
    """Every run folder ``OUT/<model>/<method>/seed<k>`` that holds a summary or a record."""
    out = Path(out)
    default_data = _read_json(out / MANIFEST).get("settings", {}).get("data", "?")
    rows = []
    for folder in sorted(out.glob("*/*/seed*")):
        match = re.fullmatch(r"seed(\d+)", folder.name)
        if match is None or folder.parent.name not in METHODS or not folder.is_dir():
            continue
        row = _row(folder, int(match[1]), default_data)
        if row is not None:
            rows.append(row)
    return rows


def _row(folder: Path, seed: int, default_data: str) -> RunRow | None:
    summary = _read_json(folder / SUMMARY)
    record = _read_json(folder / RUN_RECORD)
    if not summary and not record:
        return None
    attempts = record.get("attempts", [])
    last = next((a for a in reversed(attempts) if "device" in a), {})
    row = RunRow(
        data=summary.get("data") or record.get("data") or default_data,
        model=folder.parent.parent.name,
        method=folder.parent.name,
        seed=seed,
        status="done" if summary else record.get("status", "running"),
        error=None if summary else record.get("error"),
    )
    if not summary:
        row.wall_seconds = record.get("wall_seconds", 0.0)
        row.device, row.device_name = last.get("device", "?"), last.get("device_name", "?")
        return row
    device = summary.get("device", "?").split(":")[0]
    row.test_acc = 100 * summary["test_acc"] if summary.get("test_acc") is not None else None
    row.train_seconds = summary.get("seconds")
    # a run trained outside the harness has no record: its training time is all we know
    row.wall_seconds = record.get("wall_seconds") or summary.get("seconds") or 0.0
    row.device, row.device_name = last.get("device", device), last.get("device_name", device)
    row.edges, row.decisions = summary.get("edges", 0), summary.get("decisions", {})
    row.changed = summary.get("changed", {})
    row.params = (summary.get("params_before"), summary.get("params_after"))
    row.flops = (summary.get("flops_before"), summary.get("flops_after"))
    row.tie = summary.get("tie")
    row.margins, row.flipped = summary.get("margins"), summary.get("flipped")
    row.finalize, row.reach = summary.get("finalize"), summary.get("reach")
    return row


def aggregate(out: str | Path) -> Report:
    """Write the study's tables into OUT: report.md (Table 1 in the paper's layout with DNAT
    against the random control, Table 2 per seed, Table 3 the networks' size, edge choices with
    seed agreement and how sure DNAT was, when DNAT will change the network, failures), one CSV
    per table and data set, and a plot per data set. Returns them; safe to call while the study
    still runs."""
    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(
            f"no study folder at {out}; run `fxdnat repro SPEC --out {out}` first"
        )
    rows = collect(out)
    if not rows:
        raise ValueError(f"{out} holds no runs (no {out}/<model>/<method>/seed<k>/ folders)")
    models = _model_order(out, rows)
    files: list[Path] = []
    sections = [_headline(rows)]
    for data in sorted({r.data for r in rows}):
        sections.append(
            _data_section(out, data, [r for r in rows if r.data == data], models, files)
        )
    markdown = "\n\n".join(sections) + "\n"
    (out / REPORT).write_text(markdown)
    return Report(rows, markdown, [out / REPORT, *files])


def _model_order(out: Path, rows: Sequence[RunRow]) -> list[str]:
    """Models in the order the study named them, then any others found on disk."""
    specs = _read_json(out / MANIFEST).get("specs", [])
    named = [model_name(s) for s in specs]
    return [m for m in named if any(r.model == m for r in rows)] + sorted(
        {r.model for r in rows} - set(named)
    )


def _headline(rows: Sequence[RunRow]) -> str:
    status = Counter(r.status for r in rows)
    hours = sum(r.wall_seconds for r in rows) / 3600
    parts = ", ".join(f"{n} {s}" for s, n in sorted(status.items()))
    return (
        f"# Reproducibility report\n\n{len(rows)} runs ({parts}); total cost "
        f"{_hours(hours)} device-hours of wall time, every attempt counted."
    )


def _data_section(
    out: Path, data: str, rows: Sequence[RunRow], models: Sequence[str], files: list[Path]
) -> str:
    models = [m for m in models if any(r.model == m for r in rows)]
    methods = [m for m in METHODS if any(r.method == m for r in rows)]
    groups = {
        (m, k): [r for r in rows if (r.model, r.method) == (m, k)] for m in models for k in methods
    }
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", data)
    parts = [f"## {data}"]
    for name, (lines, table) in (
        ("table1", _table1(groups, models, methods)),
        ("random", _versus_random(groups, models, methods)),
        ("table2", _table2(groups, models, methods)),
        ("table3", _table3(groups, models, methods)),
        ("choices", _choices(groups, models, methods)),
    ):
        if not lines:  # a study without random runs has no pairs
            continue
        path = out / f"{name}-{stem}.csv"
        _write_csv(path, table)
        files.append(path)
        parts.append(lines)
    reach = _reach(rows)
    if reach:
        parts.append(reach)
    plot = out / f"accuracy-{stem}.png"
    _plot(groups, models, methods, data, plot)
    files.append(plot)
    parts.append(f"![per-seed test accuracy on {data}]({plot.name})")
    failures = _failures(rows)
    if failures:
        parts.append(failures)
    return "\n\n".join(parts)


def _stats(runs: Sequence[RunRow]) -> dict[str, Any]:
    """Mean, sample std (over seeds) and summed cost of one (model, method) cell."""
    accs = [r.test_acc for r in runs if r.status == "done" and r.test_acc is not None]
    return {
        "seeds": len(accs),
        "mean_acc": statistics.fmean(accs) if accs else None,
        "std_acc": statistics.stdev(accs) if len(accs) > 1 else None,
        "device_hours": sum(r.wall_seconds for r in runs) / 3600,
        "devices": "+".join(sorted({r.device for r in runs if r.device != "?"})),
        "failed": sum(r.status == "failed" for r in runs),
        "incomplete": sum(r.status not in ("done", "failed") for r in runs),
    }


def _cell(s: dict[str, Any], seeds: int) -> str:
    """ "mean / std / hours device", with notes on missing seeds."""
    notes = [f"n={s['seeds']}"] if 0 < s["seeds"] < seeds else []
    notes += [f"{s[k]} {k}" for k in ("failed", "incomplete") if s[k]]
    text = MISSING
    if s["mean_acc"] is not None:
        std = f"{s['std_acc']:.2f}" if s["std_acc"] is not None else MISSING
        text = f"{s['mean_acc']:.2f} / {std} / {_hours(s['device_hours'])} {s['devices']}"
    return f"{text.rstrip()} ({', '.join(notes)})" if notes else text.rstrip()


def _table1(groups: dict, models: Sequence[str], methods: Sequence[str]) -> tuple[str, list[dict]]:
    seeds = max(len({r.seed for r in runs}) for runs in groups.values())
    lines = [
        "### Table 1: test accuracy (%), mean / sample std over seeds / cost in device-hours",
        "",
        _md_row(["model", *(METHOD_LABELS[m] for m in methods)]),
        _md_row(["---"] * (len(methods) + 1)),
    ]
    table = [
        {"model": model, "method": method, **_stats(groups[model, method])}
        for model in models
        for method in methods
    ]
    for model in models:
        lines.append(_md_row([model, *(_cell(s, seeds) for s in table if s["model"] == model)]))
    runs = [r for rs in groups.values() for r in rs]
    names = sorted({(r.device, r.device_name) for r in runs if r.device != "?"})
    devices = "; ".join(f"{kind} = {name}" for kind, name in names)
    lines += [
        "",
        f"Cost: the harness's wall time of every attempt of every seed, summed; {devices}.",
    ]
    return "\n".join(lines), table


def _table2(groups: dict, models: Sequence[str], methods: Sequence[str]) -> tuple[str, list[dict]]:
    seeds = sorted({r.seed for runs in groups.values() for r in runs})
    lines = [
        "### Table 2: test accuracy (%) per seed",
        "",
        _md_row(["model", "method", *(f"seed {s}" for s in seeds)]),
        _md_row(["---"] * (len(seeds) + 2)),
    ]
    table = []
    for model in models:
        for method in methods:
            by_seed = {r.seed: r for r in groups[model, method]}
            cells = [_seed_cell(by_seed.get(s)) for s in seeds]
            lines.append(_md_row([model, METHOD_LABELS[method], *cells]))
            table += [_csv_run(r) for r in sorted(groups[model, method], key=lambda r: r.seed)]
    return "\n".join(lines), table


def _seed_cell(row: RunRow | None) -> str:
    if row is None:
        return MISSING
    return (
        f"{row.test_acc:.2f}" if row.status == "done" and row.test_acc is not None else row.status
    )


def _csv_run(r: RunRow) -> dict[str, Any]:
    return {
        "model": r.model,
        "method": r.method,
        "seed": r.seed,
        "status": r.status,
        "test_acc": r.test_acc,
        "wall_seconds": r.wall_seconds,
        "train_seconds": r.train_seconds,
        "device": r.device,
        "device_name": r.device_name,
        "edges": r.edges,
        **{choice: r.decisions.get(choice, 0) for choice in CHOICES},
        "params_before": r.params[0],
        "params_after": r.params[1],
        "flops_before": r.flops[0],
        "flops_after": r.flops[1],
        "error": r.error,
    }


def _versus_random(
    groups: dict, models: Sequence[str], methods: Sequence[str]
) -> tuple[str, list[dict]]:
    """Each random run against the DNAT run whose number of changes it copied (same model and
    seed): the accuracy DNAT's choice of edges is worth over a random choice of as many."""
    if "random" not in methods:
        return "", []
    table = [pair for model in models for pair in _pairs(groups, model, methods)]
    lines = [
        "**DNAT vs random at equal changes** (a random run makes as many identity and none "
        "changes as the DNAT run of its seed, placed at random; accuracy difference in points, "
        "paired by seed):",
        "",
    ]
    for model in (m for m in models if groups[m, "random"]):
        pairs = [p for p in table if p["model"] == model]
        fair = [p for p in pairs if p["equal_changes"]]
        if not fair:
            lines.append(f"- {model}: no seed has both a DNAT and a random result yet")
            continue
        differences = [p["difference"] for p in fair]
        wins = sum(d > 0 for d in differences)
        lines.append(
            f"- {model}, {METHOD_LABELS[fair[0]['dnat_method']]} − random: "
            f"{statistics.fmean(differences):+.2f} points on average over {len(fair)} "
            f"seed{'s' if len(fair) != 1 else ''}; DNAT better on {wins} of {len(fair)}"
        )
        if len(fair) < len(pairs):
            lines[-1] += (
                f" ({len(pairs) - len(fair)} left out: the random run's changes differ from its "
                "DNAT run's, which was redone after it; delete the random run to redo it)"
            )
    return "\n".join(lines), table


def _pairs(groups: dict, model: str, methods: Sequence[str]) -> list[dict[str, Any]]:
    def finished(runs: Sequence[RunRow]) -> dict[int, RunRow]:
        return {r.seed: r for r in runs if r.status == "done" and r.test_acc is not None}

    pairs = []
    for seed, control in sorted(finished(groups[model, "random"]).items()):
        source = control.tie if control.tie in DNAT_METHODS else random_source(methods)
        dnat = finished(groups.get((model, source), [])).get(seed)
        if dnat is None:
            continue
        counts = [{k: r.decisions.get(k, 0) for k in (IDENTITY, NONE)} for r in (dnat, control)]
        pairs.append(
            {
                "model": model,
                "dnat_method": source,
                "seed": seed,
                "dnat_acc": dnat.test_acc,
                "random_acc": control.test_acc,
                "difference": dnat.test_acc - control.test_acc,
                IDENTITY: counts[0][IDENTITY],
                NONE: counts[0][NONE],
                "equal_changes": counts[0] == counts[1],
            }
        )
    return pairs


def _table3(groups: dict, models: Sequence[str], methods: Sequence[str]) -> tuple[str, list[dict]]:
    """Parameters and FLOPs of each method's trained network, % of the original's."""
    lines = [
        "### Table 3: the trained network's size, % of the original: parameters / FLOPs (mean "
        "over seeds of after ÷ before)",
        "",
        _md_row(["model", *(METHOD_LABELS[m] for m in methods)]),
        _md_row(["---"] * (len(methods) + 1)),
    ]
    table = []
    for model in models:
        cells = []
        for method in methods:
            done = [r for r in groups[model, method] if r.status == "done"]
            row = {"model": model, "method": method, "seeds": len(done)}
            for what in ("params", "flops"):
                sizes = [getattr(r, what) for r in done]
                row[f"{what}_before"] = _mean([b for b, _ in sizes])
                row[f"{what}_after"] = _mean([a for _, a in sizes])
                row[f"{what}_pct"] = _mean([100 * a / b for b, a in sizes if a is not None and b])
            table.append(row)
            cells.append(f"{_num(row['params_pct'], 1)} / {_num(row['flops_pct'], 1)}")
        lines.append(_md_row([model, *cells]))
    return "\n".join(lines), table


def _choices(groups: dict, models: Sequence[str], methods: Sequence[str]) -> tuple[str, list[dict]]:
    """Per DNAT method, and the random control (the agreement chance gives): mean edge counts
    per choice, how alike the seeds decided, and how sure θ was of its decisions."""
    table = [
        _choice_row(model, method, done)
        for model, method in itertools.product(models, methods)
        if method != "original"  # the original has no edges to choose
        and (done := [r for r in groups[model, method] if r.status == "done"])
    ]
    lines = [
        "### Edge choices: mean edges per choice over seeds; seed agreement (mean over edges of "
        "the fraction of seed pairs choosing alike) and edges on which all seeds agree",
        "",
        _md_row(["model", "method", "edges", *CHOICES, "seed agreement", "unanimous edges"]),
        _md_row(["---"] * (len(CHOICES) + 5)),
    ]
    for row in table:
        counts = (f"{row[c]:.1f}" for c in CHOICES)
        cells = [str(row["edges"]), *counts, _percent(row["agreement"]), _percent(row["unanimous"])]
        lines.append(_md_row([row["model"], METHOD_LABELS[row["method"]], *cells]))
    lines += [
        "",
        "### How sure DNAT was: θ's margin at decide (its largest allowed entry minus the second; "
        f"median and min over edges and seeds), unsure edges (margin < {UNSURE}) and edges whose "
        "decision flipped in the last architecture epochs (mean per seed), and the accuracy "
        "finalize lost (gated network before − finalized after, points: mean / max over seeds)",
        "",
        _md_row(_SURE_COLUMNS),
        _md_row(["---"] * len(_SURE_COLUMNS)),
    ]
    for row in table:
        cells = [
            _num(row["margin_median"], 3),
            _num(row["margin_min"], 3),
            _num(row["unsure"], 1),
            _num(row["flipped"], 1),
            _gap(row["finalize_gap_mean"], row["finalize_gap_max"]),
            _gap(row["finalize_gap_bn_mean"], row["finalize_gap_bn_max"]),
        ]
        lines.append(_md_row([row["model"], METHOD_LABELS[row["method"]], *cells]))
    return "\n".join(lines), table


_SURE_COLUMNS = (
    "model",
    "method",
    "median margin",
    "min margin",
    "unsure edges",
    "flipped edges",
    "finalize gap",
    "after BN re-estimation",
)


def _choice_row(model: str, method: str, done: Sequence[RunRow]) -> dict[str, Any]:
    edges = max(r.edges for r in done)
    agreed = agreement([r.changed for r in done], edges=edges)  # None under two seeds
    margins = [m for r in done for m in (r.margins or {}).values()]
    unsure = [sum(m < UNSURE for m in r.margins.values()) for r in done if r.margins]
    gaps = {key: _finalize_gaps(done, key) for key in ("acc_after", "acc_after_bn")}
    return {
        "model": model,
        "method": method,
        "seeds": len(done),
        "edges": edges,
        **{c: statistics.fmean(r.decisions.get(c, 0) for r in done) for c in CHOICES},
        "agreement": agreed.pairwise if agreed else None,
        "unanimous": agreed.unanimous if agreed else None,
        "margin_median": statistics.median(margins) if margins else None,
        "margin_min": min(margins, default=None),
        "unsure": _mean(unsure),
        "flipped": _mean([len(r.flipped) for r in done if r.flipped is not None]),
        "finalize_gap_mean": _mean(gaps["acc_after"]),
        "finalize_gap_max": max(gaps["acc_after"], default=None),
        "finalize_gap_bn_mean": _mean(gaps["acc_after_bn"]),
        "finalize_gap_bn_max": max(gaps["acc_after_bn"], default=None),
    }


def _finalize_gaps(done: Sequence[RunRow], after: str) -> list[float]:
    """Per run, the accuracy points finalize lost: the gated network's before, ``after``'s."""
    gaps = []
    for r in done:
        before, then = (r.finalize or {}).get("acc_before"), (r.finalize or {}).get(after)
        if before is not None and then is not None:
            gaps.append(100 * (before - then))
    return gaps


def _reach(rows: Sequence[RunRow]) -> str:
    """When will DNAT change the network: θ's reach lr·T and noise lr·√T, median over the
    DNAT runs, and the regime they put the study in."""
    done = [r.reach for r in rows if r.method in DNAT_METHODS and r.status == "done"]
    reach = [x for x in done if x and x.get("lr_T") is not None and x.get("lr_sqrt_T") is not None]
    if not reach:
        return ""
    median = {
        key: statistics.median(values) if (values := [x[key] for x in reach if key in x]) else None
        for key in ("theta_steps", "theta_lr", "lr_T", "lr_sqrt_T", "warmup_steps")
    }
    travel, noise = median["lr_T"], median["lr_sqrt_T"]
    low, high = min(x["lr_T"] for x in reach), max(x["lr_T"] for x in reach)
    spread = f" (runs: {low:.2f} to {high:.2f})" if f"{low:.2f}" != f"{high:.2f}" else ""
    return "\n".join(
        [
            "### When will DNAT change the network?",
            "",
            "Adam moves θ by about its learning rate per step, so in T steps an edge's θ can "
            f"travel about lr·T; a change needs about {NEEDED:g} (θ_same starts at 1, "
            "θ_identity and θ_none at 0). The steps' noise adds up like a random walk, to about "
            f"lr·√T: above ~{NOISY:g} the seeds' decisions are mostly noise. This study's "
            f"DNAT runs (median of {len(reach)}): T = {_num(median['theta_steps'], 0)} θ steps "
            f"(after {_num(median['warmup_steps'], 0)} ω-only warm-up steps), θ lr = "
            f"{_num(median['theta_lr'], 3, 'g')}: lr·T = {travel:.2f}{spread}, lr·√T = "
            f"{noise:.3f}.",
            "",
            _regime(travel, noise),
        ]
    )


def _regime(travel: float, noise: float) -> str:
    """Which regime a study's median lr·T and lr·√T put it in, and what to change."""
    steps = "more architecture epochs (--arch-epochs) or a smaller --batch-size"
    steps_first = (
        f"aise θ's steps ({steps}) before raising θ's lr: steps grow the reach faster than the "
        "noise (lr·T ÷ lr·√T = √T), a larger lr grows both alike."
    )
    if travel < NEEDED:
        noisy = ", and what it changes is mostly noise" if noise > NOISY else ""
        return (
            f"**Out of reach**: θ cannot travel the {NEEDED:g} a change needs, so DNAT "
            f"keeps almost every edge as it is{noisy}. R{steps_first}"
        )
    if noise > NOISY:
        return (
            "**Noise**: θ can travel far enough, but the seeds' decisions are mostly noise. "
            f"Give θ more steps ({steps}) at a smaller lr: lr·T stays above "
            f"{NEEDED:g} while lr·√T falls."
        )
    return (
        "**In reach**: θ can travel far enough and the noise stays small, so the seeds' "
        "decisions are mostly signal (the margins and seed agreement above say how sure). "
        f"Should DNAT change too little, r{steps_first}"
    )


def _failures(rows: Sequence[RunRow]) -> str:
    bad = [r for r in rows if r.status != "done"]
    if not bad:
        return ""
    lines = ["### Runs without a result yet (rerun the same command to retry or resume them)", ""]
    lines += [
        f"- {r.model} {r.method} seed {r.seed}: {r.status}" + (f" — {r.error}" if r.error else "")
        for r in bad
    ]
    return "\n".join(lines)


def _plot(
    groups: dict, models: Sequence[str], methods: Sequence[str], data: str, path: Path
) -> None:
    """Per-seed accuracy, the methods side by side per model, the mean as a bar."""
    from matplotlib.figure import Figure  # no pyplot: no global backend, Agg draws the PNG

    fig = Figure(figsize=(max(4.5, 1.2 + 1.6 * len(models)), 3.6), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(methods)
    for k, method in enumerate(methods):
        for i, model in enumerate(models):
            accs = [
                r.test_acc
                for r in groups[model, method]
                if r.status == "done" and r.test_acc is not None
            ]
            x = i - 0.4 + width * (k + 0.5)
            spread = [x + width * 0.3 * (j / max(len(accs) - 1, 1) - 0.5) for j in range(len(accs))]
            ax.scatter(
                spread, accs, s=18, color=f"C{k}", label=METHOD_LABELS[method] if i == 0 else None
            )
            if accs:
                ax.hlines(statistics.fmean(accs), x - width * 0.4, x + width * 0.4, color=f"C{k}")
    ax.set_xticks(range(len(models)), models)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{data}: test accuracy per seed (bar: mean)", fontsize="medium")
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=120)


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _num(value: float | None, digits: int, kind: str = "f") -> str:
    if value is None:
        return MISSING
    if kind == "f":  # no "-0.00" for a difference that rounds to nothing
        value = round(value, digits) + 0.0
    return f"{value:.{digits}{kind}}"


def _gap(mean: float | None, most: float | None) -> str:
    return MISSING if mean is None else f"{_num(mean, 2)} / {_num(most, 2)}"


def _md_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _write_csv(path: Path, table: Sequence[dict]) -> None:
    buffer = io.StringIO()
    if table:
        writer = csv.DictWriter(buffer, fieldnames=list(table[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
    path.write_text(buffer.getvalue())


def _hours(hours: float) -> str:
    return f"{hours:.2f}" if hours >= 1 else f"{hours:.3f}"


def _percent(fraction: float | None) -> str:
    return MISSING if fraction is None else f"{100 * fraction:.1f} %"


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1]))
