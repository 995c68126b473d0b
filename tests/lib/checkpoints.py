"""Checkpoints for tests: what the engine writes, with chosen decisions, in a second."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fxdnat import checkpoint as ckpt
from fxdnat.frontend import trace
from fxdnat.passes import discover, finalize, gate
from fxdnat.specs import build_model

ARCH_EPOCHS = 2


def save_checkpoint(
    path: Path,
    spec: str,
    decisions: dict[str, str],
    *,
    stage: str = "done",
    tie: str = "full",
    input_size: int | None = None,
    **model_kwargs: Any,
) -> Path:
    """A checkpoint as the engine writes it after ARCH_EPOCHS architecture epochs (θ walking
    from the original to one-hot on ``decisions``) and, unless ``stage="arch"``, two more."""
    path, _ = save_finalized(
        path, spec, decisions, stage=stage, tie=tie, input_size=input_size, **model_kwargs
    )
    return path


def save_finalized(
    path: Path,
    spec: str,
    decisions: dict[str, str],
    *,
    theta: torch.Tensor | None = None,
    scale: str | None = None,
    stage: str = "done",
    tie: str = "full",
    input_size: int | None = None,
    **model_kwargs: Any,
) -> tuple[Path, Any]:
    """:func:`save_checkpoint`, and the network it holds. ``theta``: θ at the end of the
    architecture stage instead of one-hot on ``decisions``; ``scale``: finalize's, stored as
    ``finalize_scale`` (None: the field is left out, as before finalize took a scale, and
    finalize reads θ one-hot)."""
    torch.manual_seed(0)
    built = build_model(spec, input_size=input_size, **model_kwargs)
    traced = trace(built.model, torch.zeros(1, 3, built.input_size, built.input_size))
    edges = discover(traced)
    gated = gate(traced, edges, tie=tie)
    start = gated.arch.theta.detach().clone()
    full = {e.name: decisions.get(e.name, "same") for e in edges}
    gated.arch.assign(full)
    if theta is not None:
        with torch.no_grad():
            gated.arch.theta.copy_(theta)
    end = gated.arch.theta.detach().clone()
    module = gated if stage == "arch" else finalize(gated, full, scale=scale or "one")
    epochs = ARCH_EPOCHS if stage == "arch" else ARCH_EPOCHS + 2
    data = {
        "method": "dnat",
        "model": {
            "spec": built.spec,
            "num_classes": built.num_classes,
            "input_size": built.input_size,
            "kwargs": model_kwargs,
            "leaves": sorted(traced.meta["fxdnat"]["leaves"]),
        },
        "granularity": "branch",
        "tie": tie,
        "edges": [e.to_dict() for e in edges],
        "decisions": None if stage == "arch" else full,
        "theta": end,
        "theta_history": [start + (end - start) * (i + 1) / ARCH_EPOCHS for i in range(2)],
        "model_state": module.state_dict(),
        "state": {"stage": stage, "epoch": epochs, "metrics": _metrics(epochs)},
        "config": {"data": "digits"},
        "recipe": {"arch_epochs": ARCH_EPOCHS if stage != "arch" else 2 * ARCH_EPOCHS},
    }
    if scale is not None:
        data["finalize_scale"] = scale
    return ckpt.save(path, data), module


def _metrics(epochs: int) -> list[dict]:
    return [
        {
            "epoch": i + 1,
            "stage": "arch" if i < ARCH_EPOCHS else "net",
            "train_loss": 2.0 / (i + 1),
            "train_acc": 0.3 + 0.15 * i,
            "test_loss": 2.2 / (i + 1),
            "test_acc": 0.25 + 0.15 * i,
            "preferences": {},
        }
        for i in range(epochs)
    ]
