"""Running a study: every job of a ``ReproConfig`` (or of its shard) not yet done, one after
another, or one subprocess per GPU when several are visible, each taking the next job that is
ready; progress goes to a ``ReproReporter``.

Every run trains into ``OUT/<model>/<method>/seed<k>/`` (``<method>@<budget>`` in a budget
sweep) through `fxdnat.engine.transform`, so a rerun of the same study skips finished runs
(``summary.json``) and resumes cut ones (``checkpoint.pt``); each attempt is recorded in the
run's ``run.json`` (`fxdnat.repro.records`).
Ctrl-C or SIGTERM stop the study, and reach the run subprocesses as Ctrl-C: they save first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fxdnat._files import one_line
from fxdnat.config import parse_budget
from fxdnat.repro.layout import (
    CHECKPOINT,
    METRICS,
    OUTPUT_LOG,
    RUN_LOG,
    RUN_RECORD,
    SUMMARY,
    read_json,
)
from fxdnat.repro.plan import Job, ReproConfig, claim, jobs, run_config, shard
from fxdnat.repro.records import RunLog, close_attempt, open_attempt, planned_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    """What happened to a job in this invocation."""

    job: Job
    status: str  # "skipped" (already done), "done", "failed", "interrupted"
    resumed: bool = False
    seconds: float = 0.0  # wall time of this attempt
    test_acc: float | None = None  # fraction, from the run's summary
    error: str | None = None


class ReproReporter:
    """Progress of a study; the CLI prints it, the default logs."""

    def begin(self, todo: Sequence[Job], pending: Sequence[Job]) -> None:
        log.info("%d runs, %d to train", len(todo), len(pending))

    def run_start(self, job: Job, index: int, total: int, resumed: bool) -> None:
        log.info("[%d/%d] %s: %s", index + 1, total, job, "resuming" if resumed else "training")

    def epoch_end(self, job: Job, record: dict) -> None:
        log.debug("%s: epoch %d %s", job, record["epoch"], record["stage"])

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
        if record["stage"] == "search":  # NAT: the source's accuracy on the policy split
            result = f"source {100 * record['source_acc']:.2f}% (policy split)"
        else:
            result = f"test {100 * record['test_acc']:.2f}%"
        self.write(
            f"    {job} epoch {record['epoch']} {record['stage']}: {result}, "
            f"{record['seconds']:.0f} s"
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
    todo = jobs(config)
    check_budgets(config, todo)
    claim(config)
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


def check_budgets(config: ReproConfig, todo: Sequence[Job]) -> None:
    """Refuse a sweep whose smallest budget a model cannot reach, before anything is written:
    each model's cheapest job is checked as its run's start would check it.

    Raises:
        fxdnat.passes.BudgetError: names the budget and the smallest reachable cost.
    """
    from fxdnat.engine.setup import check_reachable  # lazy: the engine imports torch

    cheapest: dict[str, tuple[float, Job]] = {}  # spec → (smallest fraction, its job)
    for job in todo:
        if job.budget is not None:
            fraction = min(parse_budget(job.budget).values())
            if job.spec not in cheapest or fraction < cheapest[job.spec][0]:
                cheapest[job.spec] = (fraction, job)
    for _, job in cheapest.values():
        check_reachable(run_config(config, job))


def run_one(config: ReproConfig, job: Job, reporter: ReproReporter | None = None) -> RunResult:
    """Train (or resume, or skip) one job, recording the attempt in its ``run.json``.

    An exception is recorded and returned as a failed result; an interrupt (Ctrl-C, SIGTERM, a
    ``SystemExit``) is recorded and raised again, since it asks the whole study to stop.
    """
    # lazy: the engine imports torch (and transform is looked up at each call, as tests replace it)
    from fxdnat.engine import Interrupted
    from fxdnat.engine import transform as train

    folder = job.folder(config.out)
    if (folder / SUMMARY).exists():
        return RunResult(job, "skipped")
    resumed = (folder / CHECKPOINT).exists()
    if not resumed:  # a fresh start: the log of an attempt that saved nothing is stale
        (folder / METRICS).unlink(missing_ok=True)
    attempt = open_attempt(folder, job, config, resumed)
    start = time.perf_counter()
    try:
        summary = train(
            run_config(config, job), RunLog(folder / RUN_LOG, job, reporter), resume=resumed
        )
    except BaseException as exc:
        seconds = time.perf_counter() - start
        stop = isinstance(exc, (Interrupted, KeyboardInterrupt, SystemExit))
        status = "interrupted" if stop else "failed"
        close_attempt(folder, attempt, status, seconds, exc, planned_device(config.device))
        if stop or not isinstance(exc, Exception):
            raise
        log.warning("%s failed: %s", job, one_line(exc))
        return RunResult(job, "failed", resumed, seconds, error=one_line(exc))
    seconds = time.perf_counter() - start
    close_attempt(folder, attempt, "done", seconds, device=summary["device"])
    return RunResult(job, "done", resumed, seconds, test_acc=summary["test_acc"])


def _run_reported(
    config: ReproConfig, job: Job, index: int, total: int, reporter: ReproReporter
) -> RunResult:
    resumed = (job.folder(config.out) / CHECKPOINT).exists()
    reporter.run_start(job, index, total, resumed)
    result = run_one(config, job, reporter)
    reporter.run_end(result, index, total)
    return result


def _gpus(device: str) -> list[str]:
    """The CUDA devices a study may spread over, as CUDA_VISIBLE_DEVICES entries."""
    if device == "cpu":
        return []
    import torch  # lazy: importing fxdnat.repro must not import torch (`fxdnat repro --report`)

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
    from fxdnat.engine import Interrupted  # lazy: the engine imports torch

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
        with self.lock:
            for process in self.live:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGINT)

    @contextlib.contextmanager
    def forward_sigterm(self) -> Iterator[None]:
        """A launcher's SIGTERM to this process reaches the runs as Ctrl-C (they save)."""

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
            close_attempt(folder, attempt, "failed", seconds, RuntimeError(error), "cuda")
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
