"""decide: argmax over allowed choices, ties keep the original, never a dead join (invariant 5)."""

from __future__ import annotations

import pytest
import torch
from support import CASES, inputs_for

import fxdnat
from fxdnat import passes


def gated_of(name: str, tie: str = "full"):
    model = CASES[name]()
    gm = fxdnat.trace(model, inputs_for(model))
    return passes.gate(gm, passes.discover(gm), tie=tie)


def set_theta(gated, rows):
    with torch.no_grad():
        gated.arch.theta.copy_(torch.tensor(rows, dtype=torch.float32))


def test_initial_theta_decides_the_original():
    gated = gated_of("nested")
    assert set(passes.decide(gated).values()) == {"same"}


def test_argmax_over_allowed_choices_only():
    gated = gated_of("downsample")  # neither edge allows identity
    set_theta(gated, [[0.2, 5.0, 0.1], [0.0, 0.0, 0.3]])
    assert passes.decide(gated) == {":0": "none", ":1": "same"}


def test_exact_ties_prefer_same_then_identity():
    gated = gated_of("inplace_add")
    set_theta(gated, [[0.5, 0.5, 0.5], [0.0, 0.0, 0.0]])
    assert passes.decide(gated) == {":0": "same", ":1": "same"}
    set_theta(gated, [[0.5, 0.5, 0.1], [0.0, 0.0, 1.0]])
    assert passes.decide(gated)[":0"] == "identity"


def test_a_join_whose_operands_all_choose_none_keeps_its_best_operand(caplog):
    gated = gated_of("chain")  # one join of three operands
    set_theta(gated, [[0.9, 0.3, 0.2], [0.9, 0.1, 0.6], [0.9, 0.0, 0.5]])
    assert passes.decide(gated) == {":0": "none", ":1": "same", ":2": "none"}
    assert "join add_1: every operand chose none; :1 keeps same" in caplog.text


def test_cell_mode_rows_decide_every_edge_that_shares_them():
    model = torch.nn.Sequential(CASES["se_block"](), CASES["se_block"]())
    gm = fxdnat.trace(model, inputs_for(model))
    gated = passes.gate(gm, passes.discover(gm), tie="cell")
    set_theta(gated, [[0.0, 0.0, 1.0], [0.1, 0.9, 0.2]])
    assert passes.decide(gated) == {
        "0:0": "same",
        "0:1": "identity",
        "1:0": "same",
        "1:1": "identity",
    }


def test_decide_needs_a_gated_module():
    gm = fxdnat.trace(CASES["chain"](), inputs_for(CASES["chain"]()))
    with pytest.raises(TypeError, match=r"is not gated; call passes\.gate"):
        passes.decide(gm)


def test_a_theta_of_another_shape_or_not_finite_is_refused():
    gated = gated_of("chain")  # three rows
    with pytest.raises(ValueError, match=r"theta has shape \(2, 3\); this module's θ is \(3, 3\)"):
        passes.decide(gated, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="theta has shape list"):
        passes.margins(gated, [[0.0, 0.0, 1.0]] * 3)
    bad = gated.arch.theta.detach().clone()
    bad[1, 2] = float("nan")
    for read in (passes.decide, passes.margins):
        with pytest.raises(ValueError, match="NaN or infinite"):
            read(gated, bad)


def test_check_decisions_names_the_bad_edge():
    edges = gated_of("chain").arch.edges
    with pytest.raises(ValueError, match=r"unknown edge ':00' in decisions; did you mean ':0'\?"):
        passes.check_decisions(edges, {":00": "none"})
    with pytest.raises(
        ValueError, match=r"edge ':2' cannot choose 'identity'; it allows \('none', 'same'\)"
    ):
        passes.check_decisions(edges, {":2": "identity"})
    with pytest.raises(
        ValueError,
        match=r"decisions remove every operand of join 'add_1' \(edges :0, :1, :2\); keep at least one",
    ):
        passes.check_decisions(edges, {":0": "none", ":1": "none", ":2": "none"})
    assert passes.check_decisions(edges, {":1": "none"}) == {
        ":0": "same",
        ":1": "none",
        ":2": "same",
    }


