"""The report of a study, on hand-written summaries: the random column and its pairing by seed,
how sure DNAT was (margins, flips, finalize gap), the networks' size, θ's reach, summaries
written before any of these existed, seed agreement on hand-made decisions, and all of it
without torch."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from fxdnat.repro.report import MISSING, aggregate, agreement

REACH = {"theta_steps": 400, "theta_lr": 0.005, "lr_T": 2.0, "lr_sqrt_T": 0.1, "warmup_steps": 40}
MARGINS = {  # per seed of the cell runs
    1: {"a": 0.5, "b": 0.05, "c": 0.8, "d": 1.2},
    2: {"a": 0.3, "b": 0.02, "c": 0.09, "d": 0.6},
    3: {"a": 0.4, "b": 0.2, "c": 0.7, "d": 0.9},
}
FINALIZE = {  # accuracy before finalize, after it, after BN re-estimation
    1: {"scale": "keep", "acc_before": 0.94, "acc_after": 0.93, "acc_after_bn": 0.935},
    2: {"scale": "keep", "acc_before": 0.93, "acc_after": 0.90, "acc_after_bn": None},
    3: {"scale": "one", "acc_before": 0.95, "acc_after": 0.95, "acc_after_bn": 0.955},
}


def run(out: Path, where: str, seed: int, **summary) -> None:
    """A run's summary in OUT/<where>/seed<k>, ``where`` being "<model>/<method>"."""
    folder = out / where / f"seed{seed}"
    folder.mkdir(parents=True)
    summary = {"data": "digits", "device": "cpu", "seconds": 36.0, **summary}
    (folder / "summary.json").write_text(json.dumps(summary))


def choice(changed: dict[str, str], edges: int = 4) -> dict:
    kinds = list(changed.values())
    decisions = {c: kinds.count(c) for c in ("none", "identity")}
    return {
        "edges": edges,
        "changed": changed,
        "decisions": {"same": edges - len(kinds), **decisions},
    }


@pytest.fixture
def study(tmp_path) -> Path:
    """resnet20 × (original, cell, random) × seeds 1-3, and an "old" model whose cell runs
    predate margins, flips, finalize and reach."""
    out = tmp_path / "study"
    cell_changes = {
        1: {"a": "none", "b": "identity"},
        2: {"a": "none"},
        3: {"a": "none", "b": "identity"},
    }
    # the random seed-3 run copied other changes: its DNAT run was redone after it
    random_changes = {
        1: {"c": "none", "d": "identity"},
        2: {"d": "none"},
        3: {"c": "none", "d": "none"},
    }
    for seed, acc in zip((1, 2, 3), (0.90, 0.91, 0.92), strict=True):
        sizes = dict(params_before=1000, params_after=1000, flops_before=2000, flops_after=2000)
        run(out, "resnet20/original", seed, method="original", test_acc=acc, **sizes)
    for seed, acc, params, flops in (
        (1, 0.93, 800, 1500),
        (2, 0.92, 900, 1600),
        (3, 0.95, 700, 1400),
    ):
        sizes = dict(params_before=1000, params_after=params, flops_before=2000, flops_after=flops)
        run(
            out,
            "resnet20/cell",
            seed,
            method="dnat",
            tie="cell",
            test_acc=acc,
            margins=MARGINS[seed],
            flipped=["b"] * (seed % 2),
            finalize=FINALIZE[seed],
            reach=REACH,
            **choice(cell_changes[seed]),
            **sizes,
        )
    for seed, acc in ((1, 0.92), (2, 0.925), (3, 0.90)):
        run(
            out,
            "resnet20/random",
            seed,
            method="random",
            tie="cell",
            test_acc=acc,
            margins={},
            **choice(random_changes[seed]),
        )
    for seed in (1, 2):
        run(out, "old/cell", seed, method="dnat", test_acc=0.8, **choice({"a": "none"}))
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def number(text: str) -> float | None:
    return float(text) if text else None


