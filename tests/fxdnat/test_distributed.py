"""DDP: two CPU processes (gloo) under torchrun train one network."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fxdnat import checkpoint as ckpt


@pytest.mark.slow
def test_two_cpu_processes_under_torchrun(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun is installed with torch"
    out = tmp_path / "ddp"
    options = "--recipe quick --epochs 2 --arch-epochs 1 --limit 128 --batch-size 32"
    command = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "fxdnat.cli"]
    command += ["transform", "zoo:resnet20", *options.split(), "--device", "cpu"]
    command += ["--theta-lr", "0.2", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("fxdnat transform") == 1  # only rank 0 reports
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world"] == 2 and summary["epochs"] == 2
    data = ckpt.load(out / "checkpoint.pt")
    assert data["state"]["stage"] == "done" and len(data["theta_history"]) == 1
    assert not data["theta_history"][0].equal(
        data["theta_history"][0].new_tensor([[0.0, 0.0, 1.0]] * 4)
    )  # θ moved: its gradient was averaged and stepped on every rank
