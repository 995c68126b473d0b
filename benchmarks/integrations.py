"""The framework callbacks' cost: a Lightning or ``transformers.Trainer`` step with fxdnat's
callback against the same framework's step without it, beside the engine's own ratios from the
same run.

    python -m benchmarks.integrations       # writes its section of docs/performance.md

Models: ResNet20 under Lightning (SGD, a batch of digits at 32 px) and gpt-mini under the
Trainer (its default AdamW, a batch of text:pydoc windows). Each round runs every variant once,
in rotating order: a short fit with its own weights and optimizer, on one fixed batch repeated;
the variant's sample is the median of its step times after ``--warmup`` untimed steps, a step
timed from one batch's start hook to the next, so that θ's step after ω's counts. Variants:

- the framework alone: the model as built, no callback (the baseline);
- + callback, θ waits: the gated network, θ frozen (ω's warm-up);
- + callback, alternate: ω's step, then θ's on the same batch (the paper's update);
- + callback, joint: θ's step on ω's backward;
- + callback, network stage: the network finalized (all "same"), the callback still attached.

The engine's rows time ``Trainer.train_step`` (fxdnat transform's step) on the same batch
against a hand-written step with the recipe's optimizer, in the same rounds. The target
(issue #20) is the engine's ratios: a callback's ratio is "met" where its 95% interval reaches
the engine's interval or lies below it.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks import _report, _timing
from benchmarks.training import eager_model, hand_step, trainer
from fxdnat.allocator import tune_cpu_allocator
from fxdnat.engine import Trainer

VARIANTS = ("θ waits", "alternate", "joint", "network stage")
# a variant's name → the driver's settings (arch_epochs, warmup_epochs, update); finalized
# before the fit for the network stage
SETTINGS = {
    "θ waits": (2, 1, "alternate"),
    "alternate": (100, 0, "alternate"),
    "joint": (100, 0, "joint"),
    "network stage": (100, 0, "alternate"),
}
# the engine's step for each variant: RunConfig fields
ENGINE = {
    "θ waits": {"warmup_epochs": 1, "arch_epochs": 2},
    "alternate": {"warmup_epochs": 0},
    "joint": {"warmup_epochs": 0, "arch_update": "joint"},
    "network stage": {"arch_epochs": 0},
}
Sample = Callable[[], float]  # runs a variant once; returns its median step in seconds


class Repeat:
    """One batch, ``steps`` times: an iterable a framework takes as its training data."""

    def __init__(self, batch, steps: int) -> None:
        self.batch, self.steps = batch, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return iter([self.batch] * self.steps)


def _median_step(starts: list[float], warmup: int) -> float:
    steps = [b - a for a, b in itertools.pairwise(starts)]
    return statistics.median(steps[warmup:])


# ------------------------------------------------------------------------------- Lightning
def lightning_variants(engine: Trainer, x, y, args: argparse.Namespace) -> dict[str, Sample]:
    """ResNet20 under Lightning: the framework alone and with DNATCallback, per variant."""
    import lightning.pytorch as pl

    from fxdnat.integrations.lightning import DNATCallback

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # a fit a sample: no banners

    class Classifier(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = eager_model(engine)
            self.example_input_array = x[:1]

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.model(batch[0]), batch[1])

        def configure_optimizers(self):
            r = engine.recipe
            return torch.optim.SGD(
                self.parameters(), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay
            )

    class Clock(pl.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_train_batch_start(self, *_: object) -> None:
            self.starts.append(time.perf_counter())

        def on_train_end(self, *_: object) -> None:
            self.starts.append(time.perf_counter())

    class Finalized(DNATCallback):
        def setup(self, trainer, pl_module, stage) -> None:
            super().setup(trainer, pl_module, stage)
            pl_module.model = self.driver.finalize()

    def fit(callback: pl.Callback | None) -> float:
        clock = Clock()
        run = pl.Trainer(
            max_epochs=1, accelerator="cpu", callbacks=[c for c in (callback, clock) if c],
            gradient_clip_val=engine.recipe.grad_clip, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        )  # fmt: skip
        run.fit(Classifier(), Repeat((x, y), args.warmup + args.steps))
        return _median_step(clock.starts, args.warmup)

    def with_callback(name: str) -> Sample:
        arch, warmup, update = SETTINGS[name]
        kind = Finalized if name == "network stage" else DNATCallback
        return lambda: fit(kind(arch, warmup_epochs=warmup, update=update, theta_lr=0.01))

    return {"framework": lambda: fit(None)} | {name: with_callback(name) for name in VARIANTS}


# --------------------------------------------------------------------------- the Trainer
def trainer_variants(engine: Trainer, x, y, args: argparse.Namespace, out: Path) -> dict:
    """gpt-mini under ``transformers.Trainer``: alone (a module computing the same loss) and
    with DNATTrainerCallback, per variant."""
    import transformers

    from fxdnat.integrations.hf import DNATTrainerCallback

    class Alone(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = eager_model(engine)

        def forward(self, input_ids, labels):
            logits = self.net(input_ids)
            return {"loss": F.cross_entropy(logits.flatten(0, 1), labels.flatten())}

    class Clock(transformers.TrainerCallback):
        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_step_begin(self, *_: object, **__: object) -> None:
            self.starts.append(time.perf_counter())

        def on_train_end(self, *_: object, **__: object) -> None:
            self.starts.append(time.perf_counter())

    batch = {"input_ids": x, "labels": y}

    def fit(model: torch.nn.Module, callback=None) -> float:
        clock = Clock()

        class Fixed(transformers.Trainer):
            def get_train_dataloader(self):
                return Repeat(batch, args.warmup + args.steps)

        settings = transformers.TrainingArguments(
            str(out), max_steps=args.warmup + args.steps, use_cpu=True, report_to=[],
            save_strategy="no", disable_tqdm=True, learning_rate=engine.recipe.lr,
            max_grad_norm=engine.recipe.grad_clip or 0.0, logging_strategy="no",
        )  # fmt: skip
        callbacks = [c for c in (callback, clock) if c]
        Fixed(model=model, args=settings, callbacks=callbacks).train()
        return _median_step(clock.starts, args.warmup)

    def with_callback(name: str) -> Sample:
        arch, warmup, update = SETTINGS[name]

        def run() -> float:
            callback = DNATTrainerCallback(
                eager_model(engine), x[:1], arch_epochs=arch, warmup_epochs=warmup, update=update,
                theta_lr=0.01,
            )  # fmt: skip
            if name == "network stage":
                callback.model.net = callback.driver.finalize()
            return fit(callback.model, callback)

        return run

    return {"framework": lambda: fit(Alone())} | {name: with_callback(name) for name in VARIANTS}


# ----------------------------------------------------------------------------- the engine
def engine_variants(model: str, data: str, args: argparse.Namespace, tmp: Path) -> dict:
    """fxdnat transform's step per variant and a hand-written step (the recipe's optimizer),
    on the batch the frameworks train on."""
    runs = {
        name: trainer(model, tmp / name, args.batch, args.batch, data=data, **fields)
        for name, fields in ENGINE.items()
    }
    reference = runs["network stage"]
    x, y = next(iter(reference.train_loader))
    steps = {"hand-written": _repeat(_hand_written(reference, x, y), args)}
    for name, run in runs.items():
        run.dnat.module.train()
        steps[name] = _repeat(lambda run=run: run.train_step(x, y), args)
    return {"samples": steps, "reference": reference, "batch": (x, y)}


def _hand_written(reference: Trainer, x, y) -> Callable[[], None]:
    """benchmarks.training's hand-written step with the recipe's optimizer."""
    model, r = eager_model(reference), reference.recipe
    if r.optimizer == "adamw":
        opt = torch.optim.AdamW(
            model.parameters(), lr=r.lr, betas=r.betas, weight_decay=r.weight_decay
        )
    else:
        opt = torch.optim.SGD(
            model.parameters(), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay
        )
    step = hand_step(model, opt, r.grad_clip or float("inf"))
    return lambda: step(x, y)


def _repeat(step: Callable[[], object], args: argparse.Namespace) -> Sample:
    """``step`` as a sample: the median of ``args.steps`` calls after ``args.warmup``."""

    def sample() -> float:
        starts = []
        for _ in range(args.warmup + args.steps):
            starts.append(time.perf_counter())
            step()
        starts.append(time.perf_counter())
        return _median_step(starts, args.warmup)

    return sample


# ------------------------------------------------------------------------------ rounds
def measure(framework: str, model: str, data: str, args: argparse.Namespace, tmp: Path) -> dict:
    engine = engine_variants(model, data, args, tmp / "engine")
    x, y = engine["batch"]
    if framework == "Lightning":
        variants = lightning_variants(engine["reference"], x, y, args)
    else:
        variants = trainer_variants(engine["reference"], x, y, args, tmp / "hf")
    named = {f"{framework}: {k}": v for k, v in variants.items()}
    named |= {f"engine: {k}": v for k, v in engine["samples"].items()}
    samples = _rounds(named, args)
    ours = {k.split(": ", 1)[1]: v for k, v in samples.items() if k.startswith(framework)}
    theirs = {k.split(": ", 1)[1]: v for k, v in samples.items() if k.startswith("engine")}
    return {
        "framework": framework,
        "model": model,
        "callback": _timing.summarize(ours, baseline="framework"),
        "engine": _timing.summarize(theirs, baseline="hand-written"),
    }


def _rounds(variants: dict[str, Sample], args: argparse.Namespace) -> dict[str, list[float]]:
    """Each variant once per round, rotating the order, until ``args.budget`` seconds have
    passed (at least ``args.min_rounds`` rounds)."""
    names, samples = list(variants), {name: [] for name in variants}
    start, i = time.perf_counter(), 0
    while i < args.min_rounds or (
        time.perf_counter() - start < args.budget and i < args.max_rounds
    ):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(variants[name]())
        i += 1
    return samples


def section(results: list[dict], args: argparse.Namespace, load: tuple[str, str]) -> str:
    rows = []
    for result in results:
        engine = result["engine"]
        for name, stats in result["callback"].items():
            lo, hi = stats.ratio_ci
            cells = [f"{1000 * stats.median:.1f}", f"{stats.ratio:.3f}", f"[{lo:.3f}, {hi:.3f}]"]
            step, theirs, verdict = "alone", "baseline", ""
            if name != "framework":
                ref = engine[name]
                step = f"+ callback, {name}"
                theirs = f"{ref.ratio:.3f} [{ref.ratio_ci[0]:.3f}, {ref.ratio_ci[1]:.3f}]"
                # met: the callback's interval reaches the engine's, or lies below it
                verdict = "met" if lo <= ref.ratio_ci[1] else "MISSED"
            rows.append([result["model"], result["framework"], step, *cells, theirs, verdict,
                         str(stats.n)])  # fmt: skip
    table = _report.markdown_table(
        [
            "model",
            "framework",
            "step",
            "ms",
            "ratio",
            "95% CI",
            "engine's ratio (same run)",
            "",
            "rounds",
        ],
        rows,
        "lllrrrlll",
    )
    facts = "\n".join(f"- {k}: {v}" for k, v in _report.machine().items())
    return f"""Generated by `{_report.command_line()}`. A sample is the median of {args.steps} steps
