"""Compiler overhead: compile time against plain FX, and step time of the gated module on CPU.

(a) compile time: ``fxdnat.trace → discover → gate → decide → finalize`` against
    ``torch.fx.symbolic_trace(model)`` plus one forward (median of ``--reps`` repetitions after
    one warm-up, the two interleaved);
(b) train step (forward, backward, SGD step on ω) and inference (eval, no_grad) of the original
    eager model, the traced module (the control: FX alone, no gate), the gated module at init
    (θ requires grad and is in the backward, but has no optimiser step), the gated module with
    θ frozen (ω's step of the alternating update: no gradient of θ), and finalize(all same),
    timed in interleaved rounds (see benchmarks/_timing.py).

Run from the repository root; writes its section of docs/performance.md:

    python -m benchmarks.compiler                  # every model, about 10 minutes on 2 cores
    python -m benchmarks.compiler --models resnet20 --budget 10 --no-write
    python -m benchmarks.compiler --models gpt-mini --section compiler-lm   # the language model
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import fx, nn

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fxdnat
from benchmarks import _report, _timing
from fxdnat import passes
from fxdnat.allocator import tune_cpu_allocator

SECTION = "compiler"
VARIANTS = ("original", "traced", "gated", "frozen", "final")
TRAIN_ONLY = ("frozen",)  # θ frozen changes nothing without a backward


@dataclass(frozen=True)
class Spec:
    """One benchmarked model: how to build it and the input it is timed on."""

    name: str
    source: str  # "zoo" or "timm"
    size: int  # input side in pixels; a language model's context in tokens
    kwargs: dict = field(default_factory=dict)
    label: str = ""
    vocab: int = 0  # a language model's vocabulary (its input is token ids); 0: an image model

    def build(self) -> nn.Module:
        if self.source == "zoo":
            from fxdnat.zoo import create_model

            if self.vocab:
                return create_model(self.name, vocab_size=self.vocab, context=self.size)
            return create_model(self.name, num_classes=10, input_size=self.size, **self.kwargs)
        import timm

        return timm.create_model(self.name, num_classes=10, pretrained=False, **self.kwargs)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input, target): n random images and labels, or n windows of random tokens and
        their next tokens."""
        if self.vocab:
            tokens = torch.randint(0, self.vocab, (n, self.size + 1))
            return tokens[:, :-1], tokens[:, 1:]
        return torch.randn(n, 3, self.size, self.size), torch.randint(0, 10, (n,))

    def shape(self, n: int) -> str:
        return f"{n}×{self.size} tokens" if self.vocab else f"{n}×3×{self.size}²"


def specs(args: argparse.Namespace) -> dict[str, Spec]:
    darts = f"darts (layers={args.darts_layers})" if args.darts_layers != 20 else "darts"
    return {
        s.name: s
        for s in (
            Spec("resnet20", "zoo", 32),
            Spec("mobilenetv2", "zoo", 32),
            Spec("darts", "zoo", 32, {"layers": args.darts_layers}, darts),
            Spec("proxylessnas", "zoo", 32),
            Spec("resnet50", "timm", args.timm_size, label="timm resnet50"),
            Spec("mobilenetv2_100", "timm", args.timm_size, label="timm mobilenetv2_100"),
            Spec("gpt-mini", "zoo", 128, vocab=256),  # byte-level tokens, as text:pydoc has them
        )
    }


# --- (a) compile time ------------------------------------------------------------------------


def compile_fxdnat(model: nn.Module, example: torch.Tensor) -> tuple[dict, dict[str, float]]:
    """Run the compiler once; the modules it made and the seconds each pass took."""
    times, t = {}, time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal t
        now = time.perf_counter()
        times[stage], t = now - t, now

    gm = fxdnat.trace(model, example)
    lap("trace")
    edges = passes.discover(gm, granularity="branch")
    lap("discover")
    gated = passes.gate(gm, edges, tie="full")
    lap("gate")
    decisions = passes.decide(gated)  # θ at init: every edge keeps "same"
    final = passes.finalize(gated, decisions)
    lap("finalize")
    times["total"] = sum(times.values())
    return {"traced": gm, "gated": gated, "final": final, "edges": edges}, times


def compile_plain(model: nn.Module, example: torch.Tensor) -> float:
    """Seconds for ``symbolic_trace`` and one forward, the least any FX compiler must do."""
    t = time.perf_counter()
    gm = fx.symbolic_trace(model)
    with torch.no_grad():
        gm(example)
    return time.perf_counter() - t


