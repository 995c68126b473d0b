"""drawing: diagrams from checkpoints and SPECs, written as DOT, SVG or PNG by a layout program;
``fxdnat render`` and the cell diagram ``fxdnat transform`` leaves beside its checkpoint."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from checkpoints import save_checkpoint
from click.testing import CliRunner
from diagrams import BRANCH, DECISIONS, svg_edges, svg_texts

from fxdnat import drawing
from fxdnat.cli import main
from fxdnat.engine import Trainer
from fxdnat.frontend import trace
from fxdnat.passes import discover
from fxdnat.passes import render as rendering
from fxdnat.specs import build_model


@pytest.fixture(scope="module")
def resnet_ckpt(tmp_path_factory) -> Path:
    return save_checkpoint(
        tmp_path_factory.mktemp("drawing") / "ckpt.pt", "zoo:resnet20", DECISIONS
    )


@pytest.fixture(scope="module")
def subject(resnet_ckpt) -> rendering.Subject:
    return drawing.from_checkpoint(resnet_ckpt)


def test_png_renders(subject, tmp_path):
    path = drawing.write(rendering.render(subject, cell="layer1.0"), tmp_path / "cell.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 300 and height > 150


def test_dot_is_deterministic_and_needs_no_layout_program(subject, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither `dot` nor `graphviz-pure` here
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    assert drawing.layout_program() is None
    first = drawing.write(rendering.render(subject), tmp_path / "a.dot").read_text()
    second = drawing.write(rendering.render(subject), tmp_path / "b.dot").read_text()
    assert first == second and first.startswith("digraph cells {")
    assert 'id="layer1.0:0"' in first
    with pytest.raises(drawing.LayoutError) as error:
        drawing.write(rendering.render(subject), tmp_path / "a.svg")
    assert str(error.value) == (
        "cannot lay out a.svg: no Graphviz layout program (neither `dot` on PATH nor "
        "`graphviz-pure`); install one with `pip install graphviz-pure` (or your system's "
        "graphviz package), or write a .dot file instead"
    )


def test_layout_program_is_found_beside_the_python_when_not_on_path(tmp_path, monkeypatch):
    venv_bin = tmp_path / "bin"
    venv_bin.mkdir()
    program = venv_bin / "graphviz-pure"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    assert drawing.layout_program() == str(program)


def test_architecture_stage_checkpoint_shows_current_preferences(tmp_path):
    path = save_checkpoint(tmp_path / "arch.pt", "zoo:resnet20", DECISIONS, stage="arch")
    result = CliRunner().invoke(main, ["render", str(path), "--out", str(tmp_path / "c.svg")])
    assert result.exit_code == 0, result.output
    assert "architecture stage (epoch 2 of 4); drawn with the choices θ prefers now" in (
        result.output
    )
    edges = svg_edges(tmp_path / "c.svg")
    assert edges["layer1.0:0"]["class"] == "edge dnat identity"
    caption = " ".join(svg_texts(tmp_path / "c.svg"))
    assert "architecture stage (epoch 2 of 4): current preferences, not finalized" in caption


def test_spec_renders_the_untransformed_model(tmp_path):
    out = tmp_path / "spec.svg"
    result = CliRunner().invoke(main, ["render", "zoo:resnet20", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote {out}\n"
    edges = svg_edges(out)
    assert {e["class"] for e in edges.values()} == {"edge dnat same"}
    assert "zoo:resnet20, untransformed (every edge as built), 269,722 parameters" in " ".join(
        svg_texts(out)
    )


def test_cli_errors_are_one_line_with_exit_2(resnet_ckpt, tmp_path):
    def run(*args: str):
        return CliRunner().invoke(main, ["render", str(resnet_ckpt), *args])

    result = run("--out", str(tmp_path / "x.jpg"))
    assert result.exit_code == 2
    assert result.output == (
        f"Error: unknown output format '.jpg' for {tmp_path / 'x.jpg'}; supported: .dot, .png, "
        ".svg\n"
    )
    result = run("--out", str(tmp_path / "x.svg"), "--cell", "layer9")
    assert result.exit_code == 2
    assert result.output == (
        "Error: unknown cell 'layer9' in zoo:resnet20; cells with edges: layer1.0, layer1.1, "
        "layer1.2, layer2.0, layer2.1, layer2.2, layer3.0, layer3.1, layer3.2\n"
    )
    result = run("--out", str(tmp_path / "x.svg"), "--view", "net", "--cell", "layer1.0")
    assert result.exit_code == 2
    assert result.output == (
        "Error: a cell is chosen in the cell view only; drop --cell for --view net\n"
    )
    result = CliRunner().invoke(main, ["render", "nowhere/ckpt.pt", "--out", "x.svg"])
    assert result.exit_code == 2 and result.output == "Error: no checkpoint at nowhere/ckpt.pt\n"


def test_no_layout_program_is_exit_2_and_dot_still_works(resnet_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    result = CliRunner().invoke(main, ["render", str(resnet_ckpt), "--out", "x.png"])
    assert result.exit_code == 2
    assert result.output.startswith("Error: cannot lay out x.png: no Graphviz layout program")
    out = tmp_path / "cells.dot"
    result = CliRunner().invoke(main, ["render", str(resnet_ckpt), "--out", str(out)])
    assert result.exit_code == 0 and out.read_text().startswith("digraph cells {")


def test_transform_leaves_a_cell_diagram_and_survives_a_failing_one(tmp_path, caplog, monkeypatch):
    """The engine's hook: a diagram beside the checkpoint, or a warning and the run kept."""
    gm = trace(build_model("zoo:resnet20").model, torch.zeros(1, 3, 32, 32))
    edges = discover(gm)
    trainer = SimpleNamespace(
        out=tmp_path,
        dnat=SimpleNamespace(traced=gm, edges=edges),
        state=SimpleNamespace(decisions={e.name: "same" for e in edges}),
        config=SimpleNamespace(tie="cell"),
    )
    summary = {"spec": "zoo:resnet20", "data": "digits", "test_acc": 0.9}
    summary |= {"params_before": 10, "params_after": 10}
    Trainer._draw_cells(trainer, dict(summary))  # a plain copy: the hook adds to it
    drawn = dict(summary)
    Trainer._draw_cells(trainer, drawn)
    assert drawn["artifacts"] == {"cell diagram": str(tmp_path / "cells.svg")}
    assert svg_edges(tmp_path / "cells.svg")["layer1.0:0"]["label"] == BRANCH

    def broken(*args, **kwargs):
        raise RuntimeError("graphviz-pure crashed")

    monkeypatch.setattr(drawing, "write", broken)
    failed = dict(summary)
    with caplog.at_level(logging.WARNING):
        Trainer._draw_cells(trainer, failed)
    assert "artifacts" not in failed
    assert "could not draw the cell diagram (graphviz-pure crashed); the checkpoint is kept" in (
        caplog.text
    )


@pytest.mark.slow
def test_fxdnat_transform_prints_the_cell_diagram_path(tmp_path):
    out = tmp_path / "run"
    args = ["transform", "zoo:resnet20", "--recipe", "quick", "--epochs", "2", "--arch-epochs"]
    args += ["1", "--limit", "64", "--batch-size", "32", "--out", str(out)]
    result = CliRunner().invoke(main, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert re.search(rf"cell diagram +│ {re.escape(str(out / 'cells.svg'))}", result.output)
    assert len(svg_edges(out / "cells.svg")) >= 4
    assert (out / "checkpoint.pt").is_file()