def test_table_1_has_the_random_column_and_dnat_is_paired_with_it_by_seed(study):
    report = aggregate(study).markdown
    assert "| model | original | DNAT cell | random (control) |" in report
    # seed 1: 93 − 92 = +1; seed 2: 92 − 92.5 = −0.5; seed 3 left out (its changes differ)
    assert (
        "- resnet20, DNAT cell − random: +0.25 points on average over 2 seeds; DNAT better on 1 "
        "of 2 (1 left out: the random run's changes differ from its DNAT run's" in report
    )
    assert "- old" not in report  # no random runs
    # printed with Table 1, before Table 2
    assert report.index("DNAT vs random at equal changes") < report.index("### Table 2")
    pairs = read_csv(study / "random-digits.csv")
    assert [(p["seed"], p["equal_changes"]) for p in pairs] == [
        ("1", "True"),
        ("2", "True"),
        ("3", "False"),
    ]
    assert [number(p["difference"]) for p in pairs] == pytest.approx([1.0, -0.5, 5.0])
    assert (pairs[0]["identity"], pairs[0]["none"], pairs[0]["dnat_method"]) == ("1", "1", "cell")


def test_how_sure_dnat_was_summarises_margins_flips_and_the_finalize_gap(study):
    aggregate(study)
    rows = {(r["model"], r["method"]): r for r in read_csv(study / "choices-digits.csv")}
    cell = rows["resnet20", "cell"]
    margins = [m for seed in MARGINS.values() for m in seed.values()]
    assert number(cell["margin_median"]) == pytest.approx(statistics.median(margins))
    assert number(cell["margin_min"]) == pytest.approx(0.02)
    assert number(cell["unsure"]) == pytest.approx((1 + 2 + 0) / 3)  # margins under 0.1
    assert number(cell["flipped"]) == pytest.approx((1 + 0 + 1) / 3)
    assert number(cell["finalize_gap_mean"]) == pytest.approx((1 + 3 + 0) / 3)
    assert number(cell["finalize_gap_max"]) == pytest.approx(3)
    assert number(cell["finalize_gap_bn_mean"]) == pytest.approx((0.5 - 0.5) / 2)
    assert number(cell["finalize_gap_bn_max"]) == pytest.approx(0.5)
    assert (number(cell["identity"]), number(cell["none"])) == pytest.approx((2 / 3, 1))
    # the control: as many changes, its own agreement; no margins, flips or finalize to show
    control = rows["resnet20", "random"]
    assert (number(control["none"]), number(control["identity"])) == pytest.approx((4 / 3, 1 / 3))
    assert all(
        control[k] == "" for k in ("margin_median", "unsure", "flipped", "finalize_gap_mean")
    )


def test_summaries_without_the_new_fields_show_a_dash(study):
    report = aggregate(study).markdown
    dashes = " | ".join([MISSING] * 6)
    assert f"| old | DNAT cell | {dashes} |" in report
    assert f"| resnet20 | random (control) | {dashes} |" in report
    assert (
        "| resnet20 | DNAT cell | 0.450 | 0.020 | 1.0 | 0.7 | 1.33 / 3.00 | 0.00 / 0.50 |" in report
    )
    assert "| old | — | 80.00 / 0.00 / 0.020 cpu (n=2) | — |" in report  # Table 1 as before
    assert f"| old | {MISSING} / {MISSING} | " in report  # Table 3: no sizes


def test_table_3_gives_each_methods_size_against_the_original(study):
    report = aggregate(study).markdown
    assert "| resnet20 | 100.0 / 100.0 | 80.0 / 75.0 | " in report
    rows = {(r["model"], r["method"]): r for r in read_csv(study / "table3-digits.csv")}
    assert number(rows["resnet20", "cell"]["params_pct"]) == pytest.approx(80)
    assert number(rows["resnet20", "cell"]["flops_after"]) == pytest.approx(1500)
    assert number(rows["resnet20", "original"]["flops_pct"]) == pytest.approx(100)


def test_the_report_says_when_dnat_will_change_the_network(study):
    report = aggregate(study).markdown
    section = report[report.index("### When will DNAT change the network?") :]
    assert (
        "This study's DNAT runs (median of 3): T = 400 θ steps (after 40 ω-only warm-up steps), "
        "θ lr = 0.005: lr·T = 2.00, lr·√T = 0.100." in section
    )
    assert "**In reach**" in section


