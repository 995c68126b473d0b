"""Coverage sweep: run the whole compiler over a seeded sample of timm, all torchvision models
and small configs of transformers language models (hf:tiny-TYPE, fxdnat.hf).

For every model: build it with random weights, run it eagerly, ``fxdnat.trace`` it, check traced ≡
eager in eval and in train mode, ``discover`` its edges, ``gate`` them (tie="full") and check
gated-at-init ≡ eager, draw random valid decisions, ``arch.assign`` them, check ``decide`` reads
them back, ``finalize`` and check final ≡ gated, ``final.graph.lint()`` and that no gate or θ is
left; record the share of its parameters inside opaque submodules. Each model runs in a forked
process with one torch thread, under a time and a memory limit, so that one crash or hang does not
stop the sweep. ``--train-config`` sweeps the models a second time as people train them, with
drop-path / stochastic depth on. The script writes the whole of docs/coverage.md
(benchmarks/coverage_report.py).

    python -m benchmarks.coverage --sample 300 --seed 0 --out docs/coverage.md \
        --timeout-per-model 300 --jobs 2 --train-config
    python -m benchmarks.coverage --models 'timm:resnet*,torchvision:vgg11' --out /tmp/re.md

The hf models run in the plain configuration only (their configs set their own dropout). With
``--json FILE --resume`` every result already in FILE is reused, so adding models (``hf:*``)
to a finished sweep runs only those, and the page is rewritten from all the results.
"""

from __future__ import annotations

import os

# Before torch is imported: the forked workers inherit a one-thread runtime.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import fnmatch
import gc
import hashlib
import json
import multiprocessing as mp
import random
import shlex
import subprocess
import sys
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
import torchvision
from timm.models import get_pretrained_cfg
from torch import fx, nn

import fxdnat
import fxdnat.arch
import fxdnat.frontend
import fxdnat.hf
from benchmarks.coverage_report import write_report
from fxdnat import passes
from fxdnat.frontend.state import preserved

