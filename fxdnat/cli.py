"""The ``fxdnat`` command line: thin click wrappers over the library.

Heavy imports (torch, timm, rich) happen inside the commands, so ``fxdnat --help`` stays instant.
User errors print one line and exit with code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from fxdnat import __version__
from fxdnat._files import check_writable, one_line
from fxdnat.allocator import tune_cpu_allocator
from fxdnat.config import RUNTIME, flag
from fxdnat.ir import DEVICES, GRANULARITIES, METHODS, NAT_WEIGHTS, RESOURCES, TIES, UPDATES
from fxdnat.repro.layout import DEFAULT_METHODS

# what a resumed run may change, as the options that set it (fxdnat.config.RUNTIME)
RUNTIME_OPTIONS = [flag(name) for name in RUNTIME if name != "out"]

EXIT_USER_ERROR = 2


class UserError(click.ClickException):
    """Bad input: one line on stderr, exit code 2."""

    exit_code = EXIT_USER_ERROR


def _user_errors(command: Callable) -> Callable:
    """Turn the library's errors into one clear line (or a traceback under --debug)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return command(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if debug:
                raise
            line = _user_line(exc)
            if line is not None:
                raise UserError(line) from exc
            raise click.ClickException(  # a bug: still one line, with the way to the traceback
                f"internal error: {type(exc).__name__}: {one_line(exc)} (rerun with --debug for "
                "the traceback and please report it)"
            ) from exc

    return wrapper


