"""The benchmark scripts still run (tiny settings, nothing written)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _benchmarks_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # benchmarks/ is a folder of scripts, not installed


# script, tiny settings, what its printed report must hold
SMOKE_RUNS = {
    "training": (
        "--models resnet20 --batch 16 --limit 32 --budget 1 --min-rounds 1 --max-rounds 2 "
        "--warmup 1 --no-write",
        ["stage 1, alternate", "fxdnat train_epoch"],
    ),
    "cuda": (  # the CUDA benchmark's code path, on the CPU
        "--device cpu --models resnet20 --batch 8 --rounds 1 --warmup 0 --settings fp32 bf16 "
        "--no-write",
        ["Largest bf16 forward error"],
    ),
    "allocator": (
        "--models resnet20 --batch 4 --rounds 1 --steps 1 --warmup 0 --no-write",
        ["| resnet20 |", "page faults / step"],
    ),
    "compiler": (
        "--models resnet20 --batch 4 --reps 1 --warmup 0 --budget 0 --min-rounds 1 --no-write",
        ["| resnet20 | 18 |", "gated / original", "frozen / original"],
    ),
    "integrations": (  # a fit per sample in each framework, beside the engine's steps
        "--batch 8 --steps 2 --warmup 1 --budget 0 --min-rounds 1 --no-write",
        ["| resnet20 | Lightning | + callback, alternate |", "| gpt-mini | Trainer | alone |"],
    ),
    "compiler-lm": (  # the language model's rows: token inputs, (batch, tokens, vocab) logits
        "--models gpt-mini --batch 2 --reps 1 --warmup 0 --budget 0 --min-rounds 1 --no-write",
        ["| gpt-mini | 16 |", "| gpt-mini | 2×128 tokens |"],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SMOKE_RUNS))
def test_benchmark_script_runs(script, capsys):
    import importlib

    args, expected = SMOKE_RUNS[script]
    importlib.import_module(f"benchmarks.{script.split('-')[0]}").main(shlex.split(args))
    out = capsys.readouterr().out
    for text in expected:
        assert text in out


def test_ratios_are_paired_per_round():
    from benchmarks import _timing

    # the baseline drifts 10x between rounds; the variant is always 1.5x the same round's
    samples = {"base": [1.0, 10.0, 2.0, 5.0], "slow": [1.5, 15.0, 3.0, 7.5]}
    stats = _timing.summarize(samples, baseline="base", resamples=200)
    assert stats["base"].ratio == 1.0
    assert stats["slow"].ratio == pytest.approx(1.5)
    assert stats["slow"].ratio_ci == pytest.approx((1.5, 1.5))
    assert stats["slow"].median == pytest.approx(5.25)
    with pytest.raises(ValueError, match="baseline"):
        _timing.summarize(samples, baseline="missing")


def test_interleave_rotates_the_order_and_stops_on_budget():
    from benchmarks import _timing

    calls: list[str] = []
    samples = _timing.interleave(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        rounds=50, warmup=1, min_rounds=3, budget_s=0.0,
    )  # fmt: skip
    assert [len(v) for v in samples.values()] == [3, 3]  # the budget is spent at once
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then rotating rounds


def test_a_section_replaces_only_its_own_markers(tmp_path):
    from benchmarks import _report

    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\nby hand\n\n<!-- x:begin -->\nold\n<!-- x:end -->\n\ntail\n")
    _report.write_section("x", "new", doc)
    _report.write_section("y", "other", doc)
    text = doc.read_text()
    assert "old" not in text and "<!-- x:begin -->\nnew\n<!-- x:end -->" in text
    assert text.index("by hand") < text.index("new") < text.index("tail") < text.index("other")


@pytest.mark.slow
def test_coverage_sweep_checks_a_model_and_writes_its_report(tmp_path):
    from benchmarks import coverage

    report, results = tmp_path / "coverage.md", tmp_path / "coverage.jsonl"
    assert (
        coverage.main(
            [
                "--models",
                "torchvision:resnet18",
                "--out",
                str(report),
                "--json",
                str(results),
                "--jobs",
                "1",
            ]
        )
        == 0
    )
    assert '"status": "pass"' in results.read_text()
    assert "**Pass rate: 1 / 1 = 100.0 %**" in report.read_text()


@pytest.mark.slow
def test_coverage_sweep_checks_a_language_model_in_its_own_section(tmp_path):
    pytest.importorskip("transformers")
    from benchmarks import coverage

    report = tmp_path / "coverage.md"
    argv = ["--models", "hf:tiny-llama", "--out", str(report), "--jobs", "1", "--train-config"]
    assert coverage.main(argv) == 0
    text = report.read_text()
    assert "## hf: transformers language models" in text and "## train" not in text
    assert "**Pass rate: 1 / 1 = 100.0 %** (target ≥ 90 %)" in text
