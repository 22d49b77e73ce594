"""Memory-allocator settings of spinebench's processes, applied by the command line before torch allocates.

Two settings, each only where the user has not set it:

- ``THP_MEM_ALLOC_ENABLE=1``: PyTorch's CPU allocator backs tensors of 2 MB and more with transparent huge
  pages. Full-size heatmap volumes are hundreds of MB per inference; with 4 kB pages their page faults were 40 %
  of DI2IN's whole-volume inference time (perf/bench_di2in.py).
- glibc's malloc keeps freed blocks of up to 32 MiB for reuse. By default it serves a block above its mmap
  threshold (128 kB at start, raised only as far as the largest block freed so far) with fresh pages from the
  kernel and returns them on free, and it trims the heap's top whenever 128 kB lie free there; a training step
  allocates and frees the same few dozen multi-MB activations and gradients every step, so each step faulted
  in, zeroed and returned them again. With the threshold at glibc's ceiling (32 MiB) and trimming off below
  1 GiB, those blocks come back from the heap: a DI2IN training step of the default recipe took 0.296 s instead
  of 0.335 s (7,799 minor page faults a step before, none after; perf/bench_di2in.py, Intel Xeon VM). Larger
  blocks (inference volumes) still go to mmap and back; ``release_free_memory`` hands the kept ones back.

Both reach processes started later through the environment (spawned workers, tuning trials, DDP ranks read the
``MALLOC_*_`` variables when their C library starts); this process gets the malloc settings through
``mallopt``. Nothing happens on C libraries other than glibc, or where the user set ``GLIBC_TUNABLES``.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's largest allowed mmap threshold on 64-bit systems
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024
# mallopt's parameter numbers (glibc malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
              "MALLOC_TRIM_THRESHOLD_": (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)}


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has ``mallopt`` and ``malloc_trim``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries: no glibc malloc to tune
        return None
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    trim.argtypes, trim.restype = (ctypes.c_size_t,), ctypes.c_int
    return libc


def has_glibc_malloc() -> bool:
    """Whether this process's C library is glibc, whose malloc ``configure_allocator`` tunes."""
    return _glibc() is not None


def configure_allocator(environ: dict[str, str] | None = None) -> dict[str, int]:
    """Apply the settings above to ``environ`` (default ``os.environ``) and, on glibc, to this process; returns
    the malloc settings applied here ``{variable: bytes}`` (empty when none was)."""
    env = os.environ if environ is None else environ
    env.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    libc = _glibc()
    if libc is None or "GLIBC_TUNABLES" in env:
        return {}
    applied = {}
    for name, (param, value) in MALLOC_ENV.items():
        if name in env:  # the user's own value: glibc has read it already, and children inherit it
            continue
        env[name] = str(value)
        if libc.mallopt(param, value) == 1:
            applied[name] = value
    return applied


def release_free_memory() -> None:
    """Hand the memory glibc keeps for reuse back to the kernel (``malloc_trim``), so that the resident size
    counts what is in use: ``benchmark.memory`` calls it before it measures a phase's peak."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