def _user_line(exc: Exception) -> str | None:
    """The one line for an error the user can fix (bad input, a path the system refused:
    permissions, a full disk, ...); None for a bug."""
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"cannot access {exc.filename}: {exc.strerror}"
    if isinstance(exc, (ValueError, TypeError, FileNotFoundError, KeyError)):
        return one_line(exc)
    return None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fxdnat")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug logs).")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def main(verbose: int, debug: bool) -> None:
    """fxdnat: improve a trained-from-scratch architecture by differentiable transformation.

    Every residual branch, skip (and, with --granularity op, shape-preserving op) of a model
    gets three candidates, none / identity / the original op, mixed by learnable θ that start
    at the original network (DNAT, Kim & Lee 2020).

    SPEC names a model: zoo:NAME (see `fxdnat zoo`), timm:NAME, torchvision:NAME,
    hf:NAME (a transformers language model, e.g. hf:tiny-llama; pip install 'fxdnat[hf]') or
    module:package.module:factory. A text data set (--data text:pydoc) trains a causal
    language model.
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s"
    )
    # the command owns its process: a MobileNetV2 CPU step takes 0.73× as long (allocator.py)
    tune_cpu_allocator()


def _model_options(command: Callable) -> Callable:
    command = click.option(
        "--num-classes",
        type=click.IntRange(min=1),
        default=10,
        show_default=True,
        help="Classes of the model's head.",
    )(command)
    command = click.option(
        "--input-size",
        type=click.IntRange(min=1),
        default=None,
        help="Input side in pixels [default: the model's own].",
    )(command)
    return command


@main.command()
@click.argument("spec")
@_model_options
@click.option(
    "--granularity",
    type=click.Choice(GRANULARITIES),
    default="branch",
    show_default=True,
    help="Edges at joins only, or also every shape-preserving op.",
)
@click.option(
    "--tie",
    type=click.Choice(TIES),
    default="full",
    show_default=True,
    help="Group count shown for this tie mode (both are reported).",
)
@click.option(
    "--data",
    default=None,
    help="Build SPEC for this data set's task and sizes (text:pydoc: a language model's bytes) "
    "[default: --num-classes and --input-size; a zoo language model's bytes, context 128].",
)
@click.option("--data-dir", type=click.Path(file_okay=False), default=None)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_user_errors
def edges(
    spec: str,
    num_classes: int,
    input_size: int | None,
    data: str | None,
    data_dir: str | None,
    granularity: str,
    tie: str,
    as_json: bool,
) -> None:
    """List the edges DNAT would transform in SPEC, with their cost."""
    from fxdnat import tasks  # lazy: torch, as in every command below
    from fxdnat.data import dataset_info
    from fxdnat.report import inspect_edges

    task = tasks.for_data(dataset_info(data, data_dir)) if data is not None else None
    found = inspect_edges(
        spec, num_classes=num_classes, input_size=input_size, granularity=granularity, task=task
    )
    if as_json:
        click.echo(json.dumps(found.to_dict(), indent=2))
        return
    _print_edges(found, tie)


def _print_edges(found: Any, tie: str) -> None:
    from rich.console import Console  # lazy: rich, for tables only
    from rich.table import Table

    console = Console()
    if not found.reports:
        console.print(
            f"{found.spec}: no eligible edge (no add of two activations of equal shape)"
            "; try --granularity op"
        )
        _print_opaque(console, found)
        return
    table = Table(
        title=f"{found.spec} ({found.task.describe()}): {len(found.reports)} edges, "
        f"{found.joins} joins"
    )
    table.add_column("edge", no_wrap=True)
    table.add_column("kind")
    table.add_column("choices", no_wrap=True)
    table.add_column("ops", overflow="fold")
    table.add_column("params", justify="right")
    table.add_column("MFLOPs", justify="right")
    for r in found.reports:
        table.add_row(
            r.edge.name,
            r.computes,  # the edge's kind, or what its branch computes (attention, mlp)
            "/".join(r.edge.choices),
            r.summary,
            f"{r.params:,}",
            f"{r.flops / 1e6:,.2f}",
        )
    console.print(table)
    console.print(
        f"θ groups: full {found.groups['full']}, cell {found.groups['cell']} "
        f"(--tie {tie}: {found.groups[tie]} rows of 3)"
    )
    if tie == "cell" and found.groups["cell"] == found.groups["full"]:
        console.print("note: no two cells share a structure, so cell mode equals full mode here")
    _print_opaque(console, found)


def _print_opaque(console: Any, found: Any) -> None:
    """The parameters fxdnat cannot see into: edges inside an opaque submodule are hidden."""
    if not found.opaque_params and not found.leaves:
        return
    share = 100 * found.opaque_params / max(found.params, 1)
    names = ", ".join(f"{path} ({why})" for path, why in list(found.leaves.items())[:3])
    more = f" and {len(found.leaves) - 3} more" if len(found.leaves) > 3 else ""
    console.print(
        f"opaque: {share:.1f} % of the parameters are inside submodules traced as one call"
        + (f"; leaves: {names}{more}" if names else ""),
        highlight=False,
    )


@main.command()
@click.option("--markdown", is_flag=True, help="A Markdown table (as in docs/zoo.md).")
@_user_errors
def zoo(markdown: bool) -> None:
    """List the zoo's models with parameters and FLOPs at their default input size (a
    language model's: one window of 128 byte tokens)."""
    from fxdnat.report import zoo_rows  # lazy: torch

    rows = zoo_rows()
    if markdown:
        click.echo(_zoo_markdown(rows))
        return
    from rich.console import Console  # lazy: rich, for tables only
    from rich.table import Table

    table = Table(title="fxdnat zoo (10 classes, 32 px; language models: 128 byte tokens)")
    # a name is what the user types: never cut it (the other columns wrap instead)
    table.add_column("model", no_wrap=True, min_width=max(len(row["name"]) for row in rows))
    for column in ("family", "params", "MFLOPs", "edges", "θ groups cell/full", "recipe"):
        justify = "right" if column in ("params", "MFLOPs", "edges") else "left"
        table.add_column(column, justify=justify, overflow="fold")
    for row in rows:
        table.add_row(
            row["name"],
            row["family"],
            f"{row['params']:,}",
            f"{row['flops'] / 1e6:,.1f}",
            str(row["edges"]),
            f"{row['groups_cell']}/{row['groups_full']}",
            row["recipe"],
        )
    Console().print(table)


