"""Rich progress bars and summaries for ``fxdnat transform`` (the library itself only logs)."""

from __future__ import annotations

import math
import statistics

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fxdnat.engine import Reporter
from fxdnat.reach import UNSURE


class RichReporter(Reporter):
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.epochs = 0
        self.language = False  # a causal LM: losses and perplexities instead of accuracies

    def start(self, info: dict) -> None:
        self.epochs = info["recipe"]["epochs"]
        self.language = info.get("task") == "causal-lm"
        r = info["recipe"]
        resumed = f", resumed after epoch {info['resumed_at']}" if info["resumed_at"] else ""
        rows = f" ({info['groups']} θ rows, tie {info['tie']})" if info["groups"] else ""
        world = f" ×{info['world']}" if info["world"] > 1 else ""
        stages = f"{r['arch_epochs']} architecture"
        if info["method"] == "nat":
            stages = f"after {r['nat']['search_epochs']} of NAT's search"
        self.console.print(
            f"[bold]{info['spec']}[/] {info['method']} on {info['data']}: {info['edges']} edges"
            f"{rows}, {r['epochs']} epochs ({stages}), "
            f"batch {r['batch_size']}, {info['device']}{world}{resumed}"
        )
        if info["method"] == "nat":
            n = r["nat"]
            self.console.print(
                f"NAT: {n['search_epochs']} search epochs first (supernet weights on "
                f"{100 * n['weight_split']:.0f} % of the training set, trained on "
                f"{n['weight_archs']} architectures; policy on the rest; batch {n['batch_size']}),"
                f" then the best of {n['derive_samples']} samples trains from scratch",
                highlight=False,
            )
        reach = info.get("reach") or {}
        if reach.get("theta_steps"):
            self.console.print(
                f"θ: {reach['theta_steps']} steps at lr {reach['theta_lr']:.3g} after "
                f"{reach['warmup_steps']} ω-only steps: reach lr·T {reach['lr_T']:.3g} (an edge "
                f"changes after about 1), noise lr·√T {reach['lr_sqrt_T']:.2g}",
                highlight=False,
            )
        if info.get("budget"):
            how = {
                "dnat": "θ trains with a cost term; the emitted network is the best that fits",
                "random": "changes drawn at random until the network fits",
                "prune": "the branches that contribute least are removed until the network fits",
                "similarity": "the branches whose output is most like their input are removed "
                "until the network fits",
            }[info["method"]]
            self.console.print(
                f"budget {info['budget']} of the original's cost: {how}", highlight=False
            )
        for warning in info.get("warnings", []):
            self.console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
        if info["tie"] == "cell" and info["groups"] == info["edges"]:
            self.console.print(
                "note: no two cells share a structure, so cell mode equals full mode"
            )

    def epoch_start(self, epoch: int, stage: str, steps: int) -> None:
        self.progress = Progress(
            TextColumn(f"epoch {epoch + 1}/{self.epochs} {stage:<4}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=not self.console.is_terminal,  # logs and CI get the epoch lines only
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=steps, loss="…")

    def step(self, epoch: int, step: int, loss: float | None) -> None:
        if self.progress is not None:
            fields = {} if loss is None else {"loss": f"{loss:.3f}"}
            self.progress.update(self.task, completed=step, **fields)

    def epoch_end(self, record: dict) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        prefs = ", ".join(f"{k} {v}" for k, v in sorted(record["preferences"].items()))
        if "perplexity" in record:  # a language model: validation loss per token first
            scores = (
                f"val loss {record['test_loss']:.3f} (ppl {record['perplexity']:.2f})  "
                f"next-token {100 * record['test_acc']:4.1f}%"
            )
        else:
            scores = (
                f"train {100 * record['train_acc']:5.1f}%  test {100 * record['test_acc']:5.1f}%"
            )
        self.console.print(
            f"epoch {record['epoch']:>3}/{self.epochs} {record['stage']:<4} "
            f"loss {record['train_loss']:.3f}  {scores}  lr {record['lr']:.4f}  "
            f"[dim]edges: {prefs}  {record['seconds']:.1f}s[/]"
        )

    def event(self, name: str, data: dict) -> None:
        if name == "finished":
            summary = data["summary"]
            accuracy = summary.get("test_acc")
            result = f", test accuracy {100 * accuracy:.2f}%" if _number(accuracy) else ""
            self.console.print(
                f"{data['out']} has finished ({summary.get('epochs')} epochs{result}): nothing "
                f"to resume, its files are unchanged; see {data['out']}/summary.json",
                highlight=False,
                soft_wrap=True,  # one line, however narrow the terminal
            )
        if name == "search_epoch":
            self.console.print(
                f"search {data['epoch']:>3}/{data['epochs']} loss {data['train_loss']:.3f}  "
                f"source {100 * data['source_acc']:5.1f}%  reward {100 * data['reward']:+5.1f}  "
                f"baseline {100 * data['baseline']:+5.2f}  entropy {data['entropy']:.2f}  "
                f"[dim]{data['seconds']:.1f}s[/]",
                highlight=False,
            )
        if name == "derive":
            scores = " ".join(f"{100 * v:.1f}" for v in data["scores"])
            changed = {k: v for k, v in data["decisions"].items() if v != "same"}
            listed = _listed(changed)
            dead = data["dead_joins"][data["chosen"]]
            self.console.print(
                f"[bold]derive[/]: {len(data['scores'])} samples scored {scores} % on the policy "
                f"split; kept #{data['chosen'] + 1}: {len(changed)} edges changed ({listed}), "
                f"{dead} dead joins; it trains from scratch now",
                highlight=False,
            )
        if name == "fade":
            changed = data["changed"]
            self.console.print(
                f"[bold]decide[/] after epoch {data['epoch']}: {len(changed)} edges change "
                f"({_listed(changed)}); θ stops, and what finalize drops fades out over the "
                f"last {_epochs(data['epochs'])} (test accuracy now "
                f"{100 * data['acc_decided']:.2f}%)",
                highlight=False,
            )
        if name == "finalize":
            changed = data["changed"]
            self.console.print(
                f"[bold]finalize[/] after epoch {data['epoch']}: "
                f"{len(changed)} edges changed ({_listed(changed)})"
            )
            if data.get("margins"):
                sure = _how_sure(data["margins"], data.get("flipped") or [])
                self.console.print(f"  how sure: {sure}", highlight=False)
            if data.get("loss_after") is not None and self.language:
                self.console.print(
                    f"  validation loss {_losses(data)} finalized (scale {data['scale']})",
                    highlight=False,
                )
            elif data.get("acc_after") is not None:
                bn = data.get("acc_after_bn")
                after_bn = f", {100 * bn:.2f}% after BN re-estimation" if bn is not None else ""
                self.console.print(
                    f"  test accuracy {100 * data['acc_before']:.2f}% gated → "
                    f"{_faded(data)}{100 * data['acc_after']:.2f}% finalized "
                    f"(scale {data['scale']}){after_bn}",
                    highlight=False,
                )

    def finish(self, summary: dict) -> None:
        table = Table(title="fxdnat transform", show_header=False)
        table.add_row("model", f"{summary['spec']} ({summary['method']}) on {summary['data']}")
        if summary.get("perplexity") is not None:
            table.add_row(
                "validation loss",
                f"{summary['test_loss']:.4f} nats/token (perplexity {summary['perplexity']:.3f}), "
                f"next-token accuracy {100 * summary['test_acc']:.2f}%",
            )
        elif summary["test_acc"] is not None:
            table.add_row("test accuracy", f"{100 * summary['test_acc']:.2f}%")
        table.add_row("parameters", f"{summary['params_before']:,} → {summary['params_after']:,}")
        table.add_row(
            "MFLOPs", f"{summary['flops_before'] / 1e6:,.1f} → {summary['flops_after'] / 1e6:,.1f}"
        )
        budget = summary.get("budget")
        if budget:
            table.add_row(
                "budget",
                ", ".join(
                    f"{r} {100 * budget['emitted'][r]:.1f}% of the original (target "
                    f"{100 * target:g}%)"
                    for r, target in budget["target"].items()
                ),
            )
        decisions = ", ".join(f"{k} {v}" for k, v in sorted(summary["decisions"].items()))
        table.add_row(
            "edges",
            f"{summary['edges']} ({decisions or 'untouched'}), {len(summary['changed'])} changed",
        )
        removed, identity = summary.get("removed_by_kind"), summary.get("identity_by_kind") or {}
        if removed:
            shown = ", ".join(f"{k} {n}" for k, n in removed.items())
            turned = ", ".join(f"{k} {n}" for k, n in identity.items() if n)
            table.add_row("removed", shown + (f"; became the identity: {turned}" if turned else ""))
        if summary.get("margins"):
            table.add_row("θ margins", _how_sure(summary["margins"], summary.get("flipped") or []))
        done = summary.get("finalize") or {}
        if done.get("loss_after") is not None and summary.get("perplexity") is not None:
            table.add_row("finalize", f"val loss {_losses(done)} (scale {done['scale']})")
        elif done.get("acc_after") is not None:
            table.add_row(
                "finalize",
                f"test {100 * done['acc_before']:.2f}% → {_faded(done)}"
                f"{100 * done['acc_after']:.2f}% (scale {done['scale']})",
            )
        derived = summary.get("nat")
        if derived:
            best = derived["scores"][derived["chosen"]]
            table.add_row(
                "NAT derive",
                f"sample {derived['chosen'] + 1} of {len(derived['scores'])} "
                f"({100 * best:.1f}% on the policy split), trained from scratch; "
                f"{len(summary.get('dead_joins') or [])} dead joins",
            )
        table.add_row("time", f"{summary['seconds']:.0f} s")
        table.add_row("checkpoint", summary["checkpoint"])
        for label, path in summary.get("artifacts", {}).items():
            table.add_row(label, path)
        Console().print(table)


def _how_sure(margins: dict[str, float], flipped: list[str]) -> str:
    """θ's margins in a line: the weakest edge, the median, how many are unsure or flipped."""
    weakest = min(margins, key=margins.__getitem__)
    unsure = sum(m < UNSURE for m in margins.values())
    late = f" ({', '.join(flipped)})" if flipped else ""
    return (
        f"min {margins[weakest]:.2f} ({weakest}), median {statistics.median(margins.values()):.2f}"
        f"; {unsure} of {len(margins)} under {UNSURE}; {len(flipped)} flipped late{late}"
    )


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _listed(changed: dict[str, str]) -> str:
    """Changed edges in a line: "layer3.1:0→identity, layer3.2:0→identity", or "none"."""
    return ", ".join(f"{k}→{v}" for k, v in changed.items()) or "none"


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def _losses(finalize: dict) -> str:
    """A language model's validation loss and perplexity at finalize: "1.912 (ppl 6.77) gated
    → 1.950 (ppl 7.03)", with the fade's step between where there was one."""

    def loss(value: float) -> str:
        return f"{value:.3f} (ppl {math.exp(min(value, 700)):.2f})"

    faded = finalize.get("loss_faded")
    faded = f"{loss(faded)} after the fade → " if faded is not None else ""
    before = finalize.get("loss_before")
    shown = f"{loss(before)} gated → " if before is not None else ""
    return f"{shown}{faded}{loss(finalize['loss_after'])}"


def _faded(finalize: dict) -> str:
    """The fade's step of the finalize line: "85.10% after a 10-epoch fade → ", or nothing."""
    if finalize.get("acc_faded") is None:
        return ""
    return f"{100 * finalize['acc_faded']:.2f}% after a {finalize['fade_epochs']}-epoch fade → "