ROOT = Path(__file__).resolve().parents[1]
FXDNAT_DIR = Path(fxdnat.__file__).resolve().parent
PASSES_DIR = Path(passes.__file__).resolve().parent
STAGES = (
    "build", "eager", "trace", "trace-eq", "train-eq", "discover", "gate", "init-eq", "decide",
    "finalize", "final-eq", "lint",
)  # fmt: skip
COMPILER_STAGES = STAGES[2:]
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}
BATCH = 2
# Input sides tried before the model's default, smallest cost first among the usual ones.
SMALL_SIDES = (128, 112, 96, 160, 192, 224, 256)
TORCHVISION_SIDE = 224
TORCHVISION_KWARGS = {  # models whose default form cannot be traced at all, see docs/coverage.md
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
TORCHVISION_SIDES = {"inception_v3": 299}
# transformers model types swept as hf:tiny-TYPE: the families people fine-tune and prune today,
# decoder-only, encoder-only and encoder-decoder (a curated list, not every type transformers has)
HF_TYPES = (
    "gpt2", "gpt_neo", "gptj", "gpt_neox", "codegen", "opt", "bloom", "falcon", "llama",
    "mistral", "mixtral", "qwen2", "qwen3", "phi", "phi3", "gemma", "gemma2", "olmo", "olmo2",
    "stablelm", "starcoder2", "granite", "cohere",
    "bert", "roberta", "distilbert", "electra", "albert", "deberta", "deberta-v2",
    "xlm-roberta", "mpnet", "roformer", "megatron-bert", "modernbert",
    "t5", "mt5", "umt5", "bart", "mbart", "pegasus", "marian", "blenderbot-small", "plbart",
)  # fmt: skip
HF_LENGTH = 32  # tokens per example sequence
# --train-config: the regularisers people train with, for every constructor that takes them
TRAIN_KWARGS = {"timm": {"drop_path_rate": 0.1}, "torchvision": {"stochastic_depth_prob": 0.1}}
# The pipeline holds two copies of the weights at once (model + gated, then gated + final) on top
# of the process itself: a model whose weights alone make that exceed the limit is skipped.
WEIGHT_COPIES = 2
BASELINE_GIB = 1.0
# The pipeline runs the model about this many times; a timeout is the model's cost, not the
# compiler's, when building it and this many eager forwards alone would exceed the limit.
FORWARDS = 8

warnings.filterwarnings("ignore")


@dataclass
class Result:
    model: str  # "timm:name" or "torchvision:name"
    config: str = "plain"  # plain (as built) | train (drop-path / stochastic depth on)
    status: str = "fail"  # pass | fail | skip
    stage: str = "build"  # where it failed or was skipped (last stage for a pass)
    error: str = ""  # exception type (or Timeout / Memory / Crash)
    message: str = ""  # one line
    where: str = ""  # innermost fxdnat frame of the traceback, file:line function
    side: list[int] | None = None
    size_note: str = ""
    params: int = 0
    leaves: dict[str, str] = field(default_factory=dict)
    opaque: float = 0.0  # share of the parameters inside opaque submodules
    family: str = ""  # the module that defines the model (timm.models.nfnet -> nfnet)
    edges: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    peak_gib: float = 0.0
    compiler: str = ""  # COMPILER_ID of the process that ran it


class Skip(Exception):
    """The model is not run for a reason outside fxdnat."""


# --------------------------------------------------------------------------- building models


def build(result: Result, seed: int, progress) -> tuple[nn.Module, torch.Tensor]:
    """The model in eval mode and an input it runs on; raises Skip where neither can be had."""
    source, name = result.model.split(":", 1)
    extra = _train_kwargs(source, name, result) if result.config == "train" else {}
    if source == "hf":
        model, x = _build_hf(name, seed, result, progress)
        result.params = sum(p.numel() for p in model.parameters())
        result.family = f"hf {model.objective}"
        return model, x
    builder = _build_timm if source == "timm" else _build_torchvision
    try:
        model, x = builder(name, seed, result, progress, extra)
    except TypeError as exc:  # the meta-device check could not tell (RegNet fails on meta)
        if not extra or "unexpected keyword argument" not in str(exc):
            raise
        result.notes[-1] = f"takes no {', '.join(extra)}: built with its defaults"
        model, x = builder(name, seed, result, progress, {})
    result.params = sum(p.numel() for p in model.parameters())
    result.family = _family(source, name)
    return model, x


def _train_kwargs(source: str, name: str, result: Result) -> dict:
    """The drop-path / stochastic-depth argument, where the model's constructor takes it."""
    kwargs = TRAIN_KWARGS[source]
    make = timm.create_model if source == "timm" else torchvision.models.get_model
    try:
        with torch.device("meta"):
            make(name, num_classes=10, **kwargs)
    except TypeError:
        result.notes.append(f"takes no {', '.join(kwargs)}: built with its defaults")
        return {}
    except Exception:  # fails on the meta device for another reason: try it for real
        pass
    result.notes.append("built with " + ", ".join(f"{k}={v}" for k, v in kwargs.items()))
    return dict(kwargs)


def _family(source: str, name: str) -> str:
    """The module that defines the model: timm.models.nfnet -> "timm nfnet"."""
    if source == "timm":
        module = timm.models.model_entrypoint(name).__module__
    else:
        module = torchvision.models.get_model_builder(name).__module__
    return f"{source} {module.rsplit('.', 1)[-1]}"


def _inputs(side: tuple[int, int], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, 3, *side, generator=generator)


def _eager(model: nn.Module, x: torch.Tensor):
    with torch.no_grad():
        return model(x)


def _build_torchvision(name: str, seed: int, result: Result, progress, extra: dict):
    kwargs = {"num_classes": 10, **TORCHVISION_KWARGS.get(name, {}), **extra}
    if kwargs.keys() - {"num_classes"} - extra.keys():
        result.notes.append("built with " + ", ".join(f"{k}={v}" for k, v in kwargs.items()))
    side = TORCHVISION_SIDES.get(name, TORCHVISION_SIDE)
    _check_memory(_meta_params(lambda: torchvision.models.get_model(name, **kwargs)), result)
    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, **kwargs).eval()
    result.side = [side, side]
    progress("eager")
    x = _inputs((side, side), seed)
    try:
        _eager(model, x)
    except Exception as exc:
        raise Skip(f"does not run eagerly at {side}x{side}: {_one_line(exc)}") from exc
    return model, x


def _build_hf(name: str, seed: int, result: Result, progress):
    torch.manual_seed(seed)
    model, vocab, _ = fxdnat.hf.build(name)
    model.eval()
    result.size_note = f"{BATCH} sequences of {HF_LENGTH} tokens, vocabulary {vocab}"
    progress("eager")
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (BATCH, HF_LENGTH), generator=generator)
    try:
        _eager(model, x)
    except Exception as exc:
        raise Skip(f"does not run eagerly: {_one_line(exc)}") from exc
    return model, x