def _zoo_markdown(rows: list[dict]) -> str:
    header = (
        "model",
        "parameters",
        "MFLOPs",
        "edges",
        "θ groups (cell / full)",
        "recipe",
        "reference",
    )
    lines = ["| " + " | ".join(header) + " |", "|---|---:|---:|---:|---:|---|---|"]
    for row in rows:
        cells = (
            f"`{row['name']}`",
            f"{row['params']:,}",
            f"{row['flops'] / 1e6:,.1f}",
            str(row["edges"]),
            f"{row['groups_cell']} / {row['groups_full']}",
            row["recipe"],
            row["reference"],
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _output_file(help: str) -> Callable:
    """--out FILE, required; the file's extension picks the format."""
    return click.option("--out", type=click.Path(dir_okay=False), required=True, help=help)


_trust_code = click.option(
    "--trust-code",
    is_flag=True,
    help="Build a model that the checkpoint says is made by code (a module: spec, arguments "
    "that are not plain values). Loading runs that code: only for checkpoints whose author you "
    "trust.",
)


# The run settings `transform` and `repro` share: what one training run computes, and where.
_TRAINING_OPTIONS = (
    click.option(
        "--data",
        default="digits",
        show_default=True,
        help="digits or digits-hard (offline), cifar10, tinyimagenet or imagefolder:PATH; for "
        "language models text:pydoc (Python's own documentation, offline) or text:PATH (UTF-8).",
    ),
    click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Where data sets live [default: $FXDNAT_DATA or ~/.cache/fxdnat/data].",
    ),
    click.option("--download", is_flag=True, help="Fetch the data set if it is missing."),
    click.option(
        "--recipe", default=None, help="paper or quick [default: the model's, else paper]."
    ),
    click.option(
        "--granularity", type=click.Choice(GRANULARITIES), default="branch", show_default=True
    ),
    click.option(
        "--arch-update",
        type=click.Choice(UPDATES),
        default="alternate",
        show_default=True,
        help="alternate: ω step then θ step per minibatch (the paper); joint: one backward.",
    ),
    click.option(
        "--epochs",
        type=click.IntRange(min=1),
        default=None,
        help="Total epochs (--method nat: of the derived network, and at most as many search "
        "epochs unless --search-epochs says).",
    ),
    click.option(
        "--arch-epochs",
        type=click.IntRange(min=0),
        default=None,
        help="Epochs of the architecture stage (ω and θ) within --epochs.",
    ),
    click.option(
        "--warmup-epochs",
        type=click.IntRange(min=0),
        default=None,
        help="ω-only epochs at the start of the architecture stage, before θ trains.",
    ),
    click.option(
        "--fade-epochs",
        type=click.IntRange(min=0),
        default=None,
        help="The architecture stage's last epochs: decide at their start, then fade out what "
        "finalize drops while ω trains [default: 0; with --budget 1/8 of the stage].",
    ),
    click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=None,
        help="Batch of training (NAT's search keeps its recipe's).",
    ),
    click.option(
        "--lr",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="ω's lr (NAT's search keeps its recipe's).",
    ),
    click.option(
        "--theta-reach",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="lr·T, how far θ can travel in its T steps: sets θ's lr to REACH / T (an edge "
        "changes after about 1).",
    ),
    click.option(
        "--theta-lr",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="θ's lr, as given (instead of the recipe's --theta-reach).",
    ),
    click.option(
        "--theta-weight-decay",
        type=click.FloatRange(min=0),
        default=None,
        help="θ's L2 weight decay (Adam's; DARTS's 1e-3 by default): a pull of every θ "
        "towards 0, the 'none' threshold.",
    ),
    click.option(
        "--search-epochs",
        type=click.IntRange(min=1),
        default=None,
        help="--method nat: epochs of NAT's search before the derived network trains from "
        "scratch for --epochs.",
    ),
    click.option(
        "--nat-weights",
        type=click.Choice(NAT_WEIGHTS),
        default=None,
        help="--method nat: what the supernet's weights train on — uniform samples without "
        "none (NAT's random sources), the source network, or the policy's samples "
        "[default: the recipe's, uniform].",
    ),
    click.option("--deterministic", is_flag=True, help="Deterministic kernels (slower on CUDA)."),
    click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True),
    click.option(
        "--limit",
        type=click.IntRange(min=1),
        default=None,
        help="Use only the first N examples of each split (smoke tests).",
    ),
)


