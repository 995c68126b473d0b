"""The CLI: thin commands, one-line errors with exit code 2, --help without torch."""

from __future__ import annotations

import json
import subprocess
import sys

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


SMALL = [
    "--recipe",
    "quick",
    "--epochs",
    "2",
    "--arch-epochs",
    "1",
    "--limit",
    "64",
    "--batch-size",
    "32",
]


def test_transform_then_eval(tmp_path):
    out = tmp_path / "run"
    result = run("transform", "zoo:resnet20", *SMALL, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "fxdnat transform" in result.output and "269,722 →" in result.output
    result = run("eval", str(out / "checkpoint.pt"), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (
        data["examples"] == 360 and data["stage"] == "done"
    )  # the whole test split and data["latency_ms"] > 0


def test_transform_user_errors_exit_2(tmp_path):
    result = run("transform", "zoo:resnet20", "--data", "cifar10", "--data-dir", str(tmp_path))
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: CIFAR-10 not found at {tmp_path}/cifar-10-batches-py")
    result = run(
        "transform", "zoo:resnet20", *SMALL, "--lr", "1e30", "--out", str(tmp_path / "nan")
    )
    assert result.exit_code == 2
    assert "the loss became nan in epoch 1" in result.output
    assert "no epoch had finished, so nothing was saved; lower the learning rate" in result.output


def test_eval_refuses_a_corrupt_checkpoint(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"\x00" * 64)
    result = run("eval", str(path))
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: {path} is not a readable fxdnat checkpoint")
    result = run("eval", str(tmp_path / "missing.pt"))
    assert result.exit_code == 2 and "no checkpoint at" in result.output


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
