"""render: cell and net diagrams whose edges, colours, dashes and labels follow the decisions."""

from __future__ import annotations

import importlib
import logging
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from checkpoints import save_checkpoint
from click.testing import CliRunner
from support import BuiltinSum, InplaceAdd

from fxdnat import checkpoint as ckpt
from fxdnat.cli import main
from fxdnat.engine import Trainer
from fxdnat.frontend import trace
from fxdnat.passes import discover
from fxdnat.specs import build_model

# the module, whatever fxdnat.passes exports under the pass's name
rendering = importlib.import_module("fxdnat.passes.render")
SVG = "{http://www.w3.org/2000/svg}"
BRANCH = "conv3x3-bn-relu-conv3x3-bn"
# forced on a ResNet20 with one θ row per edge: a branch turned into the identity, a skip and a
# downsampling shortcut removed (each join keeps a live operand)
DECISIONS = {"layer1.0:0": "identity", "layer1.1:1": "none", "layer3.0:1": "none"}


@pytest.fixture(scope="module")
def resnet_ckpt(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("render") / "ckpt.pt", "zoo:resnet20", DECISIONS)


@pytest.fixture(scope="module")
def subject(resnet_ckpt) -> rendering.Subject:
    return rendering.from_checkpoint(resnet_ckpt)


def svg_edges(path: Path) -> dict[str, dict]:
    """The DNAT edges of an SVG by edge name (an op edge is a box): stroke colour, dash pattern
    and label text."""
    root = ET.parse(path).getroot()
    found = {}
    for g in root.iter(f"{SVG}g"):
        if "dnat" not in g.get("class", "").split():
            continue
        stroke = next(p for p in g.iter(f"{SVG}path"))
        found[g.get("id")] = {
            "class": g.get("class"),
            "stroke": stroke.get("stroke"),
            "dashed": stroke.get("stroke-dasharray") is not None,
            "label": "".join(t.text or "" for t in g.iter(f"{SVG}text")),
        }
    return found


def svg_texts(path: Path) -> list[str]:
    return [t.text or "" for t in ET.parse(path).getroot().iter(f"{SVG}text")]


def test_cell_svg_draws_every_edge_with_the_style_of_its_decision(subject, tmp_path):
    path = rendering.write(rendering.render(subject, cell="layer1.0"), tmp_path / "cell.svg")
    edges = svg_edges(path)
    assert set(edges) == {"layer1.0:0", "layer1.0:1"}
    assert edges["layer1.0:0"] == {
        "class": "edge dnat identity",
        "stroke": "#d62728",
        "dashed": False,
        "label": f"identity (was {BRANCH})",
    }
    assert edges["layer1.0:1"] == {
        "class": "edge dnat same",
        "stroke": "black",
        "dashed": False,
        "label": "skip",
    }
    texts = svg_texts(path)
    assert {"input", "+", "output", "relu", "layer1.0"} <= set(texts)


def test_cell_view_draws_each_kind_of_cell_once_with_removed_edges_dashed_grey(subject, tmp_path):
    path = rendering.write(rendering.render(subject), tmp_path / "cells.svg")
    edges = svg_edges(path)
    # one diagram per (structure, decisions): layer1.0, layer1.1, the five untouched plain
    # blocks (drawn as layer1.2), the untouched downsampling block layer2.0, and layer3.0
    cells = ["layer1.0", "layer1.1", "layer1.2", "layer2.0", "layer3.0"]
    assert set(edges) == {f"{cell}:{role}" for cell in cells for role in "01"}
    for name in ("layer1.1:1", "layer3.0:1"):
        assert edges[name]["stroke"] == "#9a9a9a" and edges[name]["dashed"], name
        assert edges[name]["class"] == "edge dnat none"
    assert edges["layer1.1:1"]["label"] == "none (was skip)"
    assert edges["layer3.0:1"]["label"] == "none (was slice-pad)"
    assert edges["layer2.0:1"]["label"] == "slice-pad" and edges["layer2.0:0"]["label"] == BRANCH
    texts = svg_texts(path)
    assert "layer1.2, layer2.1, ..., layer3.2 (5 cells alike)" in texts
    caption = " ".join(texts)
    assert "zoo:resnet20 on digits, DNAT, tie full, test accuracy 70.0%" in caption
    assert "3 of 18 edges changed (1 identity, 2 none)" in caption


