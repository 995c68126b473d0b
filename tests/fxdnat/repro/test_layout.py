"""The study's vocabulary and file names: the same names as the engine's, without torch."""

from __future__ import annotations

from fxdnat import engine
from fxdnat.repro.layout import CHECKPOINT, METRICS, SUMMARY


def test_the_study_names_the_engines_files_as_the_engine_does():
    # fxdnat.repro.layout repeats them so that `fxdnat repro --report` needs no torch
    assert (CHECKPOINT, METRICS, SUMMARY) == (engine.CHECKPOINT, engine.METRICS, engine.SUMMARY)
