"""The NAT baseline: its policy (masked, learns by REINFORCE), dead joins counted exactly, and a
run that searches, derives and retrains, resumable at any point."""

from __future__ import annotations

import json

import pytest
import torch

from fxdnat import checkpoint as ckpt
from fxdnat import nat
from fxdnat.engine import Interrupted, Reporter, RunConfig, Trainer
from fxdnat.ir import CHOICES, Edge


def edge(name: str, join: str | None, source: str, kind: str = "branch") -> Edge:
    choices = ("none", "same") if kind == "skip" else CHOICES
    return Edge(name, kind, source, f"{name}_out", (), join, join, 1, choices, "", name)


# two residual blocks in a row: x ─(branch a, skip)─► add1 ─(branch b, skip)─► add2
BLOCKS = [
    edge("a", "add1", "x"),
    edge("a_skip", "add1", "x", "skip"),
    edge("b", "add2", "add1"),
    edge("b_skip", "add2", "add1", "skip"),
]
ORDER = ["x", "a_out", "a_skip_out", "add1", "b_out", "b_skip_out", "add2"]


def policy_of(edges=BLOCKS) -> nat.Policy:
    groups = list(range(len(edges)))
    mask = torch.zeros(len(edges), 3, dtype=torch.bool)
    for i, e in enumerate(edges):
        mask[i, [CHOICES.index(c) for c in e.choices]] = True
    return nat.Policy(nat.ArchGraph.build(edges, groups, mask, ORDER))


def test_the_policy_never_proposes_a_choice_an_edge_does_not_allow():
    torch.manual_seed(0)
    policy = policy_of()
    with torch.no_grad():  # move the policy off its uniform start
        for p in policy.parameters():
            p.normal_(std=0.02)
    logits = policy()
    probabilities = logits.softmax(1)
    identity = CHOICES.index("identity")
    assert probabilities[1, identity] == 0 and probabilities[3, identity] == 0  # the skips
    assert torch.all(probabilities[[0, 2]] > 0)
    drawn = torch.stack([nat.sample(logits).rows for _ in range(500)])
    assert not (drawn[:, [1, 3]] == identity).any()
    assert torch.isfinite(nat.entropy(logits)) and torch.isfinite(nat.sample(logits).log_prob)


def test_the_policy_starts_uniform_over_each_edges_allowed_choices():
    probabilities = policy_of()().softmax(1)
    assert torch.allclose(probabilities[0], torch.full((3,), 1 / 3))
    assert torch.allclose(probabilities[1], torch.tensor([0.5, 0.0, 0.5]))


def test_reinforce_learns_the_choice_that_is_known_to_be_better():
    """A bandit: reward 1 when branch b is the identity, else 0 — the policy must learn it,
    with NAT's baseline and entropy term, and must not learn anything about branch a."""
    torch.manual_seed(0)
    policy = policy_of()
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3, betas=(0.5, 0.999))
    draws = torch.Generator().manual_seed(0)
    baseline = 0.0
    identity = CHOICES.index("identity")
    for _ in range(300):
        drawn = nat.sample(policy(), draws)
        reward = float(drawn.rows[2] == identity)
        loss = nat.reinforce_loss(drawn, reward, baseline, entropy_weight=0.003)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        baseline = nat.update_baseline(baseline, reward, 0.99)
    probabilities = policy().softmax(1)
    assert probabilities[2, identity] > 0.9
    # the sign: the same loss with the reward negated drives the choice out
    assert nat.reinforce_loss(drawn, 1.0, 0.0, 0.0).item() == pytest.approx(-drawn.log_prob.item())


def test_dead_joins_are_counted_exactly():
    assert nat.dead_joins(BLOCKS, {}) == []
    assert nat.dead_joins(BLOCKS, {"a": "none"}) == []  # the skip still feeds add1
    assert nat.dead_joins(BLOCKS, {"a": "none", "a_skip": "none"}) == ["add1"]
    everything = {e.name: "none" for e in BLOCKS}
    assert nat.dead_joins(BLOCKS, everything) == ["add1", "add2"]
    op = Edge("conv", "op", "x", "conv_out", ("conv",), None, None, None, CHOICES, "", "conv")
    assert nat.dead_joins([*BLOCKS, op], {"conv": "none"}) == []  # an op edge has no join


