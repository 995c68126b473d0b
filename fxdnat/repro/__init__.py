"""Reproducibility harness (moving into a package: see fxdnat/repro/run.py)."""

from __future__ import annotations

from fxdnat.repro.run import *  # noqa: F403
