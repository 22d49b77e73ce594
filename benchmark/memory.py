"""Peak memory of one phase of a cell (its training, or its test predictions), not of the whole process.

A process's high-water mark (``ru_maxrss``) only grows, so after one cell it says nothing about the next. Here:

- **CUDA**: ``torch.cuda.reset_peak_memory_stats`` at the start, ``max_memory_allocated`` at the end.
- **CPU on Linux**: the kernel's resident-set high-water mark (``VmHWM`` in ``/proc/self/status``) is reset to the
  current resident size at the start (``echo 5 > /proc/self/clear_refs``) and read at the end: the peak resident
  memory of the process during the phase, whatever allocated it (torch, numpy, SimpleITK).
- Elsewhere (or where the kernel refuses the reset): resident size sampled every 10 ms by a thread, from
  ``/proc/self/statm``; without ``/proc`` the peak is not known (NaN).
"""

from __future__ import annotations

import math
import os
import re
import threading
from pathlib import Path
from types import TracebackType

import torch

from spinebench.benchmark.allocator import release_free_memory

_STATUS, _CLEAR_REFS, _STATM = Path("/proc/self/status"), Path("/proc/self/clear_refs"), Path("/proc/self/statm")
SAMPLE_SECONDS = 0.01


def _hwm_mib() -> float:
    match = re.search(r"^VmHWM:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    return int(match.group(1)) / 1024.0 if match else math.nan


def _rss_mib() -> float:
    return int(_STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_hwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return math.isfinite(_hwm_mib())
    except OSError:
        return False


class PeakMemory:
    """``with PeakMemory(cuda) as peak: ...`` then ``peak.mib``: the phase's peak memory in MiB (NaN: unknown)."""

    def __init__(self, cuda: bool = False) -> None:
        self.cuda = bool(cuda) and torch.cuda.is_available()
        self.mib = math.nan
        self._mode = ""
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self._sampled = 0.0

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self._mode = "cuda"
            return self
        release_free_memory()  # what earlier phases freed and glibc kept for reuse is not this phase's memory
        if _reset_hwm():
            self._mode = "hwm"
        elif _STATM.is_file():
            self._mode = "sample"
            self._sampled = _rss_mib()
            self._sampler = threading.Thread(target=self._sample, name="spinebench-peak-memory", daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self._sampled = max(self._sampled, _rss_mib())

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._mode == "cuda":
            self.mib = torch.cuda.max_memory_allocated() / 2**20
        elif self._mode == "hwm":
            self.mib = _hwm_mib()
        elif self._mode == "sample":
            self._stop.set()
            if self._sampler is not None:
                self._sampler.join()
            self.mib = max(self._sampled, _rss_mib())