# ----------------------------------------------------------------------------- a run
def config(tmp_path, name="run", **overrides) -> RunConfig:
    fields = dict(
        spec="zoo:resnet20",
        out=str(tmp_path / name),
        data="digits-hard",
        recipe="quick",
        limit=128,  # NAT's split: 51 images for the weights, 77 for the policy, batch 16
        method="nat",
        search_epochs=2,
        epochs=2,
    )
    return RunConfig(**{**fields, **overrides})


class _Kill(Reporter):
    """A kill -9 at a point of the run: the search epoch ``search``, the derive, or the start
    of the retraining epoch ``net`` (each before its checkpoint is written)."""

    def __init__(self, search: int | None = None, derive: bool = False, net: int | None = None):
        self.search, self.derive, self.net = search, derive, net

    def event(self, name: str, data: dict) -> None:
        if (name == "search_epoch" and data["epoch"] == self.search) or (
            name == "derive" and self.derive
        ):
            raise SystemExit("killed")

    def epoch_start(self, epoch: int, stage: str, steps: int) -> None:
        if epoch == self.net:
            raise SystemExit("killed")


def run(cfg: RunConfig, reporter: Reporter | None = None, resume: bool = False) -> dict:
    return Trainer(cfg, reporter or Reporter(), resume=resume).run()


def stored(path) -> tuple[dict, dict]:
    data = ckpt.load(path / "checkpoint.pt")
    return data["model_state"], data["state"]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nat")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every test runs (conftest), or the sums differ in the last bit
    try:
        summary = run(config(tmp, "whole"))
    finally:
        torch.set_num_threads(threads)
    return tmp / "whole", summary


def test_a_nat_run_searches_derives_and_trains_the_derived_network_from_scratch(whole):
    out, summary = whole
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == ["search", "search", "net", "net"]
    data = ckpt.load(out / "checkpoint.pt")
    derive = data["state"]["derive"]
    assert len(derive["scores"]) == 10 and derive["decisions"] == data["decisions"]
    assert summary["method"] == "nat" and summary["dead_joins"] == nat.dead_joins(
        [Edge.from_dict(e) for e in data["edges"]], data["decisions"]
    )
    assert summary["nat"]["scores"] == derive["scores"]
    assert set(data["nat"]) == {"policy", "optimizer"}  # the searched policy stays with the run
    network, _ = ckpt.load_network(out / "checkpoint.pt")
    assert not hasattr(network, "arch")  # the retrained network is clean


@pytest.mark.parametrize(
    "kill",
    [_Kill(search=2), _Kill(derive=True), _Kill(net=1)],
    ids=["search", "derive", "retrain"],
)
def test_resume_after_a_kill_repeats_the_uninterrupted_run(whole, tmp_path, kill):
    with pytest.raises(SystemExit):
        run(config(tmp_path, "killed"), kill)
    run(config(tmp_path, "killed"), resume=True)
    (weights, state), (expected, expected_state) = stored(tmp_path / "killed"), stored(whole[0])
    assert weights.keys() == expected.keys()
    for key in weights:
        assert torch.equal(weights[key], expected[key]), key
    assert state["derive"] == expected_state["derive"]

    def timeless(metrics):
        return [{k: v for k, v in m.items() if k != "seconds"} for m in metrics]

    assert timeless(state["metrics"]) == timeless(expected_state["metrics"])


def test_a_dead_join_is_trained_as_nat_emits_it(tmp_path, monkeypatch):
    """Whatever the policy derives is trained as it is: a join left with no operand is a zero
    tensor (here forced: every edge of the first block removed), counted in the summary."""
    from fxdnat.engine import search

    def derive(self):
        decisions = {e.name: "same" for e in self.edges}
        decisions |= {"layer1.0:0": "none", "layer1.0:1": "none"}
        return {"decisions": decisions, "chosen": 0, "scores": [0.0], "dead_joins": [1]}

    monkeypatch.setattr(search.Search, "derive", derive)
    summary = run(config(tmp_path, search_epochs=1, epochs=1))
    assert len(summary["dead_joins"]) == 1
    network, _ = ckpt.load_network(tmp_path / "run" / "checkpoint.pt")
    assert any(n.target in (torch.zeros_like, "new_zeros") for n in network.graph.nodes)


