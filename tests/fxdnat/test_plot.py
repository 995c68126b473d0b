"""plot: θ per group over the architecture stage and the learning curves, into an image."""

from __future__ import annotations

import json
import subprocess
import sys
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


# ------------------------------------------------------------- accuracy against cost, over runs
def write_summary(folder: Path, method: str, acc: float, flops: float, budget=None, tie="cell"):
    folder.mkdir(parents=True, exist_ok=True)
    summary = {
        "spec": "zoo:resnet20",
        "data": "digits",
        "method": method,
        "tie": tie,
        "test_acc": acc,
        "params_before": 1000,
        "params_after": 900,
        "flops_before": 2000,
        "flops_after": round(2000 * flops),
        "budget": None if budget is None else {"target": budget, "emitted": {"flops": flops}},
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder / "summary.json"


@pytest.fixture
def runs(tmp_path) -> Path:
    """A study folder swept at flops=0.6: original, DNAT cell at 1 and 0.6, prune at 0.6."""
    study = tmp_path / "study" / "resnet20"
    for seed in (1, 2):
        write_summary(study / "original" / f"seed{seed}", "original", 0.90 + seed / 100, 1.0)
        write_summary(study / "cell" / f"seed{seed}", "dnat", 0.92, 0.8)
        write_summary(study / "cell@flops=0.6" / f"seed{seed}", "dnat", 0.9, 0.58, {"flops": 0.6})
        write_summary(study / "prune@flops=0.6" / f"seed{seed}", "prune", 0.88, 0.6,
                      {"flops": 0.6}, tie="full")  # fmt: skip
    return tmp_path / "study"


def test_plot_draws_runs_accuracy_against_their_cost(runs, tmp_path):
    out = tmp_path / "pareto.png"
    result = CliRunner().invoke(main, ["plot", str(runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote {out}\n"
    width, height = png_size(out)
    assert width >= 500 and height >= 400
    # run folders and summary files, mixed, against parameters, as SVG
    folders = [runs / "resnet20" / "cell" / "seed1", runs / "resnet20" / "prune@flops=0.6"]
    files = [runs / "resnet20" / "original" / "seed1" / "summary.json"]
    out = tmp_path / "pareto.svg"
    args = ["plot", *map(str, folders + files), "--out", str(out), "--cost", "params"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("<?xml")


def test_the_report_and_plot_draw_one_figure(runs, tmp_path, monkeypatch):
    from fxdnat.repro import pareto

    drawn = []

    def draw(found, path, resource, title=""):
        drawn.append([(p.method, p.budget, p.seeds) for p in found])
        return Path(path)

    monkeypatch.setattr(pareto, "draw", draw)
    plotted = CliRunner().invoke(main, ["plot", str(runs), "--out", str(tmp_path / "p.png")])
    reported = CliRunner().invoke(main, ["repro", "--report", str(runs)])
    assert (plotted.exit_code, reported.exit_code) == (0, 0)
    assert (
        drawn[0]
        == drawn[1]
        == [
            ("original", None, 2),
            ("cell", None, 2),
            ("cell", "flops=0.6", 2),
            ("prune", "flops=0.6", 2),
        ]
    )


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        (lambda tmp: tmp.joinpath("empty").mkdir() or tmp / "empty", [],
         "no summary.json in {tmp}/empty; give run folders, their summary.json files or a study "
         "folder (a run writes summary.json when it ends)"),
        (lambda tmp: tmp.joinpath("bad.json").write_text("[1,") and tmp / "bad.json", [],
         "{tmp}/bad.json is not JSON (Expecting value); give run folders, their summary.json "
         "files or a study folder"),
        (lambda tmp: write_summary(tmp / "r", "dnat", 0.9, 0.5).parent, ["--cost", "latency"],
         "no run says what its network's latency cost (a summary has FLOPs and parameters, "
         "latency only where the run measured it); plot another cost"),
        (lambda tmp: write_summary(tmp / "r", "dnat", 0.9, 0.5).parent, ["--trust-code"],
         "--trust-code is for a CHECKPOINT; RUNs' summaries run no code"),
    ],
)  # fmt: skip
def test_bad_runs_are_one_line_with_exit_2(tmp_path, make, extra, message):
    source = make(tmp_path)
    out = tmp_path / "pareto.png"
    result = CliRunner().invoke(main, ["plot", str(source), "--out", str(out), *extra])
    assert result.exit_code == 2, result.output
    assert result.output == f"Error: {message.format(tmp=tmp_path)}\n"
    assert not out.exists()


def test_cost_is_refused_with_a_checkpoint(cell_ckpt, tmp_path):
    args = ["plot", str(cell_ckpt), "--out", str(tmp_path / "run.png"), "--cost", "params"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert (
        result.output
        == "Error: --cost is for RUNs' summaries; a checkpoint plots θ and its curves\n"
    )


def test_plotting_runs_imports_no_torch(runs, tmp_path):
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom fxdnat.cli import main\n"
        f"result = CliRunner().invoke(main, ['plot', {str(runs)!r}, '--out', "
        f"{str(tmp_path / 'p.png')!r}])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