def _build_timm(name: str, seed: int, result: Result, progress, extra: dict):
    cfg = get_pretrained_cfg(name)
    default = tuple(cfg.input_size[1:]) if cfg is not None else (224, 224)
    fixed = bool(cfg is not None and cfg.fixed_input_size)
    side, kwargs, note = _probe_side(name, default, fixed, result, extra)
    result.size_note = note
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs, **extra).eval()
    result.side = list(side)
    progress("eager")
    try:
        x = _inputs(side, seed)
        _eager(model, x)
        return model, x
    except Exception as exc:
        if side == default and not kwargs:
            raise Skip(f"does not run eagerly at {side[0]}x{side[1]}: {_one_line(exc)}") from exc
        first = _one_line(exc)
    del model
    gc.collect()
    progress("build")
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=10, **extra).eval()
    result.side, result.size_note = list(default), f"default size (probed size failed: {first})"
    progress("eager")
    x = _inputs(default, seed)
    try:
        _eager(model, x)
    except Exception as exc:
        raise Skip(f"does not run eagerly at {default[0]}x{default[1]}: {_one_line(exc)}") from exc
    return model, x


def _probe_side(name: str, default: tuple, fixed: bool, result: Result, extra: dict) -> tuple:
    """The smallest usual input side that the model accepts, found on the meta device.

    A model with a fixed input size is rebuilt with ``img_size=``; others take any size. Falls
    back to the default size where the meta device cannot run the model.
    """
    candidates = [s for s in SMALL_SIDES if s < min(default)]
    params = None
    for side in candidates:
        kwargs = {"img_size": side} if fixed else {}
        try:
            with torch.device("meta"):
                model = timm.create_model(
                    name, pretrained=False, num_classes=10, **kwargs, **extra
                ).eval()
            params = params or sum(p.numel() for p in model.parameters())
            _check_memory(params, result)
            model(torch.empty(BATCH, 3, side, side, device="meta"))
            return (side, side), kwargs, f"shrunk from {default[0]}x{default[1]}"
        except Skip:
            raise
        except Exception:
            continue
    if params is None:
        _check_memory(
            _meta_params(
                lambda: timm.create_model(name, pretrained=False, num_classes=10, **extra)
            ),
            result,
        )
    note = "default size" if not candidates else "default size (no smaller size ran on meta)"
    return default, {}, note


def _meta_params(make) -> int | None:
    try:
        with torch.device("meta"):
            return sum(p.numel() for p in make().parameters())
    except Exception:
        return None


def _check_memory(params: int | None, result: Result) -> None:
    if params is None:
        return
    result.params = params
    need = WEIGHT_COPIES * params * 4 / 2**30 + BASELINE_GIB
    if need > LIMITS["memory_gib"]:
        raise Skip(
            f"needs > {LIMITS['memory_gib']:g} GiB: {params / 1e6:.0f}M float32 parameters, "
            f"{WEIGHT_COPIES} copies held at once ≈ {need:.1f} GiB"
        )


LIMITS = {"memory_gib": 8.0}


