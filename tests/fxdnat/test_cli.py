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
