"""``fxdnat eval``: accuracy (a language model's validation loss and perplexity), parameters,
FLOPs and latency of the network in a checkpoint."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from fxdnat import checkpoint as ckpt
from fxdnat import tasks
from fxdnat.cost import count_flops, count_params
from fxdnat.data import make_loaders
from fxdnat.engine import check_device


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
    """Evaluate the stored network on its data set's test split (or ``data``): ``test_acc``
    (of examples; a language model's: of next tokens), ``test_loss`` (mean cross-entropy per
    example or token, nats), a language model's ``perplexity``, size, FLOPs of one example and
    batch-1 latency.

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
    task = tasks.from_model(stored["model"])
    _check_fits(task, tasks.for_data(info), name)
    target = torch.device(device)
    module = restored.module.to(target).eval()
    sums = torch.zeros(3, dtype=torch.float64)  # summed loss, correct, predictions
    examples = 0
    with torch.no_grad():
        for x, y in test_loader:
            sums += task.sums(module(x.to(target)), y.to(target)).cpu()
            examples += len(y)
    loss_sum, correct, seen = sums.tolist()
    example = task.example()
    return {
        "checkpoint": str(path),
        "spec": stored["model"]["spec"],
        "stage": stored["state"]["stage"],
        "data": name,
        "task": task.name,
        "test_acc": correct / max(seen, 1),
        "test_loss": loss_sum / max(seen, 1),
        **task.scores(loss_sum / max(seen, 1)),
        "examples": examples,
        "predictions": int(seen),  # examples, or a language model's tokens
        "params": count_params(module),
        "params_original": count_params(restored.traced),
        "flops": count_flops(module.cpu(), example),
        "flops_original": count_flops(restored.traced, example),
        "latency_ms": latency(module, example, target),
        "decisions": stored.get("decisions"),
    }


def _check_fits(model: tasks.Task, data: tasks.Task, name: str) -> None:
    """Refuse a data set whose examples the network does not take or whose targets it does not
    predict (another task, other classes, another vocabulary or context)."""
    if model == data:
        return
    if isinstance(model, tasks.Classification) and isinstance(data, tasks.Classification):
        if model.num_classes != data.num_classes:
            raise ValueError(
                f"{name} has {data.num_classes} classes but the network predicts "
                f"{model.num_classes}; evaluate on its own data set"
            )
        return  # another image size: the classifiers pool adaptively
    raise ValueError(
        f"{name} gives {data.name} examples ({data.describe()}) but the network was trained "
        f"for {model.name} ({model.describe()}); evaluate on its own data set"
    )


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