# --------------------------------------------------------------------------- provenance


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _compiler_id() -> str:
    """Where the imported compiler lives and a hash of its sources: the code the workers run."""
    digest = hashlib.sha256()
    for path in sorted(FXDNAT_DIR.rglob("*.py")) + sorted(PASSES_DIR.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    if ROOT in FXDNAT_DIR.parents:
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = "+uncommitted" if _git("status", "--porcelain", "--", "fxdnat", "passes") else ""
        where = f"git {commit}{dirty}"
    else:
        where = f"imported from {FXDNAT_DIR}"
    return f"{where}, sources sha256 {digest.hexdigest()[:12]}"


COMPILER_ID = _compiler_id()  # at import, before any worker forks


# --------------------------------------------------------------------------- the checks


def check(key: tuple[str, str], seed: int, progress) -> Result:
    """Run every stage on one (configuration, model); the Result says where it stopped and why."""
    config, model_key = key
    torch.manual_seed(seed)
    started = time.perf_counter()
    stage_start = {"t": started}
    current = {"stage": "build"}
    result = Result(model_key, config=config, compiler=COMPILER_ID)

    def enter(stage: str, info: dict | None = None) -> None:
        now = time.perf_counter()
        result.stage_seconds[current["stage"]] = round(now - stage_start["t"], 3)
        stage_start["t"], current["stage"] = now, stage
        progress(stage, info)

    try:
        progress("build")
        model, x = build(result, seed, enter)
        # the timed eager forward, the reference output; the parent keeps what the model is
        enter(
            "eager", {"side": result.side, "params": result.params, "size_note": result.size_note}
        )
        held = {"model": model, "want": _eager(model, x)}
        del model  # only `held` keeps it, so that the compiler stages can let it go
        if not _all_finite(held["want"]):
            result.notes.append("eager output not finite")
        _run_compiler(model_key, held, x, seed, result, enter)
        result.status = "pass"
    except Skip as exc:
        result.status, result.message = "skip", str(exc)
    except Exception as exc:
        result.status, result.error = "fail", type(exc).__name__
        result.message, result.where = _one_line(exc), _fxdnat_frame(exc)
    enter(current["stage"])
    result.stage = current["stage"]
    result.seconds = round(time.perf_counter() - started, 2)
    return result


def _run_compiler(model_key: str, held: dict, x, seed: int, result: Result, enter) -> None:
    """The compiler stages; ``held`` holds the model and its eager output, dropped once used."""
    model, want = held.pop("model"), held.pop("want")
    enter("trace")
    gm = fxdnat.trace(model, (x,))
    meta = gm.meta[fxdnat.frontend.META_KEY]
    result.leaves = dict(meta["leaves"])
    result.opaque = round(meta["opaque_params"] / max(meta["params"], 1), 4)
    enter("trace-eq")
    torch.testing.assert_close(_eager(gm, x), want, equal_nan=True, **TOLERANCE)
    enter("train-eq")
    _check_train_mode(model, gm, x, seed, result)
    enter("discover")
    edges = passes.discover(gm, granularity="branch")
    result.edges = len(edges)
    result.kinds = dict(Counter(e.kind for e in edges))
    if not edges:
        return
    enter("gate")
    gated = passes.gate(gm, edges, tie="full").eval()
    enter("init-eq")
    torch.testing.assert_close(_eager(gated, x), want, equal_nan=True, **TOLERANCE)
    del model, gm, want
    gc.collect()  # the model is no longer needed: keep two copies of the weights at most
    enter("decide")
    decisions = passes.random_decisions(edges, random.Random(f"{seed}:{model_key}"))
    passes.check_decisions(edges, decisions)
    gated.arch.assign(decisions)
    read_back = passes.decide(gated)
    if read_back != decisions:
        wrong = next(k for k in decisions if read_back.get(k) != decisions[k])
        raise RuntimeError(
            f"decide after assign differs at {wrong}: {read_back.get(wrong)} != {decisions[wrong]}"
        )
    enter("finalize")
    final = passes.finalize(gated, decisions).eval()
    enter("final-eq")
    torch.testing.assert_close(_eager(final, x), _eager(gated, x), equal_nan=True, **TOLERANCE)
    enter("lint")
    final.graph.lint()
    _check_clean(final)


def _check_train_mode(model: nn.Module, gm: fx.GraphModule, x, seed: int, result) -> None:
    """traced ≡ eager in train mode under one seed; the model's statistics are put back."""
    with preserved(model, gm), torch.no_grad():
        model.train()
        torch.manual_seed(seed)
        try:
            want = model(x)
        except Exception as exc:  # BatchNorm on one value per channel, ...: not the compiler's
            result.notes.append(f"train mode not checked: eager fails ({_one_line(exc, 120)})")
            return
        gm.train()
        torch.manual_seed(seed)
        got = gm(x)
    torch.testing.assert_close(got, want, equal_nan=True, **TOLERANCE)


def _check_clean(final: fx.GraphModule) -> None:
    for node in final.graph.nodes:
        if node.target is fxdnat.arch.dnat_mix or (
            node.op == "call_module" and node.target == "arch"
        ):
            raise RuntimeError(f"node {node.name} still calls the gate or θ after finalize")
    if any(isinstance(m, fxdnat.arch.Architecture) for m in final.modules()):
        raise RuntimeError("an Architecture module is still attached after finalize")


def _all_finite(value) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value).all()) if value.is_floating_point() else True
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_all_finite(v) for v in value)
    return True


