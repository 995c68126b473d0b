"""Support for the framework callbacks' tests: the network ``fxdnat transform`` gives, to
compare a callback's with, and the CLI commands a callback's checkpoint must pass."""

from __future__ import annotations

from pathlib import Path

import torch
from click.testing import CliRunner

import fxdnat
from fxdnat import checkpoint as ckpt
from fxdnat.cli import main


def transformed(tmp_path: Path, spec: str, data: str, **fields) -> dict:
    """The checkpoint of ``fxdnat transform`` for ``spec`` on ``data``, recipe "quick", seed 0,
    the recipe's fields overridden by ``fields``."""
    out = tmp_path / "engine"
    fxdnat.transform(fxdnat.RunConfig(spec=spec, out=str(out), data=data, recipe="quick", **fields))
    return ckpt.load(out / "checkpoint.pt")


def assert_same_network(engine: dict, callback: dict, *, atol: float = 1e-5) -> None:
    """The same decisions, θ and finalized weights (within float tolerance: the frameworks
    sum some gradients in another order than the engine does)."""
    assert callback["decisions"] == engine["decisions"]
    assert any(choice != "same" for choice in engine["decisions"].values()), "nothing changed"
    torch.testing.assert_close(
        callback["theta_history"], engine["theta_history"], atol=atol, rtol=0
    )
    assert callback["model_state"].keys() == engine["model_state"].keys()
    for name, value in engine["model_state"].items():
        torch.testing.assert_close(
            callback["model_state"][name], value, atol=atol, rtol=1e-5, msg=name
        )


def assert_cli_reads(path: Path, tmp_path: Path) -> None:
    """``fxdnat eval``, ``render`` and ``export`` read the checkpoint at ``path``."""
    runner = CliRunner()
    for args in (
        ["eval", str(path), "--limit", "32", "--json"],
        ["render", str(path), "--out", str(tmp_path / "cells.dot")],
        ["export", str(path), "--out", str(tmp_path / "network.pt2")],
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, (args, result.output)
    assert (tmp_path / "cells.dot").stat().st_size > 0 and (tmp_path / "network.pt2").is_file()
