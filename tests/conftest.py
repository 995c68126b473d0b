"""Project-wide test settings."""

from __future__ import annotations

import pytest
import torch

from fxdnat.allocator import tune_cpu_allocator

# as the fxdnat command does: freed CPU memory stays in the process instead of being faulted in
# again by every forward (see fxdnat/allocator.py)
tune_cpu_allocator()


@pytest.fixture(autouse=True)
def _in_a_fresh_folder(tmp_path, monkeypatch):
    """Every test runs in an empty folder of its own: none may depend on, or leave files in,
    the folder pytest was started from (the README's run leaves runs/ in the checkout)."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread per test: batch-2 forwards gain nothing from a second, and on the
    2-core CI machine OpenMP's barriers made some tests swing from 2 s to 40 s under load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