@pytest.mark.parametrize(
    ("travel", "noise", "regime", "advice"),
    [
        (0.5, 0.05, "**Out of reach**", "Raise θ's steps (more architecture epochs (--arch"),
        (0.9, 1.2, "what it changes may be noise", "Raise θ's steps"),
        (5.0, 1.5, "**Noise**", "Give θ more steps (more architecture epochs (--arch-epochs)"),
        (30.0, 0.93, "**In reach**", "Should DNAT change too little"),
        (47.0, 0.12, "**In reach**", "Should DNAT change too little, raise θ's steps (more"),
    ],
)
def test_the_regime_follows_reach_and_noise(travel, noise, regime, advice):
    from fxdnat.repro.report import _regime

    text = _regime(travel, noise)
    assert regime in text and advice in text


def test_a_study_without_random_or_reach_has_neither_section(study):
    for folder in study.glob("resnet20/*"):
        if folder.name != "original":
            for path in folder.glob("*/summary.json"):
                path.unlink()
            for path in folder.glob("*"):
                path.rmdir()
            folder.rmdir()
    report = aggregate(study)
    assert "DNAT vs random" not in report.markdown and "When will DNAT" not in report.markdown
    assert not (study / "random-digits.csv").exists()


def test_report_aggregates_without_torch(study):
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom fxdnat.cli import main\n"
        f"result = CliRunner().invoke(main, ['repro', '--report', {str(study)!r}])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


# --------------------------------------------------------------------------- agreement
def test_agreement_on_hand_made_decisions():
    seeds = [
        {"a": "none", "b": "same", "c": "identity"},
        {"a": "none", "b": "same", "c": "same"},
        {"a": "none", "b": "identity", "c": "none"},
    ]
    agreed = agreement(seeds)
    # a: all 3 pairs alike; b: 1 of 3; c: none of 3
    assert agreed.pairwise == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert agreed.unanimous == pytest.approx(1 / 3)
    assert (agreed.edges, agreed.seeds) == (3, 3)


def test_agreement_from_changed_edges_only():
    # summaries list only the edges that changed: 3 more edges stayed "same" in every seed
    agreed = agreement([{"a": "none"}, {"a": "none"}, {}], edges=4)
    assert agreed.pairwise == pytest.approx((1 / 3 + 3) / 4)
    assert agreed.unanimous == pytest.approx(3 / 4)
    assert agreement([{}, {}], edges=5).pairwise == 1.0


def test_agreement_needs_two_seeds_and_a_true_edge_count():
    assert agreement([{"a": "none"}]) is None
    with pytest.raises(ValueError, match="2 edges are named but edges=1"):
        agreement([{"a": "none"}, {"b": "identity"}], edges=1)


