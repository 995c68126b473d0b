"""``python -m fxdnat.repro PAYLOAD``: the process of one run of a study, as `fxdnat.repro.run`
starts one per GPU; PAYLOAD is the JSON of the study's config and the job. Exits 130 when
interrupted."""

from __future__ import annotations

import json
import logging
import sys

from fxdnat.allocator import tune_cpu_allocator
from fxdnat.engine import Interrupted
from fxdnat.repro.plan import Job, ReproConfig
from fxdnat.repro.run import run_one


def main(payload: str) -> int:
    """Entry of a run subprocess: one job, recorded; exit 130 when interrupted."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    tune_cpu_allocator()  # a process of its own, as the fxdnat command
    data = json.loads(payload)
    try:
        run_one(ReproConfig(**data["config"]), Job(**data["job"]))
    except (Interrupted, KeyboardInterrupt):
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
