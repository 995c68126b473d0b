"""The NAT baseline's first two stages inside a run (``--method nat``): search, then derive.

Search (NAT's reference code; facts in the project's REFERENCES.md): the training set is split
once, 40 % for the supernet's weights and 60 % for the policy. Each search epoch is one pass of
weight steps — each on one architecture drawn as ``NatSchedule.weight_archs`` says, θ set
one-hot to it — then one pass of policy steps: one architecture sampled from the policy per
minibatch, rewarded by its accuracy minus the source network's on that minibatch with the
shared weights, both with BatchNorm's batch statistics (NAT never calls ``eval()``).

Derive: 10 architectures sampled from the policy, each scored on the whole policy split (with
training augmentation and batch statistics, as NAT), the best kept — dead joins and all. The
trainer then builds that network from scratch and trains it as ``original`` trains its own.

Every epoch and the derive are seeded from (seed, epoch), so a run resumed from its last
checkpoint (written after every search epoch) repeats the uninterrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from fxdnat.data import seed_worker
from fxdnat.dnat import DNAT
from fxdnat.engine.runtime import Runtime
from fxdnat.ir import CHOICES, SAME, Edge
from fxdnat.nat import (
    ArchGraph,
    Policy,
    dead_joins,
    decisions_of,
    reinforce_loss,
    sample,
    score,
    uniform_rows,
    update_baseline,
)
from fxdnat.zoo.recipes import NatSchedule

_SPLIT_SEED = 0  # the weight / policy split is one for all seeds, as NAT's is fixed
_DERIVE = 999_983  # the derive's place among a run's seeded streams (after every epoch)


@dataclass
class Split:
    """The training set's two parts: the supernet's weights' and the policy's (in full batches
    for steps, every example once for the derive's scores)."""

    weights: DataLoader
    policy: DataLoader
    scoring: DataLoader


def split_loaders(train: Dataset, schedule: NatSchedule, workers: int) -> Split:
    """Loaders over a fixed shuffled split of ``train`` (``weight_split`` of it for the weights).

    Raises:
        ValueError: a part smaller than one batch (say which and what to do).
    """
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(_SPLIT_SEED))
    cut = int(len(train) * schedule.weight_split)
    parts = {"weights": order[:cut].tolist(), "policy": order[cut:].tolist()}
    for part, indices in parts.items():
        if len(indices) < schedule.batch_size:
            raise ValueError(
                f"NAT's {part} split has {len(indices)} training examples, fewer than one batch "
                f"of {schedule.batch_size} (the recipe's NAT batch); use more data (drop or "
                "raise --limit)"
            )

    def loader(indices: list[int], whole: bool = False) -> DataLoader:
        return DataLoader(
            Subset(train, indices),
            batch_size=schedule.batch_size,
            shuffle=True,
            drop_last=not whole,
            num_workers=workers,
            worker_init_fn=seed_worker,
            generator=torch.Generator(),
        )

    return Split(loader(parts["weights"]), loader(parts["policy"]), loader(parts["policy"], True))