def _training_options(command: Callable) -> Callable:
    for option in reversed(_TRAINING_OPTIONS):  # listed in --help in this order
        command = option(command)
    return command


@main.command()
@click.argument("spec")
@_training_options
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default="dnat",
    show_default=True,
    help="original: train the untouched model with the same recipe; random: the control, "
    "--changes placed at random edges instead of where θ puts them (or random changes that fit "
    "--budget); nat: the NAT baseline (policy search on a supernet, derive, retrain from "
    "scratch; adapted to fxdnat's edges); prune: contribution pruning to --budget; similarity: "
    "the branches whose output is most like their input removed (ShortGPT's heuristic), to "
    "--budget or as many as --changes.",
)
@click.option(
    "--changes",
    default=None,
    help="For --method random or similarity: how many edges make each kind of change, e.g. "
    "identity=2,skip-none=1 (kinds: identity, none (a branch removed), skip-none, op-identity; "
    "a DNAT run's are `changes` in its summary.json).",
)
@click.option(
    "--budget",
    default=None,
    help="What the emitted network may cost, as fractions of the original's: flops=0.7, "
    "params=0.5, latency=0.8 (timed on the run's device), or several, comma-separated. dnat "
    "trains θ with a cost term and decides exactly within it; random and prune (the "
    "least-contributing branches removed) fit it at the stage's end. docs/budgets.md.",
)
@click.option(
    "--tie",
    type=click.Choice(TIES),
    default="cell",
    show_default=True,
    help="Share θ between cells of one structure (cell) or not (full).",
)
# torch seeds the run from seed × 1,000,003 + epoch, an int64
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--amp/--no-amp", default=None, help="bf16 autocast [default: on with CUDA].")
@click.option("--channels-last/--no-channels-last", default=None, help="[default: on with CUDA]")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the network.")
@click.option("--pretrained", is_flag=True, help="Start from published weights (timm/torchvision).")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Run folder [default: runs/NAME-METHOD-TIE-sSEED].",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out from its checkpoint. Options given must agree with the run "
    f"(only {', '.join(RUNTIME_OPTIONS)} may change); a run cannot be extended.",
)
@_user_errors
def transform(spec: str, out: str | None, resume: bool, compile_: bool, **options: Any) -> None:
    """Transform SPEC with DNAT and train it: architecture stage, finalize, network stage
    (or train it with another --method: original, random, nat, prune, similarity)."""
    from fxdnat.engine import Interrupted, RunConfig, TrainingError  # lazy: torch
    from fxdnat.engine import transform as run_transform
    from fxdnat.progress import RichReporter

    out = out or _default_out(
        spec, options["method"], options["tie"], options["seed"], options["budget"]
    )
    config = RunConfig(spec=spec, out=out, compile=compile_, **options)
    given = _typed({"compile": "compile_", **{name: name for name in ("spec", *options)}})
    try:
        run_transform(config, RichReporter(), resume=resume, given=given)
    except TrainingError as exc:
        raise UserError(str(exc)) from exc
    except Interrupted as exc:
        click.echo(
            f"{exc}; saved to {out}/checkpoint.pt — continue with: fxdnat transform "
            f"{spec} --out {out} --resume",
            err=True,
        )
        raise click.exceptions.Exit(130) from exc