def test_random_decisions_are_valid_reproducible_and_reach_every_choice():
    import random

    edges = gated_of("downsample").arch.edges  # one join of two edges that allow none / same
    drawn = [passes.random_decisions(edges, random.Random(seed)) for seed in range(40)]
    for decisions in drawn:
        passes.check_decisions(edges, decisions)  # never a dead join
    assert {d[":0"] for d in drawn} == {"none", "same"}
    assert passes.random_decisions(edges, random.Random(7)) == drawn[7]


def test_margins_are_the_gap_between_the_two_best_allowed_entries():
    gated = gated_of("downsample")  # ":0" allows none and same only
    set_theta(gated, [[0.2, 5.0, 0.1], [0.0, 0.0, 1.3]])
    margins = passes.margins(gated)
    assert margins[":0"] == pytest.approx(0.1)  # identity's 5.0 is not allowed
    assert margins[":1"] == pytest.approx(1.3)
    history = torch.tensor([[0.0, 0.0, 1.0], [0.9, 0.0, 0.2]])
    assert passes.margins(gated, history)[":1"] == pytest.approx(0.7)
    assert passes.decide(gated, history) == {":0": "same", ":1": "none"}


@pytest.mark.parametrize("seed", range(20))
def test_random_changes_place_exactly_the_counts_and_never_kill_a_join(seed):
    import random

    gated = gated_of("chain")  # one join of two branches and a skip
    edges = gated.arch.edges
    counts = {"none": 1, "identity": 1, "skip-none": 1}
    decisions = passes.random_changes(edges, counts, random.Random(seed))
    assert sorted(decisions.values()) == ["identity", "none", "none"]
    assert decisions[":2"] == "none"  # the skip
    passes.check_decisions(edges, decisions)  # no dead join
    again = passes.random_changes(edges, counts, random.Random(seed))
    assert again == decisions  # a function of the seed


def test_random_changes_refuse_more_changes_than_edges_allow():
    import random

    gated = gated_of("downsample")  # no edge allows identity
    with pytest.raises(ValueError, match="1 edges should make the change 'identity' but only 0"):
        passes.random_changes(gated.arch.edges, {"identity": 1}, random.Random(0))
    with pytest.raises(ValueError, match="without removing every operand"):
        chain = gated_of("chain").arch.edges
        passes.random_changes(chain, {"none": 2, "skip-none": 1}, random.Random(0))


def test_ranked_changes_take_the_highest_scores_and_never_kill_a_join():
    edges = gated_of("chain").arch.edges  # ":0", ":1" branches and the skip ":2" into one join
    score = {":0": 0.9, ":1": 0.5, ":2": 0.1}
    assert passes.ranked_changes(edges, {"none": 1}, score) == {
        ":0": "none",
        ":1": "same",
        ":2": "same",
    }
    both = passes.ranked_changes(edges, {"none": 1, "skip-none": 1}, score)
    assert both == {":0": "none", ":1": "same", ":2": "none"}
    with pytest.raises(ValueError, match="1 edges should make the change 'skip-none' but only 0"):
        passes.ranked_changes(edges, {"none": 2, "skip-none": 1}, score)  # all three: dead
    assert set(passes.ranked_changes(edges, {}, score).values()) == {"same"}


def test_random_changes_keep_the_kind_of_edge_a_change_was_made_on():
    import random

    from fxdnat.passes.decide import count_changes

    model = torch.nn.Sequential(CASES["se_block"](), CASES["se_block"]())
    gm = fxdnat.trace(model, inputs_for(model))
    edges = passes.discover(gm)
    skips = {e.name for e in edges if e.kind == "skip"}
    for seed in range(10):
        decisions = passes.random_changes(edges, {"skip-none": 1}, random.Random(seed))
        (removed,) = [name for name, choice in decisions.items() if choice == "none"]
        assert removed in skips  # a removed skip, never a removed branch
        assert count_changes(edges, decisions) == {"skip-none": 1}
