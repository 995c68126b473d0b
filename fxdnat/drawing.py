"""Diagrams as files: load a checkpoint or a model SPEC, draw it with the render pass, write DOT,
SVG or PNG (laid out by Graphviz's ``dot`` or the pip-installed ``graphviz-pure``)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import graphviz
from torch import fx

from fxdnat import checkpoint as ckpt
from fxdnat import tasks
from fxdnat.cost import count_params
from fxdnat.ir import SAME, Edge
from fxdnat.passes import discover
from fxdnat.passes.decide import margins as theta_margins
from fxdnat.passes.render import Subject, render

log = logging.getLogger(__name__)

FORMATS = (".dot", ".png", ".svg")
PNG_DPI = 144  # twice the 72 of SVG's points: sharp on high-density screens, still small


class LayoutError(ValueError):
    """No Graphviz layout program to turn DOT into SVG or PNG."""


# ------------------------------------------------------------------------------------ inputs
def from_spec(spec: str, *, granularity: str = "branch", num_classes: int = 10) -> Subject:
    """The untransformed model of ``spec``: every edge "same" (built for the task
    fxdnat.tasks.for_spec gives it: ``num_classes`` classes, or a zoo language model's bytes)."""
    task = tasks.for_spec(spec, num_classes=num_classes)
    built, gm = ckpt.build_traced({"spec": spec, **task.model_fields(), "kwargs": {}})
    edges = discover(gm, granularity)
    params = count_params(gm)
    return Subject(gm, edges, {e.name: SAME for e in edges}, built.spec, params=(params, params))


def from_checkpoint(path: str | Path, *, trust_code: bool = False) -> Subject:
    """The network of a checkpoint: its decisions, or, in the architecture stage, argmax θ.
    ``trust_code``: see ``fxdnat.checkpoint.restore``."""
    data = ckpt.load(path)
    restored = ckpt.restore(data, trust_code=trust_code)
    final, decisions, searching = restored.final()  # still searching: what θ prefers now
    status, progress = ("preferences" if searching else "final"), None
    if searching:
        recipe, state = data.get("recipe") or {}, data["state"]
        progress = f"epoch {state['epoch']} of {recipe.get('arch_epochs', '?')}"
        if state["stage"] == "search":  # NAT: the source network on the supernet's weights
            total = (recipe.get("nat") or {}).get("search_epochs", "?")
            progress = f"NAT's search, epoch {state.get('search_epoch', 0)} of {total}"
    metrics = [m for m in data["state"].get("metrics") or [] if "test_acc" in m]
    margins = data["state"].get("margins")
    if searching and restored.arch is not None:  # the margins of the preferences shown
        margins = theta_margins(restored.module)
    return Subject(
        gm=restored.traced,
        edges=restored.edges,
        decisions=decisions,
        spec=data["model"]["spec"],
        status=status,
        tie=data.get("tie"),
        method=data.get("method") or "dnat",
        data=(data.get("config") or {}).get("data"),
        accuracy=metrics[-1]["test_acc"] if metrics else None,
        loss=metrics[-1]["test_loss"] if metrics and "perplexity" in metrics[-1] else None,
        params=(count_params(restored.traced), count_params(final)),
        progress=progress,
        margins=margins or None,
    )


def load(source: str, *, granularity: str = "branch", trust_code: bool = False) -> Subject:
    """A checkpoint file, or else a model SPEC."""
    if Path(source).is_file() or (":" not in source and ("/" in source or "." in source)):
        # a missing file gets the checkpoint loader's message
        return from_checkpoint(source, trust_code=trust_code)
    return from_spec(source, granularity=granularity)


def draw_run(
    path: str | Path,
    gm: fx.GraphModule,
    edges: Sequence[Edge],
    decisions: Mapping[str, str],
    summary: Mapping,
    *,
    tie: str | None = None,
) -> Path:
    """The cell diagram of a finished run, from the engine's summary (``fxdnat transform``)."""
    subject = Subject(
        gm,
        list(edges),
        dict(decisions),
        summary["spec"],
        status="final",
        tie=tie,
        data=summary.get("data"),
        accuracy=summary.get("test_acc"),
        loss=summary.get("test_loss") if summary.get("perplexity") is not None else None,
        params=(summary["params_before"], summary["params_after"]),
        margins=summary.get("margins") or None,
        method=summary.get("method") or "dnat",
    )
    return write(render(subject), path)


# ----------------------------------------------------------------------------------- outputs
def write(dot: graphviz.Digraph, path: str | Path) -> Path:
    """Write ``dot`` in the format of ``path``'s extension (.dot needs no layout program)."""
    path = Path(path)
    program = check_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if program is None:
        path.write_text(dot.source)
    else:
        _lay_out(program, dot.source, path.suffix.lower()[1:], path)
    return path


def check_format(path: str | Path) -> str | None:
    """The layout program that writes ``path`` (None for .dot); a clear error if there is none."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(
            f"unknown output format {suffix or '(no extension)'!r} for {path}; "
            f"supported: {', '.join(FORMATS)}"
        )
    if suffix == ".dot":
        return None
    program = layout_program()
    if program is None:
        raise LayoutError(
            f"cannot lay out {path.name}: no Graphviz layout program (neither `dot` on PATH nor "
            "`graphviz-pure`); install one with `pip install graphviz-pure` (or your system's "
            "graphviz package), or write a .dot file instead"
        )
    return program


def layout_program() -> str | None:
    """Graphviz's ``dot`` when on PATH, else ``graphviz-pure`` (on PATH or beside this Python)."""
    for name, where in (("dot", None), ("graphviz-pure", None)):
        found = shutil.which(name, path=where)
        if found:
            return found
    # a virtual environment's bin/ is often not on PATH when its python is called directly
    return shutil.which("graphviz-pure", path=str(Path(sys.executable).parent))


def _lay_out(program: str, source: str, fmt: str, path: Path) -> None:
    args = [program, f"-T{fmt}"] + ([f"-Gdpi={PNG_DPI}"] if fmt == "png" else [])
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # then renamed: never half a file
    try:
        done = subprocess.run(
            [*args, f"-o{tmp}"], input=source, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()}")
        if done.stderr.strip():  # graphviz-pure warns about glyph widths it guesses
            log.debug("%s: %s", Path(program).name, done.stderr.strip())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
