"""Keep freed CPU memory in the process, so training steps stop paying the kernel for pages.

PyTorch allocates CPU tensors with plain ``malloc``. glibc serves a block above its mmap threshold
(128 KiB at first, raised dynamically up to 32 MiB) with a fresh ``mmap`` and hands it back to
the kernel on ``free``; freed memory at the top of the heap is trimmed back as well. A training
step allocates and frees the same activations and gradients every time, so every step faults
them in again page by page: on MobileNetV2 (32 px, batch 64, 2 threads) about 240 000 minor
page faults and 0.9 s of kernel time per 2 s step (benchmarks/allocator.py). Raising both
thresholds keeps the blocks in the heap for the next step (almost no faults; the step takes
0.73× as long), as the caching allocators of jemalloc/tcmalloc, and PyTorch's own on CUDA, do
anyway. The cost is that the process keeps its peak memory until it exits, the right trade for
a process that trains.

``tune_cpu_allocator()`` is called by the ``fxdnat`` command line, the benchmarks and the test
suite; library users call it once at the start of their own training script. Any malloc setting
in the environment wins: with ``MALLOC_MMAP_THRESHOLD_``-style variables or ``glibc.malloc``
tunables for these thresholds, or another allocator preloaded, it does nothing. It does
nothing off glibc (macOS, Windows, musl) either.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os

log = logging.getLogger(__name__)

# mallopt's parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_INT_MAX = 2**31 - 1
# older glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit); 2.36 does not
_OLD_GLIBC_MMAP_MAX = 32 * 2**20
# the settings a user may have chosen already (environment variable MALLOC_<NAME>_, or tunable)
_SETTINGS = ("mmap_threshold", "trim_threshold", "mmap_max", "top_pad")


@functools.cache
def tune_cpu_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds (once per process); True if they were raised."""
    reason = _user_choice()
    if reason:
        log.debug("CPU allocator left alone: %s", reason)
        return False
    libc = _glibc()
    if libc is None:
        return False
    mmap_set = libc.mallopt(_M_MMAP_THRESHOLD, _INT_MAX) or libc.mallopt(
        _M_MMAP_THRESHOLD, _OLD_GLIBC_MMAP_MAX
    )
    trim_set = libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX)
    log.debug("glibc malloc thresholds raised: mmap %s, trim %s", bool(mmap_set), bool(trim_set))
    return bool(mmap_set and trim_set)


def _user_choice() -> str | None:
    """Why the environment's own malloc settings should be kept, or None."""
    env = os.environ
    for name in _SETTINGS:
        if f"MALLOC_{name.upper()}_" in env:
            return f"MALLOC_{name.upper()}_ is set"
        if f"glibc.malloc.{name}" in env.get("GLIBC_TUNABLES", ""):
            return f"GLIBC_TUNABLES sets glibc.malloc.{name}"
    if any(name in env.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return "another allocator is preloaded"
    return None


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols, the C library's among them
    except (OSError, TypeError):  # TypeError: Windows has no CDLL(None)
        return None
    if not hasattr(libc, "gnu_get_libc_version"):  # musl and macOS: another malloc
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc
