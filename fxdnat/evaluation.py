"""``fxdnat eval``: accuracy, parameters, FLOPs and latency of the network in a checkpoint."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from fxdnat import checkpoint as ckpt
from fxdnat.cost import count_flops, count_params
from fxdnat.data import make_loaders
from fxdnat.engine import check_device
from fxdnat.engine.trainer import logits_of


def evaluate_checkpoint(
    path: str | Path,
    *,
    data: str | None = None,
    data_dir: str | None = None,
    device: str = "cpu",
    limit: int | None = None,
    batch_size: int = 256,
    trust_code: bool = False,
) -> dict:
    """Evaluate the stored network on its data set's test split (or ``data``).

    ``trust_code``: build a model that the checkpoint says is made by code (see
    ``checkpoint.restore``); without it such a checkpoint is refused before anything runs."""
    check_device(device, instead="--device cpu")
    stored = ckpt.load(path)
    restored = ckpt.restore(stored, trust_code=trust_code)
    name, stored_dir = _stored_data(stored)
    name = data or name
    _, test_loader, info = make_loaders(  # the train split is not used: no batch is needed
        name, data_dir or stored_dir, batch_size=batch_size, limit=limit, drop_last=False
    )
    if info.num_classes != stored["model"]["num_classes"]:
        raise ValueError(
            f"{name} has {info.num_classes} classes but the network predicts "
            f"{stored['model']['num_classes']}; evaluate on its own data set"
        )
    target = torch.device(device)
    module = restored.module.to(target).eval()
    correct = seen = 0
    with torch.no_grad():
        for x, y in test_loader:
            out = module(x.to(target))
            logits, _ = logits_of(out)
            correct += (logits.argmax(1).cpu() == y).sum().item()
            seen += len(y)
    size = stored["model"]["input_size"]
    example = torch.zeros(1, 3, size, size)
    return {
        "checkpoint": str(path),
        "spec": stored["model"]["spec"],
        "stage": stored["state"]["stage"],
        "data": name,
        "test_acc": correct / max(seen, 1),
        "examples": seen,
        "params": count_params(module),
        "params_original": count_params(restored.traced),
        "flops": count_flops(module.cpu(), example),
        "flops_original": count_flops(restored.traced, example),
        "latency_ms": latency(module, example, target),
        "decisions": stored.get("decisions"),
    }


def _stored_data(stored: dict) -> tuple[str, str | None]:
    """The run's data set and data folder, as stored (only ever read: images, CIFAR arrays)."""
    config = stored.get("config")
    config = config if type(config) is dict else {}
    name, folder = config.get("data"), config.get("data_dir")
    if type(name) is not str or type(folder) not in (str, type(None)):
        raise ckpt.CheckpointError(
            "the checkpoint names no data set of its own; pass --data to evaluate it"
        )
    return name, folder


def latency(
    module: nn.Module, example: torch.Tensor, device: torch.device, runs: int = 20
) -> float:
    """Median milliseconds of one batch-1 forward (eval, no grad) on ``device``."""
    module = module.to(device).eval()
    example = example.to(device)
    times = []
    with torch.no_grad():
        for i in range(runs + 3):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            module(example)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 3:  # warm-up
                times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]
