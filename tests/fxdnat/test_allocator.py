"""tune_cpu_allocator: freed tensors stay in the process (no page faults on reuse), and the
environment's own malloc settings win."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys

import pytest

from fxdnat.allocator import _user_choice

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc"
)

# A 64 MiB tensor is above glibc's largest dynamic mmap threshold (32 MiB): by default every
# allocation is a fresh mapping whose 16 384 pages fault in when written.
FAULTS = """
import json, resource, sys
import torch
from fxdnat.allocator import tune_cpu_allocator
tuned = tune_cpu_allocator() if sys.argv[1] == "tune" else False
faults = []
for _ in range(24):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(2**24).fill_(1.0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"tuned": tuned, "faults": faults}))
"""


def _faults(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    clean.pop("GLIBC_TUNABLES", None)
    out = subprocess.run(
        [sys.executable, "-c", FAULTS, mode], env={**clean, **env},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


@glibc_only
def test_tuned_allocator_reuses_freed_memory():
    plain, tuned = _faults("plain"), _faults("tune")
    assert not plain["tuned"] and tuned["tuned"]
    assert min(plain["faults"]) > 16_000  # every round maps and faults its 64 MiB again
    # torch's aligned allocations take a few rounds to settle into a reusable heap block; from
    # then on a round faults nothing
    assert statistics.median(tuned["faults"]) < 1_000
    assert sum(tuned["faults"]) < sum(plain["faults"]) / 2


@glibc_only
def test_the_environment_wins():
    kept = _faults("tune", MALLOC_TRIM_THRESHOLD_="131072")
    assert not kept["tuned"] and min(kept["faults"]) > 16_000


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "MALLOC_MMAP_THRESHOLD_ is set"),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, "glibc.malloc.trim_threshold"),
        ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "another allocator is preloaded"),
        ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "MALLOC_ARENA_MAX": "2"}, None),
    ],
)
def test_user_choice(monkeypatch, env, reason):
    for name in list(os.environ):
        if name.startswith("MALLOC_") or name in ("GLIBC_TUNABLES", "LD_PRELOAD"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    found = _user_choice()
    assert found == reason if reason is None else reason in found
