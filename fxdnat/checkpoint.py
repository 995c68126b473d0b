"""The checkpoint format: plain tensors and Python values, written atomically, loaded safely.

A checkpoint never pickles a module or code. It stores how to rebuild the network — the model
spec, the trace settings, the edges, the decisions — and the tensors; loading replays
build → trace → discover → gate (→ finalize), checks that the edges are the ones stored, and
loads the weights. ``torch.load(weights_only=True)`` can read every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import fx

from fxdnat._files import atomic_file
from fxdnat.ir import Edge

FORMAT = "fxdnat-checkpoint"
VERSION = 1
STAGES = ("arch", "net", "done")


class CheckpointError(ValueError):
    """A file that is not a readable fxdnat checkpoint, or one that does not match its model."""


def save(path: str | Path, data: dict[str, Any]) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, then rename.

    A crash at any moment leaves either the previous checkpoint or the new one, never a torn
    file.
    """
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, **data}
    with atomic_file(path) as f:
        torch.save(payload, f)
    return path


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no code runs); validate its header."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, ...: all unreadable to us
        reason = " ".join(str(exc).split())[:200]
        raise CheckpointError(
            f"{path} is not a readable fxdnat checkpoint ({type(exc).__name__}: {reason})"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an fxdnat checkpoint (no '{FORMAT}' header)")
    if data.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {data.get('version')}; this fxdnat reads "
            f"version {VERSION}"
        )
    return data


@dataclass
class Restored:
    """A network rebuilt from a checkpoint, and what was stored with it."""

    module: fx.GraphModule  # the gated module (stage "arch") or the final one
    traced: fx.GraphModule  # the original network, traced
    edges: list[Edge]
    decisions: dict[str, str] | None
    data: dict[str, Any]
    # the gated module's fxdnat.Architecture: θ's rows and groups (its θ is the stored one only
    # while `module` is the gated module; the stored history is in data); None without edges
    arch: Any = None

    def final(self) -> tuple[fx.GraphModule, dict[str, str], bool]:
        """The clean network, its decisions, and whether they were made now: a checkpoint of
        the architecture stage is finalized on the choices its θ prefers at this point."""
        from fxdnat.passes import decide, finalize

        if self.decisions is not None or not self.edges:
            return self.module, self.decisions or {}, False
        decisions = decide(self.module)
        return finalize(self.module, decisions), decisions, True


def restore(data: dict[str, Any], *, strict: bool = True) -> Restored:
    """Rebuild the stored network from its spec and load its weights."""
    from fxdnat.frontend import trace
    from fxdnat.passes import discover, finalize, gate
    from fxdnat.specs import build_model

    model_cfg = data["model"]
    built = build_model(
        model_cfg["spec"],
        num_classes=model_cfg["num_classes"],
        input_size=model_cfg["input_size"],
        **model_cfg.get("kwargs", {}),
    )
    example = torch.zeros(1, 3, built.input_size, built.input_size)
    traced = trace(built.model, example, leaves=model_cfg.get("leaves", ()))
    stored = [Edge.from_dict(e) for e in data["edges"]]
    decisions = data.get("decisions")
    arch = None
    if not stored:  # the model was trained as it is ("original")
        module = traced
    else:
        edges = discover(traced, data["granularity"])
        if edges != stored:
            raise CheckpointError(
                f"the edges of {model_cfg['spec']} no longer match the checkpoint's "
                f"({len(edges)} found, {len(stored)} stored); was it written by another version "
                "of the model or of fxdnat?"
            )
        module = gate(traced, edges, tie=data["tie"])
        arch = module.arch
        if decisions is not None:
            module = finalize(module, decisions)
    try:
        module.load_state_dict(data["model_state"], strict=strict)
    except RuntimeError as exc:
        raise CheckpointError(f"weights do not fit the rebuilt network: {exc}") from exc
    return Restored(module, traced, stored, decisions, data, arch)
