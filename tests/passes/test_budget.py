"""Cost budgets in the compiler: the cost model against what finalize emits, the exact knapsack
of ``decide(..., budget=)``, the refusal of an unreachable budget, and θ's cost term."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from random_nets import networks
from support import random_theta
from torch import nn

import fxdnat
from fxdnat import passes, zoo
from fxdnat.budget import BudgetTerm
from fxdnat.contribution import contributions, similarities
from fxdnat.cost import CostModel, cost_model, count_flops, count_params, node_latency
from fxdnat.ir import CHOICES, NONE, SAME, joins_of
from fxdnat.passes import BudgetError, cheapest, fit_budget


def _measured(final, gm, inputs) -> dict[str, float]:
    """What the emitted module costs, as fractions of the original (counted, not modelled)."""
    return {
        "flops": count_flops(final, inputs) / max(count_flops(gm, inputs), 1),
        "params": count_params(final) / max(count_params(gm), 1),
    }


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    networks(inputs=("tensor",)),
    st.sampled_from(["branch", "op"]),
    st.floats(0.05, 1.0),
    st.floats(0.05, 1.0),
    st.integers(0, 2**16),
)
def test_the_emitted_network_never_exceeds_the_budget(case, granularity, flops, params, seed):
    net, inputs = case
    gm = fxdnat.trace(net, inputs)
    edges = passes.discover(gm, granularity)
    if not edges:
        return
    gated = passes.gate(gm, edges, tie="full")
    with torch.no_grad():
        gated.arch.theta.copy_(random_theta(gated.arch.theta.shape, seed))
    costs = cost_model(gm, edges, inputs)
    budget = {"flops": flops, "params": params}
    try:
        decisions = passes.decide(gated, budget=budget, costs=costs)
    except BudgetError as exc:  # refused only when truly out of reach, with the reachable cost
        low = cheapest(edges, costs)
        assert (
            low["flops"] > flops
            or low["params"] > params
            or _jointly_out_of_reach(edges, costs, budget)
        )
        assert "smallest reachable cost is flops=" in str(exc)
        return
    passes.check_decisions(edges, decisions)  # never a dead join
    final = passes.finalize(gated, decisions)
    measured = _measured(final, gm, inputs)
    modelled = costs.fraction(decisions)
    for resource, target in budget.items():
        assert measured[resource] <= modelled[resource] + 1e-12 <= target + 1e-9


def _jointly_out_of_reach(edges, costs, budget) -> bool:
    """Each bound reachable alone but not both at once: check by enumeration (small nets)."""
    if len(edges) > 10:
        return True
    for combo in itertools.product(*(e.choices for e in edges)):
        decisions = dict(zip((e.name for e in edges), combo, strict=True))
        if any(all(decisions[e.name] == NONE for e in m) for m in joins_of(edges).values()):
            continue
        if all(costs.fraction(decisions)[r] <= t for r, t in budget.items()):
            return False
    return True


@pytest.mark.parametrize(
    ("name", "granularity"), [("resnet20", "branch"), ("mobilenetv2", "op"), ("darts", "branch")]
)
def test_the_cost_model_is_what_finalize_emits_on_real_models(name, granularity):
    torch.manual_seed(0)
    model = zoo.create_model(name, num_classes=10)
    x = torch.zeros(1, 3, 32, 32)
    gm = fxdnat.trace(model, x)
    edges = passes.discover(gm, granularity)
    gated = passes.gate(gm, edges, tie="full")
    costs = cost_model(gm, edges, x)
    for seed in range(3):
        decisions = passes.random_decisions(edges, random.Random(seed))
        final = passes.finalize(gated, decisions)
        cost = costs.cost(decisions)
        if name == "darts":  # finalize also drops a cell's preprocessing that only removed
            assert cost["flops"] >= count_flops(final, x)  # edges read: the model stays above
            assert cost["params"] >= count_params(final)
        else:
            assert cost["flops"] == count_flops(final, x)
            assert cost["params"] == count_params(final)


def _toy():
    """Three residual blocks whose branches cost 1, 2 and 4 convs; a stem conv outside."""

    class Block(nn.Module):
        def __init__(self, depth: int) -> None:
            super().__init__()
            self.convs = nn.Sequential(*(nn.Conv2d(2, 2, 3, padding=1) for _ in range(depth)))

        def forward(self, x):
            return x + self.convs(x)

    net = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), Block(1), Block(2), Block(4))
    x = torch.randn(1, 2, 4, 4)
    gm = fxdnat.trace(net, x)
    edges = passes.discover(gm)
    return gm, edges, passes.gate(gm, edges, tie="full"), cost_model(gm, edges, x)


def test_the_knapsack_is_optimal_against_every_decision():
    gm, edges, gated, costs = _toy()
    rng = random.Random(0)
    for _ in range(20):
        with torch.no_grad():
            gated.arch.theta.uniform_(
                -1, 2, generator=torch.Generator().manual_seed(rng.randrange(9**9))
            )
        target = rng.uniform(0.2, 1.0)
        theta = gated.arch.theta.detach().clone()

        def score(decisions, theta=theta):
            return sum(
                theta[gated.arch.group_of[n], CHOICES.index(c)].item() for n, c in decisions.items()
            )

        feasible = []
        for combo in itertools.product(*(e.choices for e in edges)):
            decisions = dict(zip((e.name for e in edges), combo, strict=True))
            dead = any(all(decisions[e.name] == NONE for e in m) for m in joins_of(edges).values())
            if not dead and costs.fraction(decisions)["flops"] <= target:
                feasible.append(decisions)
        try:
            got = passes.decide(gated, budget={"flops": target}, costs=costs)
        except BudgetError:
            assert not feasible
            continue
        assert score(got) == pytest.approx(max(map(score, feasible)), abs=1e-4)


def test_within_a_loose_budget_decide_is_the_argmax():
    _, _, gated, costs = _toy()
    with torch.no_grad():
        gated.arch.theta.copy_(random_theta(gated.arch.theta.shape, 3))
    assert passes.decide(gated, budget={"flops": 1.0}, costs=costs) == passes.decide(gated)


def test_an_unreachable_budget_is_refused_with_the_reachable_minimum():
    _, edges, gated, costs = _toy()
    low = cheapest(edges, costs)["flops"]  # the stem alone
    stem = costs.total["flops"] - sum(c["flops"] for c in costs.edges.values())
    assert low == pytest.approx(stem / costs.total["flops"])
    with pytest.raises(BudgetError, match=f"smallest reachable cost is flops={low:.4g}"):
        passes.decide(gated, budget={"flops": low * 0.99}, costs=costs)
    assert passes.decide(gated, budget={"flops": low}, costs=costs)  # the minimum itself fits
    with pytest.raises(ValueError, match="needs the network's costs"):
        passes.decide(gated, budget={"flops": 0.5})


def test_a_join_of_two_branches_keeps_one_whatever_the_budget():
    class TwoBranches(nn.Module):  # y = a(x) + b(x), widening: no identity, one must stay
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(2, 4, 1)

        def forward(self, x):
            return self.a(x) + self.b(x)

    x = torch.randn(1, 2, 4, 4)
    gm = fxdnat.trace(TwoBranches(), x)
    edges = passes.discover(gm)
    costs = cost_model(gm, edges, x)
    low = cheapest(edges, costs)["flops"]
    assert low == pytest.approx(costs.edges[edges[1].name]["flops"] / costs.total["flops"])
    scores = {e.name: dict.fromkeys(e.choices, 0.0) for e in edges}
    decisions = fit_budget(edges, scores, costs, {"flops": low})
    assert decisions == {edges[0].name: NONE, edges[1].name: SAME}
    with pytest.raises(BudgetError):
        fit_budget(edges, scores, costs, {"flops": low * 0.9})


def test_node_latency_times_every_node_and_the_model_adds_them_up():
    gm, edges, _, _ = _toy()
    x = torch.randn(8, 2, 4, 4)
    seconds = node_latency(gm, x, repeats=3, warmup=1)
    assert list(seconds) == [n.name for n in gm.graph.nodes]
    assert all(s >= 0 for s in seconds.values())
    costs = cost_model(gm, edges, x, ("flops", "params", "latency"))
    assert set(costs.total) == {"flops", "params", "latency"}
    branches = sum(c["latency"] for c in costs.edges.values())
    assert 0 < branches < costs.total["latency"]
    assert CostModel.from_dict(costs.to_dict()) == costs


def test_the_cost_term_pushes_theta_towards_the_target_and_its_multiplier_settles():
    _, edges, gated, costs = _toy()
    term = BudgetTerm(gated.arch, costs, {"flops": 0.5})
    start = term.expected_cost(gated.arch.theta)["flops"].item()
    assert start == pytest.approx(1.0)  # θ = (0, 0, 1): the original computes every branch
    opt = torch.optim.Adam([gated.arch.theta], lr=0.05)
    highest = 0.0
    for _ in range(300):
        loss = term.penalty()
        if loss.requires_grad:  # λ = 0 at first: no gradient until it grows
            loss.backward()
        opt.step()
        opt.zero_grad()
        term.update()
        highest = max(highest, term.multipliers["flops"])
    assert term.expected["flops"] < 0.6
    assert highest > 0
    # the term lowers the weights the network computes with: the branches it gives up weigh
    # (almost) nothing, and what fits keeps the branches it kept
    same = gated.arch.theta[:, CHOICES.index(SAME)].detach()
    assert same.min() < 0.1
    cheap = passes.decide(gated, budget={"flops": 0.5}, costs=costs)
    given_up = {e.name for e in edges if same[gated.arch.group_of[e.name]] < 0.1}
    assert given_up <= {name for name, choice in cheap.items() if choice != SAME}
    # once under the target, the multiplier only falls
    under = BudgetTerm(gated.arch, costs, {"flops": 0.99})
    under.multipliers["flops"] = 1.0
    under.penalty()
    under.update()
    assert under.multipliers["flops"] < 1.0


def test_contributions_rank_a_silent_branch_last():
    class Block(nn.Module):
        def __init__(self, scale: float) -> None:
            super().__init__()
            self.conv, self.scale = nn.Conv2d(2, 2, 3, padding=1), scale

        def forward(self, x):
            return x + self.scale * self.conv(x)

    net = nn.Sequential(Block(1.0), Block(0.0), Block(0.1))
    x = torch.randn(4, 2, 4, 4)
    gm = fxdnat.trace(net, x)
    edges = passes.discover(gm)
    gated = passes.gate(gm, edges, tie="full")
    ratio = contributions(gated, [x, (x, None)])
    branch = {e.cell: ratio[e.name] for e in edges if e.kind == "branch"}
    assert branch["1"] == pytest.approx(0.0, abs=1e-9)
    assert 0 < branch["2"] < branch["0"] < 1
    with torch.no_grad():
        gated.arch.theta[0, CHOICES.index(SAME)] = 0.5
    with pytest.raises(ValueError, match="must be"):
        contributions(gated, [x])


def test_similarity_ranks_a_silent_branch_first_over_tokens_and_pixels():
    class Block(nn.Module):  # x + scale · f(x) on (batch, tokens, features) or NCHW
        def __init__(self, scale: float, image: bool) -> None:
            super().__init__()
            self.f = nn.Conv2d(4, 4, 1) if image else nn.Linear(4, 4)
            self.scale = scale

        def forward(self, x):
            return x + self.scale * self.f(x)

    for shape in ((3, 5, 4), (3, 4, 2, 2)):
        image = len(shape) == 4
        net = nn.Sequential(Block(1.0, image), Block(0.0, image), Block(0.1, image))
        x = torch.randn(shape)
        gm = fxdnat.trace(net, x)
        edges = passes.discover(gm)
        gated = passes.gate(gm, edges, tie="full")
        cos = similarities(gated, [x])
        branch = {e.cell: cos[e.name] for e in edges if e.kind == "branch"}
        assert branch["1"] == pytest.approx(1.0)  # a silent branch passes x on unchanged
        assert -1 <= branch["0"] < branch["2"] < 1
        # by hand: the mean over positions of the cosine along the feature axis
        with torch.no_grad():
            y = net[0](x)
        axis = 1 if image else -1
        want = nn.functional.cosine_similarity(x, y, dim=axis).mean()
        assert branch["0"] == pytest.approx(float(want), rel=1e-5)


def test_a_cost_model_of_another_graph_or_resource_is_refused():
    _, edges, gated, costs = _toy()
    one_block = fxdnat.trace(nn.Sequential(nn.Conv2d(2, 2, 1)), torch.randn(1, 2, 4, 4))
    other = cost_model(one_block, [], torch.randn(1, 2, 4, 4))
    with pytest.raises(ValueError, match="measured for 0 other edges than these"):
        passes.decide(gated, budget={"flops": 0.5}, costs=other)
    with pytest.raises(ValueError, match="the budget bounds latency but the cost model counts"):
        passes.decide(gated, budget={"latency": 0.5}, costs=costs)
    with pytest.raises(ValueError, match="the budget bounds latency"):
        cheapest(edges, costs, ["latency"])
    with pytest.raises(ValueError, match="unknown resource"):
        cost_model(one_block, [], torch.randn(1, 2, 4, 4), ("memory",))
