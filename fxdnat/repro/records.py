"""A run's own record, ``run.json``: every attempt at a run of the study (fresh or resumed),
with its wall time, host, device and error, and the totals a report reads (the last status, the
summed wall time, from which a study's cost is counted). An attempt killed outright cannot time
itself: the next one costs it up to its folder's last save. Also the run's log.txt, written by
``RunLog`` as the engine reports.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from fxdnat._files import one_line, write_json
from fxdnat.repro.layout import CHECKPOINT, METRICS, RUN_LOG, RUN_RECORD, read_json
from fxdnat.repro.plan import Job, ReproConfig

if TYPE_CHECKING:
    from fxdnat.repro.run import ReproReporter


class RunLog:
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
        if name == "search_epoch" and self.reporter is not None:  # NAT's search: its epochs
            self.reporter.epoch_end(self.job, data)

    def finish(self, summary: dict) -> None:
        self._write(f"finish {json.dumps(summary)}")


def open_attempt(folder: Path, job: Job, config: ReproConfig, resumed: bool) -> dict:
    """Append a "running" attempt to run.json; an earlier attempt still "running" was killed
    outright, and its wall time is taken up to its last save."""
    record = read_json(folder / RUN_RECORD) or {
        "spec": job.spec,
        "model": job.model,
        "method": job.method,
        "seed": job.seed,
        "data": config.data,
        **({"budget": job.budget} if job.budget is not None else {}),
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


def close_attempt(
    folder: Path,
    attempt: dict,
    status: str,
    seconds: float,
    error: BaseException | None = None,
    device: str | None = None,
) -> None:
    """End ``attempt`` in run.json: its status, wall time and device, and the error that ended
    it with its traceback."""
    record = read_json(folder / RUN_RECORD)
    stored = next(a for a in record["attempts"] if a["start_time"] == attempt["start_time"])
    stored.update(status=status, wall_seconds=seconds, **_describe_device(device))
    if error is not None:
        stored["error"] = one_line(error) if str(error) else type(error).__name__
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
    import torch  # lazy: importing fxdnat.repro must not import torch (`fxdnat repro --report`)

    kind = device.split(":")[0]
    if kind == "cuda":
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        threads = torch.get_num_threads()
        name = f"{_cpu_name()}, {threads} thread{'s' if threads > 1 else ''}"
    return {"device": kind, "device_name": name}


def planned_device(device: str) -> str:
    """The device a run that failed was meant for (as the engine picks it)."""
    import torch  # lazy: as above

    return "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "CPU"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