(after {args.warmup} untimed) of one short fit; each round takes one sample of every variant, in
rotating order; a ratio is the median over rounds of (variant / the framework alone) within a
round, with a percentile-bootstrap 95% interval. The engine's ratio is `Trainer.train_step`
against a hand-written step with the recipe's optimizer, in the same rounds. Batch {args.batch},
CPU, float32.

{table}

{facts}
- load average before / after: {load[0]} → {load[1]}
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frameworks", nargs="+", default=["Lightning", "Trainer"],
                   choices=["Lightning", "Trainer"])  # fmt: skip
    p.add_argument("--threads", type=int, default=_report.usable_cores())
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=6, help="timed steps of a sample")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    p.add_argument("--budget", type=float, default=240.0, help="seconds of rounds per model")
    p.add_argument("--min-rounds", type=int, default=8)
    p.add_argument("--max-rounds", type=int, default=100)
    p.add_argument("--no-write", action="store_true", help="print only; leave the doc alone")
    return p.parse_args(argv)


MODELS = {"Lightning": ("resnet20", "digits"), "Trainer": ("gpt-mini", "text:pydoc")}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tune_cpu_allocator()  # as the fxdnat command does
    torch.set_num_threads(args.threads)
    load_before = _report.load_average()
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(name, *MODELS[name], args, Path(tmp) / name) for name in args.frameworks]
    body = section(results, args, (load_before, _report.load_average()))
    _report.publish("integrations", body, write=not args.no_write)


if __name__ == "__main__":
    main()
