"""Interleaved wall-clock timing of named callables, and paired ratios with bootstrap intervals.

A CPU's speed drifts over minutes (frequency scaling, other processes, caches), so timing one
variant after the other lets the drift land on one of them. Here every round calls each variant
once, in a rotating order, and a variant's time is compared with the baseline's time *of the same
round*: the ratio of a round cancels what drifted between rounds. The reported ratio is the
median of the per-round ratios, with a percentile-bootstrap interval over rounds.

    samples = interleave({"original": step_a, "gated": step_b}, rounds=50, warmup=5, clock="cpu")
    stats = summarize(samples, baseline="original")
    stats["gated"].ratio, stats["gated"].ratio_ci  # e.g. 1.012, (1.004, 1.021)
"""

from __future__ import annotations

import gc
import math
import random
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

Samples = dict[str, list[float]]
"""Seconds per call of each variant; index i of every list is round i."""

CLOCKS: dict[str, Callable[[], float]] = {
    "wall": time.perf_counter,
    # CPU time of this process: on a shared machine it leaves out the time other processes held
    # the core. It measures the step only where torch runs on threads of this process and does
    # not spin (one intra-op thread: OpenMP's idle threads would bill their spinning).
    "cpu": time.process_time,
}


def interleave(
    variants: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    warmup: int = 3,
    min_rounds: int = 10,
    budget_s: float | None = None,
    number: int = 1,
    clock: str = "wall",
) -> Samples:
    """Time each variant once per round, rotating which one goes first.

    Args:
        variants: name → callable taking no arguments (it must finish its work before returning).
        rounds: the most rounds to time.
        warmup: untimed rounds first (allocator, caches, lazy initialisation).
        min_rounds: with ``budget_s``, time at least this many rounds.
        budget_s: stop after the first round that takes the time measured so far (all variants,
            in ``clock``) past this many seconds; with the CPU clock, time lent to other
            processes does not count, so a busy machine gives as many rounds as a quiet one.
        number: calls per sample; a sample is their mean (for callables under a millisecond).
        clock: "wall" (elapsed time) or "cpu" (this process's CPU time), see :data:`CLOCKS`.

    Returns:
        Seconds per call, ``rounds`` (or fewer, with a budget) samples per variant.
    """
    if not variants:
        raise ValueError("interleave needs at least one variant")
    if rounds < 1 or number < 1:
        raise ValueError(f"rounds and number must be >= 1, got rounds={rounds}, number={number}")
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; expected one of {list(CLOCKS)}")
    now = CLOCKS[clock]
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    samples: Samples = {name: [] for name in names}
    measured = 0.0
    gc_was_enabled = gc.isenabled()
    try:
        for i in range(rounds):
            gc.collect()
            gc.disable()  # a collection inside one variant's sample would bill it alone
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                fn = variants[name]
                t0 = now()
                for _ in range(number):
                    fn()
                elapsed = now() - t0
                measured += elapsed
                samples[name].append(elapsed / number)
            gc.enable()
            over_budget = budget_s is not None and measured >= budget_s
            if over_budget and i + 1 >= min_rounds:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


@dataclass(frozen=True)
class Stats:
    """One variant's times and its ratio against the baseline, over ``n`` rounds."""

    name: str
    n: int
    median: float  # seconds per call
    q1: float
    q3: float
    ratio: float  # median over rounds of (this variant / baseline), 1.0 for the baseline
    ratio_ci: tuple[float, float]  # percentile-bootstrap interval of that median
    ratio_iqr: tuple[float, float]  # quartiles of the per-round ratios


def summarize(
    samples: Samples,
    baseline: str,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Stats]:
    """Median and quartiles of each variant, and its paired ratio against ``baseline``."""
    if baseline not in samples:
        raise ValueError(f"baseline {baseline!r} is not a variant; variants: {list(samples)}")
    base = samples[baseline]
    out = {}
    for name, times in samples.items():
        if len(times) != len(base):
            raise ValueError(f"variant {name!r} has {len(times)} samples, baseline {len(base)}")
        ratios = [t / b for t, b in zip(times, base, strict=True)]
        out[name] = Stats(
            name=name,
            n=len(times),
            median=statistics.median(times),
            q1=quantile(times, 0.25),
            q3=quantile(times, 0.75),
            ratio=statistics.median(ratios),
            ratio_ci=bootstrap_median_ci(ratios, confidence, resamples, seed),
            ratio_iqr=(quantile(ratios, 0.25), quantile(ratios, 0.75)),
        )
    return out


def quantile(values: list[float], q: float) -> float:
    """The q-quantile with linear interpolation (numpy's default)."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def bootstrap_median_ci(
    values: list[float], confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median of ``values`` (resampling with replacement)."""
    rng = random.Random(seed)
    n = len(values)
    medians = sorted(statistics.median(rng.choices(values, k=n)) for _ in range(resamples))
    tail = (1 - confidence) / 2
    return quantile(medians, tail), quantile(medians, 1 - tail)
