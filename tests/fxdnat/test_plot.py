"""plot: θ per group over the architecture stage and the learning curves, into an image."""

from __future__ import annotations

from pathlib import Path

import pytest
from checkpoints import save_checkpoint
from click.testing import CliRunner

from fxdnat import checkpoint as ckpt
from fxdnat import plot as plotting
from fxdnat.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cell_ckpt(tmp_path_factory) -> Path:
    """ResNet20 in cell mode: the branch of every plain block turned into the identity."""
    decisions = {f"layer{s}.{b}:0": "identity" for s in (1, 2, 3) for b in (0, 1, 2)}
    del decisions["layer2.0:0"], decisions["layer3.0:0"]  # downsampling: no identity there
    path = tmp_path_factory.mktemp("plot") / "ckpt.pt"
    return save_checkpoint(path, "zoo:resnet20", decisions, tie="cell")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_groups_are_the_theta_rows_with_their_edges_choices_and_decisions(cell_ckpt):
    groups = plotting._groups(ckpt.load(cell_ckpt))
    assert groups == [
        plotting.Group(
            "layer1.0:0 (x7)",
            "conv3x3-bn-relu-conv3x3-bn",
            ("none", "identity", "same"),
            "identity",
        ),
        plotting.Group("layer1.0:1 (x7)", "skip", ("none", "same"), "same"),
        plotting.Group("layer2.0:0 (x2)", "conv3x3-bn-relu-conv3x3-bn", ("none", "same"), "same"),
        plotting.Group("layer2.0:1 (x2)", "slice-pad", ("none", "same"), "same"),
    ]


def test_plot_writes_a_png_through_the_cli(cell_ckpt, tmp_path):
    out = tmp_path / "run.png"
    result = CliRunner().invoke(main, ["plot", str(cell_ckpt), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote {out}\n"
    width, height = png_size(out)
    assert width >= 800 and height >= 500


def test_many_groups_become_small_multiples_of_those_that_moved_most(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "full.pt", "zoo:resnet20", {"layer3.2:1": "none"})
    monkeypatch.setattr(plotting, "MAX_PANELS", 8)
    history = plotting._history(ckpt.load(path))
    assert history.shape == (3, 18, 3)  # the start and two architecture epochs
    shown = plotting._most_moved(history, 18)
    assert len(shown) == 8 and shown[-1] == 17  # layer3.2:1 moved, so it is among them
    width, height = png_size(plotting.plot(path, tmp_path / "full.png"))
    assert height > width / 2


def test_a_run_without_theta_plots_its_curves_only(cell_ckpt, tmp_path):
    data = ckpt.load(cell_ckpt)
    del data["format"], data["version"]
    data["theta_history"] = []
    path = ckpt.save(tmp_path / "no_theta.pt", data)
    out = plotting.plot(path, tmp_path / "curves.svg")
    assert out.read_text().startswith("<?xml")


def test_unknown_format_is_one_line_with_exit_2(cell_ckpt, tmp_path):
    out = tmp_path / "run.gif"
    result = CliRunner().invoke(main, ["plot", str(cell_ckpt), "--out", str(out)])
    assert result.exit_code == 2
    assert result.output == (
        f"Error: unknown plot format '.gif' for {out}; supported: .png, .svg, .pdf\n"
    )


def test_each_panel_says_how_sure_its_decision_is(cell_ckpt):
    data = ckpt.load(cell_ckpt)
    data["state"]["margins"] = {"layer1.0:0": 0.42, "layer1.0:1": 1.5}
    data["state"]["flipped"] = ["layer1.0:0"]
    first, second, *_ = plotting._groups(data)
    assert (first.margin, first.flipped) == (0.42, True)
    assert (second.margin, second.flipped) == (1.5, False)