def _typed(fields: dict[str, str]) -> set[str]:
    """The fields whose option (by parameter name) the user gave: a resumed run must agree with
    what they typed, not with the defaults they did not."""
    ctx = click.get_current_context()
    untyped = (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)
    return {
        field for field, name in fields.items() if ctx.get_parameter_source(name) not in untyped
    }


def _default_out(spec: str, method: str, tie: str, seed: int, budget: str | None = None) -> str:
    name = spec.split(":")[-1].replace("/", "_").replace(".", "_")
    suffix = method if method in ("original", "prune") else f"{method}-{tie}"
    if budget:  # "flops=0.7,params=0.5" → "flops0.7-params0.5"
        suffix += "-" + re.sub(r"[^A-Za-z0-9.-]+", "", budget.replace(",", "-").replace("=", ""))
    return f"runs/{name}-{suffix}-s{seed}"


@main.command("eval")
@click.argument("checkpoint", type=click.Path())
@click.option("--data", default=None, help="Data set [default: the run's].")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_trust_code
@_user_errors
def eval_(
    checkpoint: str,
    data: str | None,
    data_dir: str | None,
    device: str,
    limit: int | None,
    as_json: bool,
    trust_code: bool,
) -> None:
    """Accuracy (a language model's validation loss and perplexity), parameters, FLOPs and
    latency of the network in CHECKPOINT."""
    from fxdnat.evaluation import evaluate_checkpoint  # lazy: torch

    result = evaluate_checkpoint(
        checkpoint,
        data=data,
        data_dir=data_dir,
        device=device,
        limit=limit,
        trust_code=trust_code,
    )
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    score = f"test accuracy {100 * result['test_acc']:.2f}% over {result['examples']} examples"
    if result.get("perplexity") is not None:
        score = (
            f"validation loss {result['test_loss']:.4f} nats/token (perplexity "
            f"{result['perplexity']:.3f}), next-token accuracy {100 * result['test_acc']:.2f}% "
            f"over {result['predictions']:,} tokens"
        )
    click.echo(
        f"{result['spec']} ({result['stage']}) on {result['data']}: {score}\n"
        f"parameters {result['params_original']:,} → {result['params']:,}, "
        f"MFLOPs {result['flops_original'] / 1e6:,.1f} → {result['flops'] / 1e6:,.1f}, "
        f"latency {result['latency_ms']:.2f} ms (batch 1, {device})"
    )


@main.command()
@click.argument("source", metavar="CKPT_OR_SPEC")
@_output_file("Output file; its extension picks the format: .svg, .png or .dot.")
@click.option(
    "--view",
    type=click.Choice(["cell", "net"]),
    default="cell",
    show_default=True,
    help="cell: one diagram per kind of cell; net: the whole network, block by block.",
)
@click.option("--cell", default=None, help="Draw this cell only (e.g. layer1.0).")
@click.option(
    "--granularity",
    type=click.Choice(GRANULARITIES),
    default="branch",
    show_default=True,
    help="Edges to draw for a SPEC (a checkpoint has its own).",
)
@_trust_code
@_user_errors
def render(
    source: str, out: str, view: str, cell: str | None, granularity: str, trust_code: bool
) -> None:
    """Draw what DNAT did: kept edges black, edges turned into the identity red, removed
    edges dashed grey.

    CKPT_OR_SPEC is a checkpoint (an architecture-stage one shows θ's current preferences) or a
    model SPEC (the untransformed model, every edge as built). SVG and PNG need a Graphviz layout
    program: `dot`, else the pip-installed `graphviz-pure`; .dot needs none.
    """
    from fxdnat.drawing import check_format, load, write  # lazy: torch, graphviz
    from fxdnat.passes.render import render as draw

    check_format(out)  # a bad extension or an unwritable path fails before the model is built
    check_writable(out)
    subject = load(source, granularity=granularity, trust_code=trust_code)
    path = write(draw(subject, view=view, cell=cell), out)
    if subject.status == "preferences":
        click.echo(
            f"note: {source} is from the architecture stage ({subject.progress}); drawn with "
            "the choices θ prefers now, not yet finalized",
            err=True,
        )
    click.echo(f"wrote {path}")


