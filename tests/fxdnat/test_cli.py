"""The CLI: thin commands, one-line errors with exit code 2, --help without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fxdnat import __version__
from fxdnat.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_help_does_not_import_torch():
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom fxdnat.cli import main\n"
        "result = CliRunner().invoke(main, ['--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "for command in main.commands:\n"
        "    assert CliRunner().invoke(main, [command, '--help']).exit_code == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'rich')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and result.output.strip() == f"fxdnat, version {__version__}"


def test_edges_json_lists_resnet20_edges_and_groups():
    result = run("edges", "zoo:resnet20", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["spec"] == "zoo:resnet20" and data["input_size"] == 32
    assert len(data["edges"]) == 18 and data["groups"] == {"full": 18, "cell": 4}
    first = data["edges"][0]
    assert first["name"] == "layer1.0:0" and first["summary"] == "conv3x3-bn-relu-conv3x3-bn"
    assert first["params"] == 2 * (16 * 16 * 9 + 32)  # two 3x3 convs without bias + two BNs
    assert first["flops"] == 2 * 2 * 16 * 16 * 9 * 32 * 32  # 2 FLOPs per multiply-add


def test_edges_table_and_cell_mode_note():
    result = run("edges", "zoo:proxylessnas", "--tie", "cell")
    assert result.exit_code == 0, result.output
    assert "θ groups: full 14, cell 14" in result.output
    assert "no two cells share a structure, so cell mode equals full mode here" in result.output


def test_a_model_without_edges_says_so_and_exits_0():
    result = run("edges", "torchvision:alexnet", "--input-size", "64")
    assert result.exit_code == 0
    assert "torchvision:alexnet: no eligible edge" in result.output


def test_unknown_model_is_one_line_with_close_matches_and_exit_2():
    result = run("edges", "zoo:resnet2")
    assert result.exit_code == 2
    assert (
        result.output
        == "Error: unknown zoo model 'resnet2'; did you mean 'resnet20'? see `fxdnat zoo`\n"
    )
    result = run("edges", "tv:resnet18")
    assert result.exit_code == 2 and result.output.startswith("Error: unknown model source 'tv'")


def test_zoo_lists_every_model():
    result = CliRunner().invoke(main, ["zoo"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in ("resnet20", "mobilenetv2", "darts", "proxylessnas"):
        assert f" {name} " in result.output
    assert "269,722" in result.output and "3,349,342" in result.output


@pytest.mark.parametrize("columns", ["80", "60"])
def test_zoo_never_cuts_a_model_name(columns):
    from fxdnat import zoo

    result = CliRunner().invoke(main, ["zoo"], env={"COLUMNS": columns})
    assert result.exit_code == 0, result.output
    first_cells = [
        line.split("│")[1].strip() for line in result.output.splitlines() if line.startswith("│")
    ]
    names = [cell for cell in first_cells if cell]
    assert names == zoo.list_models()  # proxylessnas and proxylessnas_gpu no longer read alike


SMALL = ["--recipe", "quick", "--epochs", "2", "--arch-epochs", "1"]
SMALL += ["--limit", "64", "--batch-size", "32"]


def test_transform_then_eval(tmp_path):
    out = tmp_path / "run"
    result = run("transform", "zoo:resnet20", *SMALL, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "fxdnat transform" in result.output and "269,722 →" in result.output
    # the θ schedule and its warning first; how sure the decisions are, and finalize, at the end
    assert "reach lr·T 0.02" in result.output and "you will get the original network" in (
        result.output
    )
    assert "θ margins" in result.output and "(scale keep)" in result.output
    result = run("eval", str(out / "checkpoint.pt"), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (
        data["examples"] == 360 and data["stage"] == "done"
    )  # the whole test split and data["latency_ms"] > 0


def last_line(result) -> str:
    """The line a failed command ends with (transform prints its plan before training)."""
    return result.output.splitlines()[-1]


def test_transform_user_errors_exit_2(tmp_path):
    result = run("transform", "zoo:resnet20", "--data", "cifar10", "--data-dir", str(tmp_path))
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: CIFAR-10 not found at {tmp_path}/cifar-10-batches-py")
    result = run(
        "transform", "zoo:resnet20", *SMALL, "--lr", "1e30", "--out", str(tmp_path / "nan")
    )
    assert result.exit_code == 2
    assert last_line(result) == (
        "Error: the loss of θ's step became nan in epoch 1 (step 1) after ω's update: the "
        "weights diverged; no epoch had finished, so nothing was saved; lower ω's learning rate "
        "(--lr, 1e+30 now) and rerun"
    )
    assert not (tmp_path / "nan").exists()


def test_a_diverging_theta_names_thetas_learning_rate(tmp_path):
    out = tmp_path / "nan"
    result = run("transform", "zoo:resnet20", *SMALL, "--theta-lr", "1e30", "--out", str(out))
    assert result.exit_code == 2
    assert last_line(result) == (
        "Error: ω's gradient became nan in epoch 1 (step 2) after θ's update: the architecture "
        "weights θ diverged; no epoch had finished, so nothing was saved; lower θ's learning "
        "rate (--theta-lr, 1e+30 now) and rerun"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--batch-size", "5000"],
            "the training split of digits has 1437 examples but a batch needs 5000: incomplete "
            "batches are dropped, so not one step would run; give --batch-size 1437 or less",
        ),
        (
            ["--limit", "10", "--recipe", "quick"],
            "the training split of digits has 10 examples (--limit 10) but a batch needs 64: "
            "incomplete batches are dropped, so not one step would run; give --batch-size 10 or "
            "less, or a larger --limit",
        ),
        (["zoo:resnet2"], "unknown zoo model 'resnet2'; did you mean 'resnet20'? see `fxdnat zoo`"),
        (
            ["--recipe", "fast"],
            "unknown recipe 'fast'; known: paper, quick",
        ),
        (
            ["--data", "digit"],
            "unknown data set 'digit'; did you mean 'digits'? accepted: digits, digits-hard, cifar10, "
            "tinyimagenet, imagefolder:PATH, text:pydoc, text:PATH",
        ),
        (
            ["--device", "cuda"],
            "--device cuda was asked for but CUDA is not available here; use --device cpu (or "
            "auto)",
        ),
        (
            ["--lr", "nan"],
            "recipe 'paper' got lr=nan, theta_lr=0.0003; learning rates (--lr, --theta-lr) must "
            "be finite positive numbers",
        ),
        (
            ["--search-epochs", "3"],
            "--search-epochs is for --method nat (the NAT baseline) only; this run's method is "
            "dnat",
        ),
        (
            ["--method", "nat", "--data", "digits-hard", "--recipe", "quick", "--limit", "30"],
            "NAT's weights split has 12 training examples, fewer than one batch of 16 (the "
            "recipe's NAT batch); use more data (drop or raise --limit)",
        ),
        (
            ["--theta-lr", "inf", "--recipe", "quick"],
            "recipe 'quick' got lr=0.05, theta_lr=inf; learning rates (--lr, --theta-lr) must be "
            "finite positive numbers",
        ),
    ],
)
def test_a_run_that_cannot_start_writes_nothing(tmp_path, monkeypatch, args, message):
    """Refused before the first file: no run folder is left behind (tests run in tmp_path)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = [a for a in args if a.startswith("zoo:")] or ["zoo:resnet20"]
    options = [a for a in args if not a.startswith("zoo:")]
    result = run("transform", *spec, *options)
    assert (result.exit_code, result.output) == (2, f"Error: {message}\n")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished small run."""
    out = tmp_path_factory.mktemp("finished") / "run"
    result = run("transform", "zoo:resnet20", *SMALL, "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_resume_refuses_another_model(finished):
    before = snapshot(finished)
    result = run("transform", "zoo:mobilenetv2", "--out", str(finished), "--resume")
    assert (result.exit_code, result.output) == (
        2,
        f"Error: --resume: {finished} holds another run than the one asked for: SPEC "
        "zoo:mobilenetv2 (the run's: zoo:resnet20); to continue that run drop what differs, for "
        "a new run choose another --out\n",
    )
    assert snapshot(finished) == before


def test_resume_names_every_option_that_contradicts_the_run(finished):
    before = snapshot(finished)
    result = run(
        "transform",
        "zoo:resnet20",
        "--out",
        str(finished),
        "--resume",
        "--epochs",
        "30",
        "--lr",
        "0.1",
        "--tie",
        "full",
        "--seed",
        "3",
        "--amp",
    )
    assert (result.exit_code, result.output) == (
        2,
        f"Error: --resume: {finished} holds another run than the one asked for: --tie full (the "
        "run's: cell), --seed 3 (the run's: 0), --amp True (the run's: default), --epochs 30 "
        "(the run's: 2), --lr 0.1 (the run's: 0.05); to continue that run drop what differs, for "
        "a new run choose another --out. A run cannot be extended: its learning rate follows one "
        "cosine schedule over all of its epochs\n",
    )
    assert snapshot(finished) == before


def test_resume_of_a_finished_run_says_so_and_changes_nothing(finished):
    before = snapshot(finished)
    accuracy = 100 * json.loads((finished / "summary.json").read_text())["test_acc"]
    # options that agree with the run, and where it runs, are accepted
    for agreeing in (
        [],
        ["--epochs", "2", "--recipe", "quick", "--device", "cpu", "--workers", "1"],
    ):
        result = run("transform", "resnet20", "--out", str(finished), "--resume", *agreeing)
        assert (result.exit_code, result.output) == (
            0,
            f"{finished} has finished (2 epochs, test accuracy {accuracy:.2f}%): nothing to "
            f"resume, its files are unchanged; see {finished}/summary.json\n",
        )
    assert snapshot(finished) == before


@pytest.mark.parametrize("command", ["render", "plot", "export"])
def test_an_unwritable_output_is_named_with_the_reason(finished, tmp_path, command):
    extension = {"render": "svg", "plot": "png", "export": "pt2"}[command]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = blocker / f"out.{extension}"
    result = run(command, str(finished / "checkpoint.pt"), "--out", str(out))
    assert (result.exit_code, result.output) == (
        2,
        f"Error: cannot write {out}: {blocker} is a file, not a folder\n",
    )
    if Path("/proc").is_dir():  # a folder even root cannot write to
        out = Path(f"/proc/fxdnat-test/out.{extension}")
        result = run(command, str(finished / "checkpoint.pt"), "--out", str(out))
        assert result.exit_code == 2  # the reason in brackets is the system's: it varies
        assert result.output.startswith(
            f"Error: cannot write {out}: no new file can be made in /proc ("
        )
        assert result.output.endswith("); choose a folder you can write to\n")


def test_transform_checks_its_folder_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run("transform", "zoo:resnet20", *SMALL, "--out", str(blocker / "run"))
    assert (result.exit_code, result.output) == (
        2,
        f"Error: cannot write {blocker}/run/checkpoint.pt: {blocker} is a file, not a folder\n",
    )


def test_an_image_folder_is_stored_absolute_so_eval_works_from_elsewhere(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    for split, count in (("train", 4), ("val", 2)):
        for k, name in enumerate(("cat", "dog")):
            folder = tmp_path / "a" / "pets" / split / name
            folder.mkdir(parents=True)
            for j in range(count):
                pixels = np.random.default_rng(10 * k + j).integers(0, 256, (32, 32, 3))
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{j}.png")
    monkeypatch.chdir(tmp_path / "a")
    result = run(
        "transform",
        "zoo:resnet20",
        "--data",
        "imagefolder:pets",
        "--recipe",
        "quick",
        "--epochs",
        "1",
        "--arch-epochs",
        "0",
        "--batch-size",
        "4",
        "--out",
        "run",
    )
    assert result.exit_code == 0, result.output
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")
    checkpoint = tmp_path / "a" / "run" / "checkpoint.pt"
    result = run("eval", str(checkpoint), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["data"] == f"imagefolder:{tmp_path}/a/pets"


def test_eval_refuses_a_corrupt_checkpoint(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"\x00" * 64)
    result = run("eval", str(path))
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: {path} is not a readable fxdnat checkpoint")
    result = run("eval", str(tmp_path / "missing.pt"))
    assert result.exit_code == 2 and "no checkpoint at" in result.output
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    result = run("eval", str(empty))
    assert (result.exit_code, result.output) == (
        2,
        f"Error: {empty} is not a readable fxdnat checkpoint (EOFError)\n",
    )


def test_edges_reports_what_tracing_kept_opaque():
    result = run("edges", "module:messy:drop_path_net", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    reason = "its traced form depends on train/eval mode"
    assert data["leaves"] == {"1.drop_path": reason, "2.drop_path": reason}
    assert data["opaque_params"] == 0 and len(data["edges"]) == 4
    table = CliRunner().invoke(
        main, ["edges", "module:messy:drop_path_net"], env={"COLUMNS": "200"}
    )
    assert (
        "opaque: 0.0 % of the parameters are inside submodules traced as one call; leaves: "
        f"1.drop_path ({reason}), 2.drop_path ({reason})\n"
    ) in table.output


def test_a_path_the_system_refuses_mid_write_is_one_line_naming_it(finished, monkeypatch):
    """Past the up-front check (a race, a full disk), the system's refusal is still the user's
    path and its reason, exit 2, not an internal error naming a temporary file."""
    import fxdnat.plot
    from fxdnat import checkpoint as ckpt

    def full(figure, path, **kwargs):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(fxdnat.plot, "check_writable", lambda path: None)
    monkeypatch.setattr("matplotlib.figure.Figure.savefig", full)
    result = run("plot", str(finished / "checkpoint.pt"), "--out", "run.png")
    assert (result.exit_code, result.output) == (
        2,
        "Error: cannot access run.png: No space left on device\n",
    )

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", f"{kwargs['dir']}/.c.pt.x8f.tmp")

    monkeypatch.setattr("tempfile.mkstemp", refuse)
    with pytest.raises(PermissionError) as error:
        ckpt.save(Path("c.pt"), {})
    assert error.value.filename == "c.pt"  # the file asked for, not its temporary


def test_cuda_where_there_is_none_is_refused_by_eval_and_repro_too(finished, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = run("eval", str(finished / "checkpoint.pt"), "--device", "cuda")
    assert (result.exit_code, result.output) == (
        2,
        "Error: --device cuda was asked for but CUDA is not available here; use --device cpu\n",
    )
    study = tmp_path / "study"
    result = run("repro", "zoo:resnet20", "--out", str(study), "--device", "cuda")
    assert (result.exit_code, result.output) == (
        2,
        "Error: --device cuda was asked for but CUDA is not available here; use --device cpu (or "
        "auto)\n",
    )
    assert not study.exists()


def test_a_seed_outside_what_torch_takes_is_refused():
    for seed in ("-1", str(2**32), "99999999999999999999999"):
        result = run("transform", "zoo:resnet20", "--seed", seed)
        assert result.exit_code == 2
        assert last_line(result) == (
            f"Error: Invalid value for '--seed': {seed} is not in the range 0<=x<=4294967295."
        )


def test_a_budgeted_transform_says_what_it_decided_and_how_the_fade_went(tmp_path):
    fade = ["--epochs", "4", "--arch-epochs", "3", "--warmup-epochs", "1", "--fade-epochs", "1"]
    args = [*SMALL, *fade, "--budget", "flops=0.6", "--tie", "full", "--out", str(tmp_path / "r")]
    result = run("transform", "zoo:resnet20", *args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())  # the lines as rich wraps them
    assert "decide after epoch 2: " in text
    assert "what finalize drops fades out over the last 1 epoch (test accuracy now" in text
    assert text.count("after a 1-epoch fade →") == 2  # the finalize line and the summary's
    assert "of the original (target 60%)" in text


def test_budget_mistakes_get_one_line_and_exit_2(tmp_path):
    out = str(tmp_path / "b")
    cases = {
        (
            "--budget",
            "flops=2",
        ): "Error: --budget: cannot read 'flops=2'; expected RESOURCE=FRACTION",
        ("--budget", "flops=0.5", "--method", "original"): (
            "Error: --budget is for --method dnat, random, prune or similarity; this run's "
            "method is original"
        ),
        ("--method", "prune"): "Error: --method prune removes the least-contributing branches",
        ("--fade-epochs", "1", "--method", "original"): (
            "Error: --fade-epochs fades out what finalize drops at the architecture stage's end; "
            "--method original has no such stage"
        ),
        ("--budget", "flops=0.01"): (
            "Error: --budget flops=0.01: no network fits the budget flops=0.01 without removing "
            "every operand of a join; the smallest reachable cost is flops=0.0"
        ),
    }
    for args, start in cases.items():
        result = run("transform", "zoo:resnet20", *SMALL, *args, "--out", out)
        assert result.exit_code == 2, result.output
        assert last_line(result).startswith(start), last_line(result)
        assert len(result.output.strip().splitlines()) == 1
        assert not (tmp_path / "b").exists()
