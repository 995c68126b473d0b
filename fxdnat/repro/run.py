"""Reproducibility harness: runs a multi-seed study of (model, method, seed) runs, resumable
and shardable; `fxdnat.repro_report` aggregates it into the paper's tables (Kim & Lee 2020: mean
/ std / cost over 5 seeds) and into how sure DNAT was of its decisions. The report's names are
re-exported here, so ``fxdnat.repro`` stays the one import of a study.

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
import dataclasses
import json
import logging
import os
import platform
import re
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fxdnat._files import write_json
from fxdnat.allocator import tune_cpu_allocator
from fxdnat.ir import IDENTITY, NONE
from fxdnat.repro.layout import (
    CHECKPOINT,
    DEFAULT_METHODS,
    DNAT_METHODS,
    MANIFEST,
    METHODS,
    METRICS,
    OUTPUT_LOG,
    REPORT,  # noqa: F401  re-exported, with the report's names below
    RUN_LOG,
    RUN_RECORD,
    SUMMARY,
    model_name,
    random_source,
    read_json,
)
from fxdnat.repro.report import (  # noqa: F401  re-exported: see the module docstring
    METHOD_LABELS,
    MISSING,
    Agreement,
    Report,
    RunRow,
    aggregate,
    agreement,
    collect,
)

log = logging.getLogger(__name__)

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
    summary = read_json(folder / SUMMARY)
    if not summary:
        record = read_json(folder / RUN_RECORD)
        status = record.get("status", "not run")
        why = "failed" if status == "failed" else f"has no result yet ({status})"
        raise RuntimeError(
            f"its DNAT run ({source}) {why}; a random run copies that run's number of changes: "
            "rerun the study to retry both"
        )
    changes = summary.get("changes")
    if isinstance(changes, str):  # counted by kind of edge by the engine
        return changes
    return changes_text(summary.get("changed", {}))  # a summary written before it did


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
    manifest = read_json(path) or {"settings": settings, "recipes": {}}
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
    """Run one job in ``python -m fxdnat.repro`` on one GPU; its output goes to OUTPUT_LOG."""
    folder = job.folder(config.out)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": dataclasses.asdict(dataclasses.replace(config, shard=None)),
        "job": dataclasses.asdict(job),
    }
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
    start = time.perf_counter()
    with (folder / OUTPUT_LOG).open("a") as output:
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
    record = read_json(folder / RUN_RECORD)
    attempt = record["attempts"][-1] if record.get("attempts") else None
    if attempt is not None and attempt["pid"] != pid:
        attempt = None  # an earlier invocation's: this process died before it recorded anything
    if attempt is None or attempt["status"] == "running":
        error = f"the run's process exited with code {code}; see {folder / OUTPUT_LOG}"
        if attempt is not None:
            _close_attempt(folder, attempt, "failed", seconds, RuntimeError(error), "cuda")
        return RunResult(job, "failed", seconds=seconds, error=error)
    summary = read_json(folder / SUMMARY)
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
    record = read_json(folder / RUN_RECORD) or {
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
    record = read_json(folder / RUN_RECORD)
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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _version() -> str:
    from fxdnat import __version__

    return __version__