@main.command()
@click.argument("sources", nargs=-1, required=True, metavar="CHECKPOINT | RUN...")
@_output_file("Image file: .png, .svg or .pdf.")
@click.option(
    "--cost",
    type=click.Choice(RESOURCES),
    default="flops",
    show_default=True,
    help="RUNs: the measured cost on the x axis (latency where the runs timed it).",
)
@_trust_code
@_user_errors
def plot(sources: tuple[str, ...], out: str, cost: str, trust_code: bool) -> None:
    """Plot one run's CHECKPOINT: θ of every group over the architecture stage and both stages'
    learning curves.

    Or plot RUNs (run folders, their summary.json files, study folders): test accuracy against
    the measured cost of each network, a fraction of the original's, one line per method
    through its budgets, error bars the std over seeds (a budget sweep's report draws the same).
    """
    if _is_checkpoint(sources):
        if _typed({"cost": "cost"}):
            raise UserError("--cost is for RUNs' summaries; a checkpoint plots θ and its curves")
        from fxdnat.plot import plot as plot_run  # lazy: torch, matplotlib

        click.echo(f"wrote {plot_run(sources[0], out, trust_code=trust_code)}")
        return
    if trust_code:
        raise UserError("--trust-code is for a CHECKPOINT; RUNs' summaries run no code")
    from fxdnat.repro.pareto import plot_runs  # lazy: matplotlib (no torch)

    click.echo(f"wrote {plot_runs(sources, out, cost)}")


def _is_checkpoint(sources: tuple[str, ...]) -> bool:
    """One file that is not a summary: a checkpoint (folders and .json files are RUNs)."""
    path = Path(sources[0])
    return len(sources) == 1 and not path.is_dir() and path.suffix.lower() != ".json"


@main.command()
@click.argument("checkpoint", type=click.Path())
@_output_file(".pt2 (torch.export), .onnx (needs fxdnat[onnx]) or .pt (TorchScript).")
@_trust_code
@_user_errors
def export(checkpoint: str, out: str, trust_code: bool) -> None:
    """Export the network of CHECKPOINT to run without fxdnat (eval mode, main logits only)."""
    from fxdnat.export import export as export_network  # lazy: torch

    done = export_network(checkpoint, out, trust_code=trust_code)
    if done.finalized_now:
        click.echo(
            f"note: {checkpoint} is from the architecture stage; exported the network its "
            "current θ decides (finalized now)",
            err=True,
        )
    batch = "any batch size" if done.dynamic_batch else f"input {tuple(done.input_shape)}"
    check = (
        f"matches the checkpoint (max error {done.max_error:.1e})"
        if done.max_error is not None
        else "not checked (onnxruntime is not installed)"
    )
    click.echo(f"wrote {done.path} ({done.format}, {batch}); {check}")