class _CtrlC(Reporter):
    """Presses Ctrl-C once the first search epoch has finished."""

    trainer: Trainer

    def event(self, name: str, data: dict) -> None:
        if name == "search_epoch" and data["epoch"] == 1:
            self.trainer.stop.requested = True


def test_ctrl_c_in_the_search_keeps_the_last_epoch_and_resume_repeats_the_cut_one(whole, tmp_path):
    reporter = _CtrlC()
    reporter.trainer = Trainer(config(tmp_path, "cut"), reporter)
    with pytest.raises(Interrupted, match="interrupted in search epoch 2; resuming repeats it"):
        reporter.trainer.run()
    assert stored(tmp_path / "cut")[1]["search_epoch"] == 1
    run(config(tmp_path, "cut"), resume=True)
    weights, expected = stored(tmp_path / "cut")[0], stored(whole[0])[0]
    assert all(torch.equal(weights[k], expected[k]) for k in expected)


def test_the_derived_network_trains_from_scratch_as_the_original_run_of_its_seed(
    tmp_path, monkeypatch
):
    """Retraining is `original`'s recipe from `original`'s initial weights: a derive that keeps
    the source network trains exactly the original run."""
    from fxdnat.engine import search

    def derive(self):
        decisions = {e.name: "same" for e in self.edges}
        return {"decisions": decisions, "chosen": 0, "scores": [0.0], "dead_joins": [0]}

    monkeypatch.setattr(search.Search, "derive", derive)
    nat_run = run(config(tmp_path, "nat", search_epochs=1))
    original = run(config(tmp_path, "original", method="original", search_epochs=None))
    assert nat_run["test_acc"] == original["test_acc"]
    weights, expected = stored(tmp_path / "nat")[0], stored(tmp_path / "original")[0]
    assert list(weights) == list(expected)
    assert all(torch.equal(weights[k], expected[k]) for k in expected)


def test_a_supernet_that_diverges_stops_the_run_with_what_to_do(tmp_path, monkeypatch):
    from fxdnat.engine import TrainingError, search

    monkeypatch.setattr(search.Search, "weight_step", lambda *args: float("nan"))
    with pytest.raises(TrainingError, match="NAT's supernet loss became nan in search epoch 1"):
        run(config(tmp_path))
    assert stored(tmp_path / "run")[1]["search_epoch"] == 0  # the last good checkpoint


def test_a_dead_join_costs_nothing_of_the_branches_it_lost():
    """NAT's null edges compute nothing: a dead strided block keeps none of its branch's
    weights (its zeros take the batch from the block's input)."""
    from fxdnat import passes, zoo
    from fxdnat.frontend import trace

    torch.manual_seed(0)
    model = zoo.create_model("resnet20", num_classes=10, input_size=8).eval()
    gm = trace(model, torch.zeros(1, 3, 8, 8))
    gated = passes.gate(gm, passes.discover(gm), tie="full")
    decisions = {"layer2.0:0": "none", "layer2.0:1": "none"}  # a strided block, both edges
    gated.arch.assign(decisions)
    final = passes.finalize(gated, decisions, scale="one", allow_dead=True)
    assert not any(name.startswith("layer2.0.") for name, _ in final.named_parameters())
    x = torch.randn(5, 3, 8, 8)
    torch.testing.assert_close(final(x), gated(x))


def test_epochs_cap_the_search_as_they_cap_dnats_stage_unless_search_epochs_says():
    from fxdnat.config import resolve_recipe

    def search(**fields):
        return resolve_recipe(RunConfig(**{**fields, "spec": "zoo:resnet20", "out": "o",
                                           "data": "digits-hard", "recipe": "quick",
                                           "method": "nat"})).nat.search_epochs  # fmt: skip

    assert search() == 80
    assert search(epochs=10) == 10
    assert search(epochs=10, search_epochs=30) == 30
