"""Atomic file writes, without torch: a checkpoint, a run's summary or a study's records is
either the old file or the new one, never a torn one, whenever the process dies; and the checks
that tell a user, before any work, that a path they gave cannot be written."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

# A run folder (fxdnat.engine writes it; fxdnat.repro reads it without torch): the checkpoint,
# written atomically after every epoch; one line per finished epoch; the result, written once
# the run is done; the cell diagram of the result.
CHECKPOINT, METRICS, SUMMARY = "checkpoint.pt", "metrics.jsonl", "summary.json"
CELLS = "cells.svg"


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success flush, fsync and rename it over
    ``path`` (``os.replace`` is atomic within a folder); on any error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # name the file the caller asked for, not the temporary one
        raise type(exc)(exc.errno, exc.strerror, str(path)) from exc
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_temporaries(folder: str | Path, names: Iterable[str]) -> list[Path]:
    """Delete what ``atomic_file`` left of ``names`` in ``folder`` when a process was killed
    mid-write (a kill -9 skips the clean-up). Only call it where no other process writes."""
    folder = Path(folder)
    stale = [tmp for name in names for tmp in folder.glob(f".{glob.escape(name)}.*.tmp")]
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def check_writable(path: str | Path) -> None:
    """Refuse, naming ``path``, a file that could not be written: its folder (or the nearest
    one that exists, if it is yet to be made) must be a folder that takes a new file. The probe
    file is removed at once; nothing else is created."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot write {path}: it is a folder; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"cannot write {path}: the file is read-only; choose another name")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"cannot write {path}: {folder} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".fxdnat-probe.", dir=folder)
    except OSError as exc:
        raise ValueError(
            f"cannot write {path}: no new file can be made in {folder} ({exc.strerror}); "
            "choose a folder you can write to"
        ) from exc
    os.close(fd)
    os.unlink(probe)


def write_json(path: str | Path, data: Any) -> None:
    """``data`` as indented JSON, atomically: a reader never sees half a file."""
    with atomic_file(path, "w") as f:
        f.write(json.dumps(data, indent=2) + "\n")


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (a KeyError's without its quotes), its type's name
    when it has none: what the CLI and a study's records print."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(text.split()) or type(exc).__name__
