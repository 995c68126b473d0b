"""The benchmark scripts still run (tiny settings, nothing written)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _benchmarks_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # benchmarks/ is a folder of scripts, not installed


@pytest.mark.slow
def test_training_benchmark_runs(capsys):
    from benchmarks import training

    training.main(["--models", "resnet20", "--batch", "16", "--limit", "32", "--budget", "1",
                   "--min-rounds", "1", "--max-rounds", "2", "--warmup", "1", "--no-write"])
    out = capsys.readouterr().out
    assert "stage 1, alternate" in out and "fxdnat train_epoch" in out


@pytest.mark.slow
def test_cuda_benchmark_smoke_runs_on_the_cpu(capsys):
    from benchmarks import cuda

    cuda.main(["--device", "cpu", "--models", "resnet20", "--batch", "8", "--rounds", "1",
               "--warmup", "0", "--settings", "fp32", "bf16", "--no-write"])
    assert "Largest bf16 forward error" in capsys.readouterr().out
