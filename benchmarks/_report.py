"""What the benchmarks share besides timing: the machine's description and docs/performance.md.

Each benchmark script owns one section of docs/performance.md, between the marker comments
``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``; it rewrites only what is between its own
markers, so several scripts write into one file.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "performance.md"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's guess elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return found.group(1).strip() if found else "unknown"


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine() -> dict[str, str]:
    """CPU, cores usable by this process, torch threads, versions: the facts a timing depends on."""
    return {
        "CPU": cpu_model(),
        "cores usable": str(usable_cores()),
        "torch threads (intra-op / inter-op)": (
            f"{torch.get_num_threads()} / {torch.get_num_interop_threads()}"
        ),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "OS": f"{platform.system()} {platform.release()}",
    }


def load_average() -> str:
    """1-, 5- and 15-minute load averages, to tell a busy machine from a quiet one."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def command_line() -> str:
    """The command that ran this process, as one would type it from the repository root."""
    argv = sys.argv[1:]
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    prog = f"python -m {spec.name}" if spec is not None else f"python {sys.argv[0]}"
    return " ".join([prog, *argv])


def markdown_table(header: list[str], rows: list[list[str]], align: str = "") -> str:
    """A GitHub table; ``align`` has one letter per column, "l" or "r" (default "l")."""
    align = align.ljust(len(header), "l")
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def write_section(name: str, body: str, path: Path = DOC) -> None:
    """Replace the text between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in ``path``.

    The markers are appended at the end of the file (created if missing) the first time.
    """
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else "# Performance\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def publish(name: str, body: str, write: bool) -> None:
    """Print a benchmark's section, and write it into docs/performance.md unless ``--no-write``."""
    print(body)
    if write:
        write_section(name, body)
