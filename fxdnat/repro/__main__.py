"""``python -m fxdnat.repro PAYLOAD``: one run of a study in a process of its own, as the harness
starts one per GPU (`fxdnat.repro.run`); exits 130 when interrupted."""

from __future__ import annotations

import sys

from fxdnat.repro.run import _child_main

if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1]))
