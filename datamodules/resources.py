"""Memory and disk a request needs, checked before anything is allocated or written.

A request that cannot fit this machine (a phantom at 0.01 mm, ten million bootstrap draws, a billion cases) is
refused with one line that says how much it would need and how much there is, instead of running until the
memory or the disk is full. Estimates are measured upper bounds, not exact sizes; they only stop what cannot
possibly fit.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from spinebench.datamodules.errors import InputError

# Share of the available memory one request may plan to use: the rest is the process's own and its neighbours'.
MEMORY_SHARE = 0.8


def available_memory() -> int:
    """Bytes of memory available to new allocations (``MemAvailable``; else the physical memory)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: never refuse


def free_disk(path: str | os.PathLike) -> int:
    """Free bytes on the file system that ``path`` (or its nearest existing parent) is on."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def human(n: float) -> str:
    """``512 bytes``, ``1.5 GiB``, ... up to PiB."""
    units = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB")
    i = 0
    while abs(n) >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.0f} bytes" if i == 0 else f"{n:.1f} {units[i]}"


def require_memory(need: float, what: str) -> None:
    """Refuse ``what`` when it needs more than ``MEMORY_SHARE`` of the available memory."""
    have = available_memory()
    if need > MEMORY_SHARE * have:
        raise InputError(f"{what} needs about {human(need)} of memory; this machine has {human(have)} available")


def require_disk(need: float, folder: str | os.PathLike, what: str) -> None:
    """Refuse ``what`` when it would write more than the free space of ``folder``'s file system."""
    have = free_disk(folder)
    if need > have:
        raise InputError(f"{what} needs about {human(need)} of disk in {folder}; {human(have)} is free there")