@main.command()
@click.argument("specs", nargs=-1)
@click.option(
    "--seeds",
    default="1-5",
    show_default=True,
    help="Seeds: ranges and lists, e.g. 1-5 or 0,3,7-8.",
)
@click.option(
    "--methods",
    default=",".join(DEFAULT_METHODS),
    show_default=True,
    help="Comma list: original (the untouched model, same recipe), cell, full (DNAT's θ ties), "
    "random (the control: as many changes as the same seed's run of the first DNAT method listed, "
    "placed at random), nat (the NAT baseline, adapted to fxdnat's edges: search, derive, "
    "retrain from scratch), prune (contribution pruning; --budgets only), similarity (the "
    "branches whose output is most like their input removed, ShortGPT's heuristic: as many as "
    "that DNAT run changed, or to fit each budget).",
)
@click.option(
    "--budgets",
    default=None,
    help="A budget sweep: comma list of fractions of the original's cost, e.g. 1.0,0.8,0.6,0.4. "
    "At each below 1, cell, full (DNAT with a cost term), prune, similarity and random (drawn to "
    "fit it) run into OUT/<model>/<method>@flops=0.6/seed<k>/; 1 is the unconstrained point "
    "(cell and full without a budget); original and nat run once.",
)
@click.option(
    "--budget-resource",
    type=click.Choice(RESOURCES),
    default="flops",
    show_default=True,
    help="What --budgets bound.",
)
@_training_options
@click.option(
    "--device",
    type=click.Choice(DEVICES),
    default="auto",
    show_default=True,
    help="With GPUs (auto, cuda): one run per GPU in parallel; else one run after another.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Study folder: OUT/<model>/<method>/seed<k>/ per run (<method>@<budget> under "
    "--budgets), tables in OUT.",
)
@click.option(
    "--shard",
    default=None,
    help="Run only slice i of n (e.g. 2/4), for job launchers; give every shard the same "
    "SPECs, --seeds, --methods and --budgets. A random run goes in the shard of the DNAT run it "
    "copies.",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Train nothing: re-aggregate the study in this folder.",
)
@_user_errors
def repro(
    specs: tuple[str, ...],
    seeds: str,
    methods: str,
    budgets: str | None,
    budget_resource: str,
    out: str | None,
    shard: str | None,
    report_dir: str | None,
    **options: Any,
) -> None:
    """Train SPECs with every method and seed, resumably, and aggregate the paper's tables.

    Finished runs are skipped and cut ones resumed, so rerunning the same command continues a
    study. Writes OUT/report.md (Table 1: mean / std / device-hours, and DNAT against random at
    equal changes; Table 2: per seed; Table 3: size against the original; edge choices, seed
    agreement and how sure DNAT was; when DNAT will change the network; under --budgets,
    accuracy against the measured cost), CSVs and plots.
    """
    from fxdnat.repro.report import aggregate  # alone, for --report: no torch, no harness

    if report_dir is not None:
        if specs or out:
            raise UserError("--report DIR only re-aggregates; give it no SPEC and no --out")
        _print_report(aggregate(report_dir))
        return
    from fxdnat import repro as harness  # lazy: the harness, only to run a study

    if not specs or out is None:
        raise UserError("give SPECs and --out DIR (or --report DIR to re-aggregate a study)")
    if budgets is None and _typed({"budget_resource": "budget_resource"}):
        raise UserError("--budget-resource says what --budgets bound; give --budgets too")
    config = harness.ReproConfig(
        specs=list(specs),
        out=out,
        seeds=harness.parse_seeds(seeds),
        methods=harness.parse_methods(methods),
        budgets=harness.parse_budgets(budgets) if budgets is not None else None,
        budget_resource=budget_resource,
        shard=harness.parse_shard(shard) if shard else None,
        **options,
    )
    results = _run_study(config)
    _print_report(aggregate(out))
    failed = [r for r in results if r.status == "failed"]
    if failed:
        click.echo(f"{len(failed)} of {len(results)} runs failed; see {out}/report.md", err=True)
        raise click.exceptions.Exit(1)


def _run_study(config: Any) -> list:
    from fxdnat.engine import Interrupted  # lazy: torch
    from fxdnat.repro import LineReporter, run_study

    try:
        return run_study(config, LineReporter(functools.partial(click.echo, err=True)))
    except (Interrupted, KeyboardInterrupt) as exc:
        click.echo(f"{exc or 'interrupted'}; rerun the same command to resume the study", err=True)
        raise click.exceptions.Exit(130) from exc


def _print_report(report: Any) -> None:
    for section in report.markdown.split("\n## ")[1:]:
        title, _, body = section.partition("\n")
        table1 = body.split("### Table 2")[0].strip()
        click.echo(f"{title}\n{table1}\n")
    click.echo("wrote " + ", ".join(str(p) for p in report.files))


if __name__ == "__main__":
    sys.exit(main())