def time_compile(model: nn.Module, example: torch.Tensor, reps: int) -> tuple[dict, dict]:
    """Median seconds per pass and of the baseline over ``reps`` interleaved repetitions."""
    model.eval()  # ShapeProp runs in eval; the baseline's forward does the same work
    compile_fxdnat(model, example)  # warm-up: lazy imports, first-call caches
    compile_plain(model, example)
    runs, plain = [], []
    for i in range(reps):
        if i % 2:
            plain.append(compile_plain(model, example))
        built, times = compile_fxdnat(model, example)
        runs.append(times)
        if not i % 2:
            plain.append(compile_plain(model, example))
    medians = {stage: statistics.median(r[stage] for r in runs) for stage in runs[0]}
    medians["plain"] = statistics.median(plain)
    return built, medians


# --- (b) train step and inference -----------------------------------------------------------


def train_step(
    module: nn.Module, x: torch.Tensor, y: torch.Tensor, frozen: bool = False
) -> Callable[[], None]:
    """Forward, backward and an SGD step on ω; θ (if any) gets its gradient but no step, or
    with ``frozen`` none (``arch.frozen()``, as the engine runs ω's step in alternate mode)."""
    theta = [p for n, p in module.named_parameters() if n == "arch.theta"]
    omega = [p for n, p in module.named_parameters() if n != "arch.theta"]
    opt = torch.optim.SGD(omega, lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        for p in theta:
            p.grad = None
        with module.arch.frozen() if frozen else contextlib.nullcontext():
            # (batch, classes) or (batch, tokens, vocabulary) logits against their targets
            loss = F.cross_entropy(module(x).flatten(0, -2), y.flatten())
        loss.backward()
        opt.step()

    return step


def inference(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            module(x)

    return run


def check_equal(modules: dict[str, nn.Module], x: torch.Tensor) -> None:
    """All variants compute the original's function at init (else the timing means nothing)."""
    with torch.no_grad():
        ref = modules["original"].eval()(x)
        for name, module in modules.items():
            out = module.eval()(x)
            if not torch.allclose(out, ref, rtol=1e-4, atol=1e-4):
                diff = (out - ref).abs().max().item()
                raise RuntimeError(f"variant {name} differs from the original by {diff:.3g}")


def time_steps(modules: dict[str, nn.Module], args: argparse.Namespace, spec: Spec) -> dict:
    """Interleaved train-step and inference timing of every variant: {kind: {variant: Stats}}."""
    torch.manual_seed(0)
    x, y = spec.batch(args.batch)
    check_equal(modules, x[:4])
    out = {}
    for kind in ("train", "inference"):
        for module in modules.values():
            module.train(kind == "train")
        if kind == "train":
            fns = {name: train_step(m, x, y) for name, m in modules.items()}
            fns["frozen"] = train_step(modules["gated"], x, y, frozen=True)
            fns = {name: fns[name] for name in VARIANTS}  # the tables' order
        else:
            fns = {name: inference(m, x) for name, m in modules.items()}
        samples = _timing.interleave(
            fns,
            rounds=args.max_rounds,
            warmup=args.warmup,
            min_rounds=args.min_rounds,
            budget_s=args.budget,
            clock=args.clock,
        )
        out[kind] = _timing.summarize(samples, baseline="original")
        out[f"{kind} samples"] = samples
    return out


# --- report ---------------------------------------------------------------------------------


def _ratio(stats: _timing.Stats) -> str:
    lo, hi = stats.ratio_ci
    return f"{stats.ratio:.3f} [{lo:.3f}, {hi:.3f}]"


def _ms(stats: _timing.Stats) -> str:
    return f"{stats.median * 1e3:.1f} ({stats.q1 * 1e3:.1f}–{stats.q3 * 1e3:.1f})"


def compile_table(results: list[dict]) -> str:
    header = [
        "model",
        "edges",
        "trace",
        "discover",
        "gate",
        "decide + finalize",
        "fxdnat total",
        "symbolic_trace + forward",
        "ratio",
    ]
    rows = [
        [r["label"], str(r["edges"])]
        + [f"{r['compile'][k]:.3f}" for k in ("trace", "discover", "gate", "finalize", "total")]
        + [f"{r['compile']['plain']:.3f}", f"{r['compile']['total'] / r['compile']['plain']:.1f}×"]
        for r in results
    ]
    return _report.markdown_table(header, rows, "lrrrrrrrr")


def step_table(results: list[dict], kind: str) -> str:
    variants = [v for v in VARIANTS[1:] if kind == "train" or v not in TRAIN_ONLY]
    header = ["model", "input", "rounds", "original ms (IQR)"] + [
        f"{v} / original [95% CI]" for v in variants
    ]
    rows = []
    for r in results:
        stats = r[kind]
        first = stats["original"]
        rows.append(
            [r["label"], r["input"], str(first.n), _ms(first)]
            + [_ratio(stats[v]) for v in variants]
        )
    return _report.markdown_table(header, rows, "ll" + "r" * (len(header) - 2))


def section(results: list[dict], args: argparse.Namespace, load: tuple[str, str]) -> str:
    facts = _report.machine()
    facts["load average (1/5/15 min) at start → end"] = f"{load[0]} → {load[1]}"
    machine = "\n".join(f"- {k}: {v}" for k, v in facts.items())
    clock = {"cpu": "CPU time of the process", "wall": "wall-clock time"}[args.clock]
    return f"""\
Generated by `{_report.command_line()}` on {time.strftime("%Y-%m-%d %H:%M %Z")}.

{machine}

**(a) Compile time**, seconds (wall clock), median of {args.reps} repetitions after one warm-up,
the two pipelines alternating; example input of batch {args.example_batch}.

{compile_table(results)}

**(b) Train step** (forward + backward + SGD step on ω; `gated`: θ gets its gradient, no step,
as in the joint update; `frozen`: the gated module with θ frozen, ω's step of the alternating
update), batch
{args.batch}, {clock}. `original ms`: median (interquartile range) over rounds; the other
columns: median over rounds of the variant's time divided by the original's time in the same
round, with a 95 % percentile-bootstrap interval. {args.warmup} untimed rounds, then rounds
until {args.budget:.0f} s had been measured (at least {args.min_rounds}, at most
{args.max_rounds}); every round runs each variant once, in rotating order.

{step_table(results, "train")}

**Inference** (eval mode, `torch.no_grad()`), same protocol:

{step_table(results, "inference")}
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=None, help="subset to run (default: all)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: see docs/performance.md)",
    )
    p.add_argument(
        "--clock",
        choices=sorted(_timing.CLOCKS),
        default=None,
        help="cpu (process CPU time) or wall; default cpu with one thread, else wall",
    )
    p.add_argument("--batch", type=int, default=32, help="batch of the step timings")
    p.add_argument("--example-batch", type=int, default=2, help="batch of the compile input")
    p.add_argument("--timm-size", type=int, default=64, help="input side of the timm models")
    p.add_argument("--darts-layers", type=int, default=8, help="cells of the DARTS network")
    p.add_argument("--reps", type=int, default=5, help="compile repetitions")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds before timing")
    p.add_argument(
        "--budget", type=float, default=60.0, help="measured seconds (all variants) per table"
    )
    p.add_argument("--min-rounds", type=int, default=15)
    p.add_argument("--max-rounds", type=int, default=200)
    p.add_argument("--no-write", action="store_true", help="print only; leave the doc alone")
    p.add_argument(
        "--section",
        default=SECTION,
        help="the docs/performance.md section written (default compiler; the language model's "
        "rows: --models gpt-mini --section compiler-lm)",
    )
    p.add_argument("--samples", type=Path, default=None, help="also save every sample (JSON)")
    return p.parse_args(argv)


def run_model(spec: Spec, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = spec.build()
    example, _ = spec.batch(args.example_batch)
    built, times = time_compile(model, example, args.reps)
    modules = {
        "original": model,
        "traced": copy.deepcopy(built["traced"]),  # trace shares ω with the model; copy it
        "gated": built["gated"],
        "final": built["final"],
    }
    steps = time_steps(modules, args, spec)
    return {
        "label": spec.label or spec.name,
        "edges": len(built["edges"]),
        "size": spec.size,
        "input": spec.shape(args.batch),
        "batch": args.batch,
        "compile": times,
        **steps,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.clock = args.clock or ("cpu" if args.threads == 1 else "wall")
    tune_cpu_allocator()  # as the fxdnat command does; the eager baselines gain from it as much
    torch.set_num_threads(args.threads)
    if torch.get_num_interop_threads() != 1:  # settable once per process, before any work
        torch.set_num_interop_threads(1)
    table = specs(args)
    names = args.models or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        sys.exit(f"unknown model(s) {unknown}; choose from {list(table)}")
    load_start = _report.load_average()
    results = []
    for name in names:
        print(f"{name} ...", file=sys.stderr, flush=True)
        results.append(run_model(table[name], args))
    text = section(results, args, (load_start, _report.load_average()))
    if args.samples:
        keep = ("label", "edges", "compile", "train samples", "inference samples")
        args.samples.write_text(json.dumps([{k: r[k] for k in keep} for r in results], indent=1))
    _report.publish(args.section, text, write=not args.no_write)


if __name__ == "__main__":
    main()