def _one_line(exc: BaseException, limit: int = 240) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if isinstance(exc, AssertionError) and len(lines) > 1:  # assert_close: say how far off
        text = "; ".join(lines[:4])
    text = f"{type(exc).__name__}: {text}" if not isinstance(exc, Skip) else text
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fxdnat_frame(exc: BaseException) -> str:
    """Innermost traceback frame inside the compiler (where it gave up), as dir/file:line."""
    found = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename).resolve()
        for top in (FXDNAT_DIR, PASSES_DIR):
            if top in path.parents:
                found = f"{top.name}/{path.relative_to(top)}:{frame.lineno} {frame.name}"
    return found


# --------------------------------------------------------------------------- running the sweep


def _worker(key: tuple[str, str], seed: int, memory_gib: float, conn) -> None:
    torch.set_num_threads(1)
    LIMITS["memory_gib"] = memory_gib
    result = check(
        key, seed, lambda stage, info=None: conn.send(("stage", (stage, info), time.time()))
    )
    conn.send(("result", result.__dict__, time.time()))
    conn.close()


@dataclass
class _Running:
    key: tuple[str, str]  # (configuration, model)
    process: mp.Process
    conn: object
    started: float
    stage: str = "build"
    stage_times: dict[str, float] = field(default_factory=dict)
    peak_gib: float = 0.0
    info: dict = field(default_factory=dict)  # side, params of the built model
    result: dict | None = None


def sweep(keys: list[tuple[str, str]], args, on_result) -> None:
    """Run ``check`` on every model in a fresh forked process, ``args.jobs`` at a time."""
    context = mp.get_context("fork")
    pending, running = list(keys), []
    while pending or running:
        while pending and len(running) < args.jobs:
            key = pending.pop(0)
            reader, writer = context.Pipe(duplex=False)
            process = context.Process(
                target=_worker, args=(key, args.seed, args.memory_gib, writer), daemon=True
            )
            process.start()
            writer.close()
            running.append(_Running(key, process, reader, time.time()))
        time.sleep(0.2)
        for job in list(running):
            outcome = _poll(job, args)
            if outcome is not None:
                running.remove(job)
                on_result(outcome)


def _poll(job: _Running, args) -> Result | None:
    try:
        while job.conn.poll():
            kind, payload, stamp = job.conn.recv()
            if kind == "stage":
                job.stage, info = payload
                job.stage_times[job.stage] = stamp
                job.info.update(info or {})
            else:
                job.result = payload
    except (EOFError, OSError):
        pass
    job.peak_gib = max(job.peak_gib, _rss_gib(job.process.pid))
    if job.result is not None:
        job.process.join(timeout=30)
        result = Result(**job.result)
        result.peak_gib = round(job.peak_gib, 2)
        return result
    elapsed, timeout = time.time() - job.started, args.timeout_per_model
    if not job.process.is_alive():
        return _abandoned(
            job, "Crash", f"worker died with exit code {job.process.exitcode}", timeout
        )
    if elapsed > args.timeout_per_model:
        return _abandoned(job, "Timeout", f"exceeded {timeout:g} s", timeout)
    if job.peak_gib > args.memory_gib:
        return _abandoned(
            job, "Memory", f"resident memory exceeded {args.memory_gib:g} GiB", timeout
        )
    return None


def _abandoned(job: _Running, error: str, message: str, timeout: float) -> Result:
    """A worker that crashed, hung or grew too big: the stage it was in decides the blame."""
    if job.process.is_alive():
        job.process.kill()
    job.process.join()
    config, model = job.key
    result = Result(
        model, config=config, status="fail", stage=job.stage, error=error, compiler=COMPILER_ID
    )
    for name, value in job.info.items():
        setattr(result, name, value)
    result.seconds = round(time.time() - job.started, 2)
    result.peak_gib = round(job.peak_gib, 2)
    detail = f"{message} in stage {job.stage}"
    model_cost = None
    if "eager" in job.stage_times and "trace" in job.stage_times:
        build_s = job.stage_times["eager"] - job.started
        eager_s = job.stage_times["trace"] - job.stage_times["eager"]
        model_cost = build_s + FORWARDS * eager_s
        detail += f" (building took {build_s:.0f} s, one eager forward {eager_s:.1f} s)"
    result.message = detail
    outside = job.stage in ("build", "eager") or (
        error == "Timeout" and model_cost is not None and model_cost > timeout
    )
    if outside:
        result.status = "skip"
    return result


