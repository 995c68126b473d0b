"""render: cell and net diagrams whose edges, colours, dashes and labels follow the decisions."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from checkpoints import save_checkpoint
from click.testing import CliRunner
from diagrams import BRANCH, DECISIONS, SVG, svg_edges, svg_texts
from support import BuiltinSum, InplaceAdd

from fxdnat import checkpoint as ckpt
from fxdnat import drawing
from fxdnat.cli import main
from fxdnat.frontend import trace
from fxdnat.passes import discover

# the module, whatever fxdnat.passes exports under the pass's name
rendering = importlib.import_module("fxdnat.passes.render")


@pytest.fixture(scope="module")
def resnet_ckpt(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("render") / "ckpt.pt", "zoo:resnet20", DECISIONS)


@pytest.fixture(scope="module")
def subject(resnet_ckpt) -> rendering.Subject:
    return drawing.from_checkpoint(resnet_ckpt)


def test_cell_svg_draws_every_edge_with_the_style_of_its_decision(subject, tmp_path):
    path = drawing.write(rendering.render(subject, cell="layer1.0"), tmp_path / "cell.svg")
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
    path = drawing.write(rendering.render(subject), tmp_path / "cells.svg")
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
    path = drawing.write(rendering.render(subject, view="net"), tmp_path / "net.svg")
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


def test_root_join_with_op_edges_inside_its_branch(tmp_path):
    """A join in the root module; "op" granularity's per-op edges (in cell ``body``)."""
    gm = trace(InplaceAdd(), torch.randn(2, 4, 8, 8))
    edges = discover(gm, "op")
    assert [e.name for e in edges] == [":0", ":1", "body:0", "body:1"]
    decisions = {":0": "same", ":1": "same", "body:0": "same", "body:1": "identity"}
    subject = rendering.Subject(gm, edges, decisions, "InplaceAdd", status="final")
    path = drawing.write(rendering.render(subject), tmp_path / "cells.svg")
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
    path = drawing.write(rendering.render(subject), tmp_path / "cells.svg")
    assert {e["label"] for e in svg_edges(path).values()} == {"conv3x3-bn-relu", "conv1x1", "skip"}
    assert svg_texts(path).count("+") == 1


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


def test_the_pass_imports_no_io_layer():
    """A pass knows graphs, not files: importing it loads no checkpoint, spec or report code, and
    its own imports name no I/O layer nor a subprocess."""
    code = (
        "import sys, fxdnat.passes.render\n"
        "print(sorted(m for m in ('fxdnat.checkpoint', 'fxdnat.specs', 'fxdnat.report', "
        "'fxdnat.drawing', 'fxdnat.engine', 'fxdnat.cli') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "[]\n"
    tree = ast.parse(Path(rendering.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    io = {"subprocess", "shutil", "os", "fxdnat.checkpoint", "fxdnat.specs", "fxdnat.report"}
    io |= {"fxdnat.frontend", "fxdnat.drawing", "fxdnat.engine"}
    assert not imported & io


def test_a_nat_result_is_named_as_such_and_its_dead_joins_counted(subject, tmp_path):
    import dataclasses

    decisions = {**subject.decisions, "layer1.0:0": "none", "layer1.0:1": "none"}
    nat = dataclasses.replace(subject, decisions=decisions, method="nat")
    caption = " ".join(svg_texts(drawing.write(rendering.render(nat), tmp_path / "nat.svg")))
    assert "NAT (adapted), tie full" in caption
    assert "1 dead joins (no operand left: a zero tensor flows on)" in caption
