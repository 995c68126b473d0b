"""Plot a run: θ of every group over the architecture stage (NAT: its search), learning curves of
both stages. (Accuracy against cost over many runs is `fxdnat.repro.pareto`'s.)"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from fxdnat import checkpoint as ckpt
from fxdnat._files import check_writable
from fxdnat.ir import CHOICES, IDENTITY, NONE, SAME
from fxdnat.passes._graph import op_summary
from fxdnat.repro.pareto import check_format

MAX_PANELS = 48
"""θ panels in one figure; a run with more groups shows those whose θ moved most."""
# the colours of `fxdnat render`: kept black, identity red, removed grey
COLOURS = {SAME: "black", IDENTITY: "#d62728", NONE: "#9a9a9a"}
_COLUMNS = 4


@dataclass(frozen=True)
class Group:
    """One θ row: the edges that share it and the choices they allow."""

    label: str  # "layer1.0:0 (x7)"
    summary: str  # the first edge's op summary
    allowed: tuple[str, ...]
    decision: str | None
    margin: float | None = None  # θ's top-two gap at decide: how sure the decision is
    flipped: bool = False  # the decision changed in the stage's last epochs


def plot(checkpoint: str | Path, out: str | Path, *, trust_code: bool = False) -> Path:
    """Draw θ and the learning curves of ``checkpoint`` into ``out`` (PNG, SVG or PDF).

    ``trust_code``: rebuild a model that the checkpoint says is made by code (see
    ``checkpoint.restore``); without it such a checkpoint is refused before anything runs."""
    out = check_format(out)
    check_writable(out)
    data = ckpt.load(checkpoint)
    history = _history(data)
    groups = _groups(data, trust_code) if history is not None else []
    figure = _figure(data, history, groups)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    import matplotlib.pyplot as plt  # loaded by _figure, after it chose the Agg backend

    plt.close(figure)
    return out


def _history(data: dict) -> torch.Tensor | None:
    """θ per architecture epoch, (epochs + 1, groups, 3), starting from θ = (0, 0, 1)."""
    rows = data.get("theta_history") or []
    if not rows:
        return None
    start = torch.zeros_like(rows[0])
    start[:, CHOICES.index(SAME)] = 1.0  # gate's initial θ: the original network
    return torch.stack([start, *[r.float() for r in rows]])


def _groups(data: dict, trust_code: bool = False) -> list[Group]:
    """Rebuild the θ rows of the run (cell mode shares rows between cells of one structure)."""
    restored = ckpt.restore(data, trust_code=trust_code)
    arch = restored.arch
    decisions = data.get("decisions") or {}
    margins = data["state"].get("margins") or {}
    flipped = set(data["state"].get("flipped") or [])
    groups = []
    for row in range(arch.num_groups):
        edges = arch.edges_of(row)
        first = edges[0]
        label = first.name + (f" (x{len(edges)})" if len(edges) > 1 else "")
        allowed = tuple(c for c in CHOICES if bool(arch.mask[row, CHOICES.index(c)]))
        summary = op_summary(restored.traced, first)
        groups.append(
            Group(
                label,
                summary,
                allowed,
                decisions.get(first.name),
                margins.get(first.name),
                first.name in flipped,
            )
        )
    return groups


def _figure(data: dict, history: torch.Tensor | None, groups: list[Group]):
    # matplotlib only when drawing: the backend is process-wide, and importing fxdnat.plot must
    # not change a notebook's
    import matplotlib

    matplotlib.use("Agg")  # headless: no display needed, safe in any thread
    import matplotlib.pyplot as plt

    shown = _most_moved(history, len(groups)) if history is not None else []
    rows = math.ceil(len(shown) / _COLUMNS)
    columns = min(len(shown), _COLUMNS) or 1
    searched = [m for m in data["state"].get("metrics") or [] if m["stage"] == "search"]
    extra = 2.8 if searched else 2.3 * rows
    figure = plt.figure(figsize=(3.4 * max(columns, 2), extra + 3.4), layout="constrained")
    top, bottom = (
        figure.subfigures(2, 1, height_ratios=[2.3 * rows, 3.4]) if rows else (None, figure)
    )
    if searched:  # NAT: its search in place of θ
        top, bottom = figure.subfigures(2, 1, height_ratios=[2.8, 3.4])
        _search_panel(top, searched)
    if top is not None and not searched:
        _theta_panels(top, history, groups, shown, columns)
    _curves(bottom, data)
    state = data["state"]
    stage = {
        "search": f"NAT's search, epoch {state.get('search_epoch', 0)}",
        "arch": f"architecture stage, epoch {state['epoch']}",
        "net": "network stage",
    }
    labels = {
        "random": "random control",
        "nat": "NAT (adapted)",
        "prune": "contribution pruning",
        "similarity": "similarity removal",
        "original": "original",
    }
    method = labels.get(data.get("method"), "DNAT")
    title = f"{data['model']['spec']}: {method} run ({stage.get(state['stage'], 'finished')})"
    figure.suptitle(title, fontweight="bold")
    return figure


def _most_moved(history: torch.Tensor, count: int) -> list[int]:
    """Every group, or the MAX_PANELS whose θ moved furthest from where it started."""
    if count <= MAX_PANELS:
        return list(range(count))
    moved = (history[-1] - history[0]).abs().sum(dim=1)
    return sorted(sorted(range(count), key=lambda g: -moved[g].item())[:MAX_PANELS])


def _theta_panels(figure, history: torch.Tensor, groups, shown: list[int], columns: int) -> None:
    from matplotlib.lines import Line2D  # after _figure chose the backend
    from matplotlib.ticker import MaxNLocator

    axes = figure.subplots(math.ceil(len(shown) / columns), columns, squeeze=False, sharex=True)
    epochs = list(range(history.shape[0]))
    for ax, row in zip(axes.flat, shown, strict=False):
        group = groups[row]
        for choice in group.allowed:
            column = CHOICES.index(choice)
            ax.plot(epochs, history[:, row, column].tolist(), color=COLOURS[choice], label=choice)
        chosen = f" -> {group.decision}" if group.decision else ""
        if group.margin is not None:
            chosen += f" (margin {group.margin:.2f}{', flipped late' if group.flipped else ''})"
        ax.set_title(f"{group.label}{chosen}\n{_shorten(group.summary)}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(shown) :]:
        ax.set_visible(False)
    for column in range(columns):  # the lowest panel of each column carries its x axis
        lowest = [ax for ax in axes[:, column] if ax.get_visible()][-1]
        lowest.tick_params(labelbottom=True)
        lowest.set_xlabel("architecture epoch", fontsize=8)
    handles = [Line2D([], [], color=COLOURS[c], label=c) for c in (NONE, IDENTITY, SAME)]
    figure.legend(handles=handles, loc="outside upper right", ncols=3, fontsize=8)
    moved = "" if len(shown) == len(groups) else f" ({len(shown)} of {len(groups)} that moved most)"
    figure.suptitle(f"θ per group over the architecture stage{moved}", fontsize=10)


def _search_panel(figure, searched: list[dict]) -> None:
    """NAT's search per epoch: the source network's accuracy and the sampled architectures'
    reward over it on the policy split (shared weights), and the policy's entropy."""
    from matplotlib.ticker import MaxNLocator  # after _figure chose the backend

    ax, ax_entropy = figure.subplots(1, 2)
    epochs = [m["epoch"] for m in searched]
    ax.plot(epochs, [100 * m["source_acc"] for m in searched], label="source accuracy")
    ax.plot(epochs, [100 * m["reward"] for m in searched], label="reward (sample − source)")
    ax.axhline(0, color="#9a9a9a", linewidth=0.8)
    ax.set_ylabel("points (%)")
    ax_entropy.plot(epochs, [m["entropy"] for m in searched], color="black")
    ax_entropy.set_ylabel("policy entropy (nats)")
    for axis in (ax, ax_entropy):
        axis.set_xlabel("search epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.suptitle("NAT's search on the policy split (means per epoch)", fontsize=10)


def _curves(figure, data: dict) -> None:
    """Accuracy and loss of both stages; a dashed line where finalize cut the network."""
    from matplotlib.ticker import MaxNLocator  # after _figure chose the backend

    metrics = [m for m in data["state"].get("metrics") or [] if m["stage"] != "search"]
    ax_acc, ax_loss = figure.subplots(1, 2)
    for split, style in (("train", "--"), ("test", "-")):
        # a callback's checkpoint has the curves the framework logged under names it knows
        for ax, kind, unit in ((ax_acc, "acc", 100), (ax_loss, "loss", 1)):
            known = [
                (m["epoch"], unit * m[key]) for m in metrics if (key := f"{split}_{kind}") in m
            ]
            if known:
                ax.plot(*zip(*known, strict=True), style, label=split)
    ax_acc.set_ylabel("accuracy (%)")
    ax_loss.set_ylabel("loss")
    losses = [m["test_loss"] for m in metrics if m.get("test_loss") is not None]
    if losses and min(losses) > 0:
        ax_loss.set_yscale("log")  # early test losses of a fresh network can be 100x the last
    finalized = [m["epoch"] for m in metrics if m["stage"] == "arch"]
    for ax in (ax_acc, ax_loss):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if finalized and len(finalized) < len(metrics):
            ax.axvline(finalized[-1], color="#d62728", linestyle=":", linewidth=1.2)
            ax.annotate(
                "finalize",
                (finalized[-1], 1),
                xycoords=("data", "axes fraction"),
                xytext=(3, -12),
                textcoords="offset points",
                color="#d62728",
                fontsize=8,
            )
        if ax.get_legend_handles_labels()[0]:  # a language model has no accuracy curve
            ax.legend(fontsize=8)
    if not metrics:
        ax_acc.text(0.5, 0.5, "no epoch finished yet", ha="center", transform=ax_acc.transAxes)
    ax_acc.set_title("accuracy", fontsize=10)
    ax_loss.set_title("loss", fontsize=10)


def _shorten(summary: str, width: int = 40) -> str:
    return summary if len(summary) <= width else summary[: width - 3] + "..."
