"""Where a run executes: device, DDP process group, autocast, RNG state and stop requests."""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from fxdnat.config import RunConfig


@dataclass(frozen=True)
class Runtime:
    """This process's place in the run: rank and world size (torchrun), device, bf16 autocast and
    channels-last (both on with CUDA unless the config says)."""

    rank: int
    world: int
    device: torch.device
    amp: bool
    channels_last: bool

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.preserve_format

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # channels-last is a layout of images (N, C, H, W); token ids (N, T) keep theirs
        layout = self.memory_format if x.dim() == 4 else torch.preserve_format
        x = x.to(self.device, non_blocking=True, memory_format=layout)
        return x, y.to(self.device, non_blocking=True)

    def reduce(self, sums: torch.Tensor) -> torch.Tensor:
        """``sums`` added over the processes of the run, in place."""
        if self.world > 1:
            dist.all_reduce(sums)
        return sums


def start(config: RunConfig) -> Runtime:
    """Join the process group (under torchrun), pick the device, set determinism.

    Raises:
        ValueError: ``--device cuda`` where CUDA is not available.
    """
    rank, world = _distributed_init(config.device)
    device = _device(config.device, rank)
    cuda = device.type == "cuda"
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif cuda:
        torch.backends.cudnn.benchmark = True
    amp = config.amp if config.amp is not None else cuda
    channels_last = config.channels_last if config.channels_last is not None else cuda
    return Runtime(rank, world, device, amp, channels_last)


def check_device(name: str, instead: str = "--device cpu (or auto)") -> None:
    """Refuse ``--device cuda`` where CUDA is not available, naming what to use ``instead``."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device cuda was asked for but CUDA is not available here; use {instead}"
        )


def _device(name: str, rank: int) -> torch.device:
    check_device(name)
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", rank))
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def _distributed_init(device: str) -> tuple[int, int]:
    """Rank and world size; joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        cuda = device != "cpu" and torch.cuda.is_available()
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), world


def seed_epoch(
    loader: Any, seed: int, epoch: int, rank: int = 0, *, torch_rng: bool = True
) -> None:
    """Seed an epoch from (seed, epoch), as every fxdnat run does, so that a resumed run repeats
    the uninterrupted one and two trainers that seed alike see the same batches: torch's global
    RNG (augmentation, dropout, drop-path; per rank) unless ``torch_rng`` is False (a resume
    inside the epoch restores it instead), the train loader's generator (shuffling, worker
    seeds), and a DistributedSampler's epoch."""
    epoch_seed = seed * 1_000_003 + epoch
    if torch_rng:
        torch.manual_seed(epoch_seed + 7919 * rank)
    generator = getattr(loader, "generator", None)
    if generator is not None:
        generator.manual_seed(epoch_seed)
    if hasattr(getattr(loader, "sampler", None), "set_epoch"):
        loader.sampler.set_epoch(epoch)


def get_rng() -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng(state: dict[str, Any]) -> None:
    if "cpu" in state:
        torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopRequests:
    """Ctrl-C or SIGTERM ask the run to stop at the next step boundary (a second Ctrl-C stops
    at once), so a saved state is never half a step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopRequests:
        with contextlib.suppress(ValueError):  # signals can only be set in the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