def _rss_gib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


# --------------------------------------------------------------------------- model lists


def model_keys(sample: int, seed: int) -> list[str]:
    timm_names = random.Random(seed).sample(sorted(timm.list_models()), sample)
    tv_names = torchvision.models.list_models(module=torchvision.models)
    return (
        [f"timm:{n}" for n in timm_names]
        + [f"torchvision:{n}" for n in sorted(tv_names)]
        + [f"hf:tiny-{t}" for t in HF_TYPES]
    )


def select(keys: list[str], patterns: str | None) -> list[str]:
    if not patterns:
        return keys
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    picked = [
        k for k in keys if any(fnmatch.fnmatch(k, p) or k.split(":", 1)[1] == p for p in wanted)
    ]
    extra = [p for p in wanted if ":" in p and not any(ch in p for ch in "*?[") and p not in picked]
    return picked + [p for p in extra if _exists(p)]


def _exists(key: str) -> bool:
    source, name = key.split(":", 1)
    if source == "timm":
        return name in timm.list_models()
    if source == "hf":
        return name.startswith("tiny-")
    return source == "torchvision" and name in torchvision.models.list_models()


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=300, help="timm models to sample")
    parser.add_argument("--seed", type=int, default=0, help="seeds the sample, weights, decisions")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "coverage.md")
    parser.add_argument("--timeout-per-model", type=float, default=300.0, metavar="S")
    parser.add_argument("--memory-gib", type=float, default=8.0, help="resident memory per model")
    parser.add_argument("--jobs", type=int, default=2, metavar="N")
    parser.add_argument(
        "--models", help="comma-separated keys or patterns (timm:resnet*, torchvision:vgg11)"
    )
    parser.add_argument("--json", type=Path, help="also append each result as a JSON line here")
    parser.add_argument("--resume", action="store_true", help="reuse the results already in --json")
    parser.add_argument("--note", default="", help="a sentence for the report's header (why, how)")
    parser.add_argument(
        "--train-config",
        action="store_true",
        help="also sweep every model as people train it (drop-path / stochastic depth on)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.keys = select(model_keys(args.sample, args.seed), args.models)
    if args.models and not args.keys:
        print(f"--models {args.models!r} matches no model", file=sys.stderr)
        return 2
    configs = ["plain", "train"] if args.train_config else ["plain"]
    keys = [
        (config, model)
        for config in configs
        for model in args.keys
        if config == "plain" or not model.startswith("hf:")  # hf configs set their own dropout
    ]
    done: dict[tuple[str, str], Result] = {}
    if args.resume and args.json and args.json.exists():
        for line in args.json.read_text().splitlines():
            record = Result(**json.loads(line))
            if (record.config, record.model) in keys:
                done[record.config, record.model] = record
    todo, reused = [k for k in keys if k not in done], len(done)
    command = " ".join(["python", "-m", "benchmarks.coverage", *map(shlex.quote, sys.argv[1:])])
    started = time.time()
    print(f"{len(keys)} runs, {len(todo)} to do, {args.jobs} jobs", flush=True)

    def on_result(result: Result) -> None:
        done[result.config, result.model] = result
        if args.json:
            with args.json.open("a") as handle:
                handle.write(json.dumps(result.__dict__) + "\n")
        tail = f" [{result.stage}] {result.message}" if result.status != "pass" else ""
        print(
            f"{len(done):4d}/{len(keys)} {result.status:4s} {result.config} {result.model} "
            f"{result.seconds:.0f}s{tail}",
            flush=True,
        )

    sweep(todo, args, on_result)
    context = {
        "args": args,
        "keys": args.keys,
        "command": command,
        "elapsed": time.time() - started,
        "reused": reused,
        "sides": SMALL_SIDES,
        "copies": WEIGHT_COPIES,
        "forwards": FORWARDS,
        "hf_length": HF_LENGTH,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(write_report(list(done.values()), context))
    groups = [(c, lambda r, c=c: r.config == c and not r.model.startswith("hf:")) for c in configs]
    for label, member in [*groups, ("hf", lambda r: r.model.startswith("hf:"))]:
        ran = [r for r in done.values() if member(r) and r.status != "skip"]
        passed = sum(r.status == "pass" for r in ran)
        print(f"{label}: pass rate {passed}/{len(ran)}", flush=True)
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