def test_net_view_has_every_edge_clusters_legend_and_caption(subject, tmp_path):
    path = rendering.write(rendering.render(subject, view="net"), tmp_path / "net.svg")
    edges = svg_edges(path)
    assert len(edges) == 18
    assert edges["layer1.0:0"]["stroke"] == "#d62728"
    assert edges["layer1.1:1"]["dashed"] and not edges["layer1.2:1"]["dashed"]
    root = ET.parse(path).getroot()
    clusters = {
        g.find(f"{SVG}title").text for g in root.iter(f"{SVG}g") if g.get("class") == "cluster"
    }
    assert {"cluster_layer1", "cluster_layer1_0", "cluster_layer3_2", "cluster_legend"} <= clusters
    texts = svg_texts(path)
    assert {"kept", "identity", "removed"} <= set(texts)
    before, after = subject.params
    assert after < before  # the removed shortcut of layer3.0 had no weights, the identity had
    assert f"parameters {before:,} -> {after:,}" in " ".join(texts)


def test_png_renders(subject, tmp_path):
    path = rendering.write(rendering.render(subject, cell="layer1.0"), tmp_path / "cell.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 300 and height > 150


def test_dot_is_deterministic_and_needs_no_layout_program(subject, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither `dot` nor `graphviz-pure` here
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    assert rendering.layout_program() is None
    first = rendering.write(rendering.render(subject), tmp_path / "a.dot").read_text()
    second = rendering.write(rendering.render(subject), tmp_path / "b.dot").read_text()
    assert first == second and first.startswith("digraph cells {")
    assert 'id="layer1.0:0"' in first
    with pytest.raises(rendering.LayoutError) as error:
        rendering.write(rendering.render(subject), tmp_path / "a.svg")
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
    assert rendering.layout_program() == str(program)


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


def test_root_join_with_op_edges_inside_its_branch(tmp_path):
    """A join in the root module; "op" granularity's per-op edges (in cell ``body``)."""
    gm = trace(InplaceAdd(), torch.randn(2, 4, 8, 8))
    edges = discover(gm, "op")
    assert [e.name for e in edges] == [":0", ":1", "body:0", "body:1"]
    decisions = {":0": "same", ":1": "same", "body:0": "same", "body:1": "identity"}
    subject = rendering.Subject(gm, edges, decisions, "InplaceAdd", status="final")
    path = rendering.write(rendering.render(subject), tmp_path / "cells.svg")
    found = svg_edges(path)
    assert found[":0"]["label"] == "conv3x3-bn-relu; body.1: identity"
    assert found[":1"]["label"] == "skip"
    # the op edges drawn in their own cell: the changed one as a red box
    assert found["body:1"]["class"] == "node dnat op identity"
    assert found["body:1"]["stroke"] == "#d62728" and found["body:1"]["label"] == (
        "identity (was bn)"
    )
    texts = svg_texts(path)
    assert "(root)" in texts and "body" in texts
    assert texts.count("output") == 2 and texts.count("+") == 1


def test_chain_join_and_every_arrow_between_drawn_nodes(tmp_path):
    """``sum([a(x), b(x), x])`` is one join of three edges; no arrow points at a missing node."""
    gm = trace(BuiltinSum(), torch.randn(2, 4, 8, 8))
    edges = discover(gm)
    subject = rendering.Subject(gm, edges, {e.name: "same" for e in edges}, "BuiltinSum")
    for view in rendering.VIEWS:
        source = rendering.render(subject, view=view).source
        declared = set(re.findall(r"^\s*(\w+) \[", source, flags=re.M))
        arrows = re.findall(r"^\s*(\w+) -> (\w+)", source, flags=re.M)
        assert {name for arrow in arrows for name in arrow} <= declared, view
    path = rendering.write(rendering.render(subject), tmp_path / "cells.svg")
    assert {e["label"] for e in svg_edges(path).values()} == {"conv3x3-bn-relu", "conv1x1", "skip"}
    assert svg_texts(path).count("+") == 1


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

    monkeypatch.setattr(rendering, "write", broken)
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


def test_every_edge_is_labelled_with_its_theta_margin(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", "zoo:resnet20", DECISIONS)
    data = ckpt.load(path)
    data["state"]["margins"] = {name: 0.5 + i / 100 for i, name in enumerate(data["decisions"])}
    ckpt.save(path, data)
    out = tmp_path / "m.svg"
    result = CliRunner().invoke(main, ["render", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    labels = {name: e["label"] for name, e in svg_edges(out).items()}
    assert labels["layer1.0:0"].endswith("[θ margin 0.50]")
    assert all("θ margin" in label for label in labels.values())
    # one drawing for the cells alike (tie full: a θ row each) shows their smallest margin
    group = [name for name, label in labels.items() if "min θ margin" in label]
    assert group
    data["state"]["margins"] = {name: 2 - i / 100 for i, name in enumerate(data["decisions"])}
    ckpt.save(path, data)  # margins falling along the network: a later cell's is the smallest
    assert CliRunner().invoke(main, ["render", str(path), "--out", str(out)]).exit_code == 0
    for name in group:
        shown = float(svg_edges(out)[name]["label"].rsplit(" ", 1)[-1].rstrip("]"))
        assert shown < round(data["state"]["margins"][name], 2)