class Search:
    """NAT's supernet (the gated module of ``dnat``), its policy and their optimizers.

    ``loss_of(net, x, y)`` → (loss, logits) is the run's loss; ``order`` the traced graph's node
    names in graph order (the policy's node positions)."""

    def __init__(
        self,
        dnat: DNAT,
        schedule: NatSchedule,
        split: Split,
        runtime: Runtime,
        loss_of: Callable,
        order: list[str],
        seed: int,
    ) -> None:
        arch = dnat.arch
        self.dnat, self.schedule, self.split, self.runtime = dnat, schedule, split, runtime
        self.loss_of, self.seed = loss_of, seed
        self.edges: list[Edge] = list(arch.edges)
        self.groups = list(arch.groups)
        torch.manual_seed(seed)  # the policy's initial weights
        graph = ArchGraph.build(self.edges, self.groups, arch.mask, order)
        self.policy = Policy(graph).to(runtime.device)
        self.optimizer = torch.optim.Adam(
            self.policy.parameters(),
            lr=schedule.policy_lr,
            betas=schedule.policy_betas,
            weight_decay=schedule.policy_weight_decay,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])

    # --------------------------------------------------------------------- one epoch
    def epoch(
        self,
        epoch: int,
        opt_w: torch.optim.Optimizer,
        baseline: float,
        clip: float | None,
        stop: Callable[[], bool] = lambda: False,
    ) -> tuple[dict[str, float], float] | None:
        """One search epoch: a pass of weight steps, then a pass of policy steps. Returns the
        epoch's record (means over its steps) and the baseline after it; None as soon as
        ``stop()`` says so between two steps (the epoch is then to be repeated)."""
        streams = self._seeded(epoch)
        weights = []
        for x, y in self._on(self.split.weights):
            if stop():
                return None
            weights.append(self.weight_step(x, y, streams, opt_w, clip))
        rewards, sources, entropies = [], [], []
        for x, y in self._on(self.split.policy):
            if stop():
                return None
            reward, source, ent = self.policy_step(x, y, streams, baseline)
            baseline = update_baseline(baseline, reward, self.schedule.baseline_decay)
            rewards.append(reward)
            sources.append(source)
            entropies.append(ent)
        self._assign(None)  # a checkpoint between epochs holds the source network's θ
        record = {
            "train_loss": _mean(weights),
            "reward": _mean(rewards),
            "baseline": baseline,
            "source_acc": _mean(sources),
            "entropy": _mean(entropies),
            "weight_steps": len(weights),
            "policy_steps": len(rewards),
        }
        return record, baseline

    def _seeded(self, epoch: int) -> torch.Generator:
        """Seed the loaders' order, augmentation (torch's global RNG) and the architecture
        draws (the returned generator) of one search epoch (or of the derive: ``_DERIVE``),
        each stream from its own seed."""
        base = 8 * (self.seed * 1_000_003 + epoch)
        torch.manual_seed(base)
        self.split.weights.generator.manual_seed(base + 1)
        self.split.policy.generator.manual_seed(base + 2)
        self.split.scoring.generator.manual_seed(base + 3)
        return torch.Generator().manual_seed(base + 4)

    def _on(self, loader: DataLoader):
        for x, y in loader:
            yield self.runtime.to_device(x, y)

    def weight_step(self, x, y, draws: torch.Generator, opt_w, clip: float | None) -> float:
        """One SGD step of the supernet's weights on (x, y), on an architecture drawn from
        ``draws`` as ``weight_archs`` says; returns the loss."""
        self._assign(self._weight_rows(draws))
        done = self.dnat.step(lambda net: self.loss_of(net, x, y), opt_w, None, clip=clip)
        return done.loss.item()

    def _weight_rows(self, draws: torch.Generator) -> torch.Tensor:
        how = self.schedule.weight_archs
        if how == "source":
            return torch.full((len(self.policy.mask),), CHOICES.index(SAME))
        if how == "policy":
            with torch.no_grad():
                return sample(self.policy().cpu(), draws).rows
        return uniform_rows(self.policy.mask.cpu(), draws)

    def policy_step(self, x, y, draws: torch.Generator, baseline: float):
        """REINFORCE on one minibatch: one architecture sampled (from ``draws``), rewarded by
        its accuracy on (x, y) minus the source's; returns (reward, the source's accuracy, the
        policy's entropy)."""
        source = self._accuracy(x, y, None)
        drawn = sample(self.policy().cpu(), draws)
        reward = self._accuracy(x, y, drawn.rows) - source
        loss = reinforce_loss(drawn, reward, baseline, self.schedule.entropy_weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.policy.parameters(), self.schedule.policy_grad_clip)
        self.optimizer.step()
        return reward, source, drawn.entropy.item()

    @torch.no_grad()
    def _accuracy(self, x, y, rows: torch.Tensor | None) -> float:
        """Top-1 on (x, y) of the architecture ``rows`` (None: the source), with the shared
        weights and BatchNorm's batch statistics (the module stays in train mode, as NAT's);
        a language model's: of its next tokens (every example has as many)."""
        self._assign(rows)
        with self.runtime.autocast():
            _, logits = self.loss_of(self.dnat.module, x, y)
        return (logits.argmax(-1) == y).float().mean().item()

    def _assign(self, rows: torch.Tensor | None) -> None:
        """θ one-hot on ``rows`` (a choice index per θ row); None: the source, (0, 0, 1)."""
        theta = self.dnat.theta
        with torch.no_grad():
            theta.zero_()
            if rows is None:
                theta[:, CHOICES.index(SAME)] = 1.0
            else:
                theta[torch.arange(len(rows)), rows.to(theta.device)] = 1.0

    # ------------------------------------------------------------------------ derive
    def derive(self) -> dict[str, Any]:
        """Sample ``derive_samples`` architectures, score each on the whole policy split, keep
        the best (the first of equals). Returns what the run's state records: the decisions,
        each sample's score and dead joins, and the policy's log-probability of the chosen."""
        draws = self._seeded(_DERIVE)
        with torch.no_grad():
            logits = self.policy().cpu()
        samples = [sample(logits, draws).rows for _ in range(self.schedule.derive_samples)]
        scores = [self._score(rows) for rows in samples]
        best = max(range(len(samples)), key=lambda i: (scores[i], -i))
        decisions = [decisions_of(rows, self.edges, self.groups) for rows in samples]
        self._assign(None)
        return {
            "decisions": decisions[best],
            "chosen": best,
            "scores": scores,
            "dead_joins": [len(dead_joins(self.edges, d)) for d in decisions],
            "log_prob": score(logits, samples[best]).item(),
            "probabilities": logits.softmax(1).tolist(),
        }

    def _score(self, rows: torch.Tensor) -> float:
        """Accuracy of ``rows`` on every example of the policy split; every sample sees the
        same batches and augmentation."""
        seed = 8 * (self.seed * 1_000_003 + _DERIVE + 1)
        torch.manual_seed(seed)
        self.split.scoring.generator.manual_seed(seed + 1)
        correct = seen = 0.0
        for x, y in self._on(self.split.scoring):
            correct += self._accuracy(x, y, rows) * len(y)
            seen += len(y)
        return correct / seen


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
