"""Ship a checkpoint's network to run without fxdnat: torch.export, ONNX or TorchScript.

The exported file holds the clean, finalized network in eval mode with its main logits only (an
auxiliary head is cut off), and is checked against the checkpoint's own outputs before this
returns. Its input is the task's (fxdnat/tasks.py): images (N, 3, S, S), or a language model's
token ids (N, context).
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import operator
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import fx

from fxdnat import checkpoint as ckpt
from fxdnat import tasks
from fxdnat._files import check_writable
from fxdnat.frontend import memory
from fxdnat.passes import _graph

log = logging.getLogger(__name__)

FORMATS: dict[str, str] = {
    ".pt2": "torch.export ExportedProgram",
    ".onnx": "ONNX",
    ".pt": "TorchScript",
}
ATOL, RTOL = 1e-4, 1e-4  # float32 kernels of another runtime may sum in another order


@dataclass(frozen=True)
class Exported:
    """What ``export`` wrote and how well it matches the checkpoint."""

    path: Path
    format: str
    input_shape: tuple[int, ...]
    dynamic_batch: bool
    finalized_now: bool  # an architecture-stage checkpoint, finalized on its current θ
    decisions: dict[str, str]
    max_error: float | None  # None: no runtime here to check the file (ONNX without onnxruntime)


def export(checkpoint: str | Path, out: str | Path, *, trust_code: bool = False) -> Exported:
    """Export the network of ``checkpoint`` to ``out``, the format from its extension.

    ``trust_code``: build a model that the checkpoint says is made by code (see
    ``checkpoint.restore``); without it such a checkpoint is refused before anything runs."""
    out = Path(out)
    suffix = _format(out)
    if out.exists() and out.resolve() == Path(checkpoint).resolve():
        raise ValueError(f"--out {out} is the checkpoint itself; choose another file name")
    check_writable(out)  # before the export, which takes a while
    gm, data, decisions, finalized_now = _final_network(checkpoint, trust_code)
    example = tasks.from_model(data["model"]).sample(1, torch.Generator().manual_seed(0))
    gm = main_logits(gm, example)
    with torch.no_grad():
        expected = gm(example)
    out.parent.mkdir(parents=True, exist_ok=True)
    dynamic = {".pt2": _to_pt2, ".onnx": _to_onnx, ".pt": _to_torchscript}[suffix](gm, example, out)
    error = _check(out, example, expected)
    return Exported(
        out, FORMATS[suffix], tuple(example.shape), dynamic, finalized_now, decisions, error
    )


def _check(out: Path, example: torch.Tensor, expected: torch.Tensor) -> float | None:
    """The largest difference between the file's output and the network's (None: not run)."""
    got = _run(out, example)
    if got is None:
        return None
    error = (got - expected).abs().max().item()
    if not torch.allclose(got, expected, atol=ATOL, rtol=RTOL):
        raise RuntimeError(
            f"the exported {out.name} differs from the checkpoint's network by up to {error:.3g}"
        )
    return error


def _format(out: Path) -> str:
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        supported = ", ".join(f"{ext} ({name})" for ext, name in FORMATS.items())
        raise ValueError(
            f"unknown export format {suffix or '(no extension)'!r} for {out}; "
            f"supported: {supported}"
        )
    if suffix == ".onnx":
        missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
        if missing:
            raise ValueError(
                f"ONNX export needs {' and '.join(missing)}, which is not installed; "
                "install it with `pip install fxdnat[onnx]`"
            )
    return suffix


def _final_network(
    checkpoint: str | Path, trust_code: bool
) -> tuple[fx.GraphModule, dict, dict[str, str], bool]:
    """The checkpoint's clean network in eval mode; an architecture-stage checkpoint is
    finalized on the decisions its θ makes now."""
    data = ckpt.load(checkpoint)
    gm, decisions, finalized_now = ckpt.restore(data, trust_code=trust_code).final()
    if finalized_now and data["state"]["stage"] == "search":
        log.warning(
            "%s is from NAT's search (epoch %s): exporting the source network on the "
            "supernet's weights",
            checkpoint,
            data["state"].get("search_epoch"),
        )
    elif finalized_now:
        log.warning(
            "%s is from the architecture stage (epoch %s): exporting its current decisions",
            checkpoint,
            data["state"]["epoch"],
        )
    return gm.eval(), data, decisions, finalized_now


def main_logits(gm: fx.GraphModule, example: torch.Tensor) -> fx.GraphModule:
    """``gm`` returning its main logits only: an auxiliary head's output and code are dropped."""
    with torch.no_grad():
        out = gm(example)
    if not isinstance(out, (tuple, list)):
        return gm
    gm = copy.deepcopy(gm)
    output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    value = output.args[0]
    if isinstance(value, (tuple, list)):  # (logits, aux): keep the first
        main = value[0]
    else:  # a call that returns a tuple
        with gm.graph.inserting_before(output):
            main = gm.graph.call_function(operator.getitem, (value, 0))
    output.args = (main,)
    memory.eliminate_dead_code(gm)
    gm.delete_all_unused_submodules()
    return _graph.finish(gm)


def _to_pt2(gm: fx.GraphModule, example: torch.Tensor, out: Path) -> bool:
    program, dynamic = _program(gm, example)
    torch.export.save(program, out)
    return dynamic


def _program(
    gm: fx.GraphModule, example: torch.Tensor
) -> tuple[torch.export.ExportedProgram, bool]:
    """torch.export with a free batch size where the network allows it, else batch 1.

    The batch-2 trace is what lets the batch stay symbolic: a size-1 example specializes it."""
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.export.export(
            gm, (example.expand(2, *example.shape[1:]).contiguous(),), dynamic_shapes=({0: batch},)
        )
        return program, True
    except Exception as exc:  # a reshape that bakes the batch in, ...: fall back to batch 1
        log.info("no dynamic batch for this network (%s); exporting batch 1", exc)
        return torch.export.export(gm, (example,)), False


def _to_onnx(gm: fx.GraphModule, example: torch.Tensor, out: Path) -> bool:
    program, dynamic = _program(gm, example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnxscript's own deprecation notes
        onnx_program = torch.onnx.export(program, (example,), dynamo=True, external_data=False)
    onnx_program.save(str(out), external_data=False)
    return dynamic


def _to_torchscript(gm: fx.GraphModule, example: torch.Tensor, out: Path) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated, still the only .pt runtime
        scripted = torch.jit.trace(gm, example, check_trace=False)
        torch.jit.save(scripted, str(out))
    return False


def _run(path: Path, example: torch.Tensor) -> torch.Tensor | None:
    """The exported file's output for ``example``, through its own runtime."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if path.suffix.lower() == ".pt2":
            return torch.export.load(path).module()(example)
        if path.suffix.lower() == ".pt":
            return torch.jit.load(str(path))(example)
    if importlib.util.find_spec("onnxruntime") is None:
        log.warning("onnxruntime is not installed: %s was not checked", path)
        return None
    import onnxruntime  # lazy: an optional dependency (the onnx extra)

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: example.numpy()})[0])
