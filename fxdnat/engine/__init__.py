"""Training engine: DNAT's two stages end to end, on a CPU, on CUDA and under torchrun.

One module a job:

- ``setup``: the run built once — data, recipe, θ's schedule, and the network, new or restored
  from the run's checkpoint (the same build → trace → discover → gate as ``fxdnat.checkpoint``);
- ``trainer``: the epoch loop; every minibatch is one ``fxdnat.DNAT.step`` (fxdnat/dnat.py,
  where θ gets its optimizer and the step is written once);
- ``stage``: the boundary between the stages — decide, finalize, carry ω's momentum;
- ``search``: the NAT baseline's search and derive, before its derived network trains;
- ``state``: what a checkpoint keeps and the run's files (checkpoint, metrics, summary);
- ``runtime``: device, DDP process group, autocast, RNG state, Ctrl-C;
- ``divergence``: a loss or gradient that is not finite, found and explained.
"""

from __future__ import annotations

from fxdnat._files import CELLS, CHECKPOINT, METRICS, SUMMARY
from fxdnat.checkpoint import load_network
from fxdnat.config import RunConfig, resolve_recipe
from fxdnat.engine.divergence import TrainingError
from fxdnat.engine.runtime import check_device
from fxdnat.engine.state import RunFinished
from fxdnat.engine.trainer import Interrupted, Reporter, Trainer

__all__ = [
    "CELLS",
    "CHECKPOINT",
    "METRICS",
    "SUMMARY",
    "Interrupted",
    "Reporter",
    "RunConfig",
    "RunFinished",
    "Trainer",
    "TrainingError",
    "check_device",
    "load_network",
    "resolve_recipe",
    "transform",
]


def transform(
    config: RunConfig,
    reporter: Reporter | None = None,
    *,
    resume: bool = False,
    given: set[str] | frozenset[str] | None = None,
) -> dict:
    """Run (or resume) ``config``; returns the summary also written to ``out/summary.json``.

    ``resume`` continues the run stored in ``config.out``; ``given`` names the fields of
    ``config`` the user set, which must agree with that run (``fxdnat.config.resumed_config``).
    A finished run is left as it is: the reporter hears "finished" and its summary is returned.

    Raises:
        ValueError: a config, data set, model or checkpoint that cannot run (one line that says
            what to do); Interrupted: Ctrl-C or SIGTERM, after saving; TrainingError: a loss
            that is not finite (the last good checkpoint is kept).
    """
    reporter = reporter or Reporter()
    try:
        trainer = Trainer(config, reporter, resume=resume, given=given)
    except RunFinished as done:
        reporter.event("finished", {"out": str(done.out), "summary": done.summary})
        return done.summary
    return trainer.run()