def test_nat_rows_show_changes_by_kind_and_dead_joins_and_no_margins(study):
    for seed, dead in ((1, ["add1"]), (2, []), (3, ["add1", "add2"])):
        run(
            study,
            "resnet20/nat",
            seed,
            method="nat",
            tie="cell",
            test_acc=0.5 + 0.1 * seed,
            changes="none=1,skip-none=2" if dead else "identity=1",
            dead_joins=dead,
            margins={},
            **choice({"a": "none", "b": "none", "c": "none"} if dead else {"a": "identity"}),
        )
    report = aggregate(study)
    assert "NAT (adapted)" in report.markdown.split("### Table 2")[0]
    choices = report.markdown.split("### Edge choices")[1].split("###")[0]
    line = next(x for x in choices.splitlines() if x.startswith("| resnet20 | NAT"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    # after edges and the counts per choice: changes by kind, dead joins (means per seed)
    assert cells[6:8] == ["identity 0.3, none 0.7, skip-none 1.3", "1.0"]
    sure = report.markdown.split("### How sure DNAT was")[1].split("###")[0]
    assert "NAT (adapted)" not in sure


# --------------------------------------------------------------------------- budget sweeps
def budgeted(target: dict, flops: float, params: float, **emitted) -> dict:
    """A budgeted run's summary fields: its target, and the measured fractions of the original's
    cost, both as the engine's "budget" and as sizes after (of 1000 parameters, 2000 FLOPs)."""
    return {
        "budget": {"target": target, "emitted": {"flops": flops, "params": params, **emitted}},
        "params_before": 1000,
        "params_after": round(1000 * params),
        "flops_before": 2000,
        "flops_after": round(2000 * flops),
    }


@pytest.fixture
def sweep(study) -> Path:
    """The study swept at flops=0.6 and 0.8 (the 1 point is its unconstrained runs)."""
    for seed, acc, flops in ((1, 0.91, 0.58), (2, 0.92, 0.59)):
        run(study, "resnet20/cell@flops=0.6", seed, method="dnat", tie="cell", test_acc=acc,
            **budgeted({"flops": 0.6}, flops, 0.7))  # fmt: skip
    for seed, acc in ((1, 0.90), (2, 0.88)):
        run(study, "resnet20/prune@flops=0.6", seed, method="prune", tie="full", test_acc=acc,
            **budgeted({"flops": 0.6}, 0.6, 0.65))  # fmt: skip
    run(study, "resnet20/random@flops=0.6", 1, method="random", tie="full", test_acc=0.85,
        **budgeted({"flops": 0.6}, 0.55, 0.5, latency=0.7))  # fmt: skip
    run(study, "resnet20/cell@flops=0.8", 1, method="dnat", tie="cell", test_acc=0.94,
        **budgeted({"flops": 0.8}, 0.8, 0.9))  # fmt: skip
    failed = study / "resnet20" / "prune@flops=0.8" / "seed1"
    failed.mkdir(parents=True)
    (failed / "run.json").write_text(json.dumps({"status": "failed", "error": "no fit"}))
    return study


def table_lines(markdown: str, heading: str) -> list[str]:
    section = markdown.split(heading)[1].split("###")[0]
    return [line for line in section.splitlines() if line.startswith("| ")]


def test_a_sweep_tables_accuracy_against_measured_cost_per_method_and_budget(sweep):
    report = aggregate(sweep)
    lines = table_lines(report.markdown, "### Accuracy against cost")
    assert lines[0] == (
        "| model | method | budget | test accuracy (%) | FLOPs | parameters | latency | seeds |"
    )
    assert lines[2:] == [  # models as Table 1 orders them (no manifest: by name)
        "| old | DNAT cell | none | 80.00 ± 0.00 | — | — | — | 2 |",
        "| resnet20 | original | none | 91.00 ± 1.00 | 1.000 | 1.000 | — | 3 |",
        "| resnet20 | DNAT cell | none | 93.33 ± 1.53 | 0.750 | 0.800 | — | 3 |",
        "| resnet20 | DNAT cell | flops=0.8 | 94.00 ± — | 0.800 | 0.900 | — | 1 |",
        "| resnet20 | DNAT cell | flops=0.6 | 91.50 ± 0.71 | 0.585 | 0.700 | — | 2 |",
        "| resnet20 | random (control) | none | 91.50 ± 1.32 | — | — | — | 3 |",
        "| resnet20 | random (control) | flops=0.6 | 85.00 ± — | 0.550 | 0.500 | 0.700 | 1 |",
        "| resnet20 | prune (contribution) | flops=0.6 | 89.00 ± 1.41 | 0.600 | 0.650 | — | 2 |",
    ]
    # with Table 1, before Table 2; the failed budgeted run is listed with its folder's name
    assert report.markdown.index("### Accuracy against cost") < report.markdown.index("### Table 2")
    assert "- resnet20 prune@flops=0.8 seed 1: failed — no fit" in report.markdown
    rows = read_csv(sweep / "cost-digits.csv")
    prune = next(r for r in rows if (r["method"], r["budget"]) == ("prune", "flops=0.6"))
    assert (prune["seeds"], number(prune["flops"]), number(prune["flops_std"])) == ("2", 0.6, 0.0)
    assert number(prune["std_acc"]) == pytest.approx(statistics.stdev([90, 88]))
    figure = sweep / "pareto-digits.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure in report.files
    assert "![test accuracy against measured FLOPs on digits](pareto-digits.png)" in report.markdown


def test_the_papers_tables_keep_the_unconstrained_runs_only(sweep):
    report = aggregate(sweep).markdown
    table1 = table_lines(report, "### Table 1")
    assert table1[0] == "| model | original | DNAT cell | random (control) |"  # no prune column
    assert table1[3].startswith("| resnet20 | 91.00 / 1.00 / ") and "93.33 / 1.53" in table1[3]
    tables = report.split("### Table 2")[1].split("### Runs without a result")[0]
    assert "flops=" not in tables and "prune" not in tables


def test_a_study_without_budgets_has_no_cost_section(study):
    report = aggregate(study)
    assert "Accuracy against cost" not in report.markdown
    assert not (study / "cost-digits.csv").exists() and not (study / "pareto-digits.png").exists()


def test_a_sweep_of_budgeted_runs_only_reports_them(tmp_path):
    out = tmp_path / "study"
    run(out, "resnet20/prune@params=0.5", 1, method="prune", test_acc=0.8,
        **budgeted({"params": 0.5}, 0.7, 0.5))  # fmt: skip
    report = aggregate(out).markdown
    assert "### Table 1" not in report
    lines = table_lines(report, "### Accuracy against cost")
    assert (
        lines[2]
        == "| resnet20 | prune (contribution) | params=0.5 | 80.00 ± — | 0.700 | 0.500 | 1 |"
    )


def test_a_language_model_study_tables_validation_loss_and_pairs_similarity(tmp_path):
    out = tmp_path / "lm"
    lm = {"data": "text:pydoc", "task": "causal-lm", "test_acc": 0.5}
    losses = {  # per seed: original, full, similarity, random
        1: (1.50, 1.40, 1.60, 1.70),
        2: (1.52, 1.55, 1.50, 1.80),
    }
    for seed, (orig, full, similar, rand) in losses.items():
        run(out, "gpt-mini/original", seed, method="original", test_loss=orig, **lm)
        changed = {"h.0:0": "none", "h.1:1": "identity"}
        finalize = {"scale": "keep", "acc_before": 0.3, "acc_after": 0.2, "loss_before": 2.4,
                    "loss_after": 2.4 + 0.1 * seed}  # fmt: skip
        run(out, "gpt-mini/full", seed, method="dnat", tie="full", test_loss=full, **lm,
            finalize=finalize, **choice(changed))  # fmt: skip
        removed = {"h.2:0": "none", "h.3:1": "none"}  # as many branches, both removed
        run(out, "gpt-mini/similarity", seed, method="similarity", tie="full",
            test_loss=similar, **lm, **choice(removed))  # fmt: skip
        placed = {"h.2:1": "none", "h.3:0": "identity"}
        run(out, "gpt-mini/random", seed, method="random", tie="full", test_loss=rand, **lm,
            **choice(placed))  # fmt: skip
    report = " ".join(aggregate(out).markdown.split())
    assert "### Table 1: validation loss (nats per token), mean / sample std over seeds" in report
    assert "| gpt-mini | 1.510 / 0.014 / " in report  # the original's mean and std
    assert "### Table 2: validation loss (nats per token) per seed" in report
    # lower is better: seed 1 DNAT 1.40 beats similarity's 1.60, seed 2 1.55 loses to 1.50
    assert (
        "- gpt-mini, DNAT full − similarity: -0.075 nats per token on average over 2 seeds; "
        "DNAT better on 1 of 2" in report
    )
    assert "- gpt-mini, DNAT full − random: -0.275 nats per token on average over 2 seeds; " \
        "DNAT better on 2 of 2" in report  # fmt: skip
    # finalize's cost in validation loss added (0.1 and 0.2), not in accuracy points lost
    assert "the validation loss it added (after − before, nats per token)" in report
    assert "| 0.15 / 0.20 |" in report
    pairs = read_csv(out / "similarity-text_pydoc.csv")
    assert [p["equal_changes"] for p in pairs] == ["True", "True"]
    # the per-seed figure draws the validation loss, and says so
    assert (
        "![per-seed validation loss (nats per token) on text:pydoc](loss-text_pydoc.png)" in report
    )
    assert (out / "loss-text_pydoc.png").exists() and not (out / "accuracy-text_pydoc.png").exists()
