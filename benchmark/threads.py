"""How many torch threads a process should use: chosen from the free cores, never inherited.

torch's default is every core of the machine. On a 2-core machine where another job holds one core, two
threads of small 3D convolutions fight over the one free core and run several times slower than one thread
(perf/results/resml.md: 6.6x). The rule: the cores this process may run on (its CPU affinity), minus the
ones other jobs keep busy (the 1-minute load average, rounded to whole cores), shared among the processes
this job starts side by side; at least one. A user's explicit count always wins (capped at the usable cores).

Used by ``spinebench predict`` (``--threads``) and by every training and evaluation of ``run`` and ``tune``
(``trainer.num_threads``; ``null`` = this rule). A fixed count also fixes the order of float sums, so records
are bit-identical between runs only with an explicit ``trainer.num_threads`` (the shipped configs set 1).
"""

from __future__ import annotations

import os

from spinebench.datamodules.errors import InputError


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def busy_cores() -> int:
    """Cores other jobs keep busy now: the 1-minute load average rounded to whole cores (0 where unknown)."""
    return int(round(os.getloadavg()[0])) if hasattr(os, "getloadavg") else 0


def choose_threads(requested: int | None = None, processes: int = 1) -> int:
    """The torch thread count for one of ``processes`` processes; ``requested`` (>= 1) wins when given."""
    if requested is not None:
        if int(requested) < 1:
            raise InputError(f"--threads: must be >= 1, got {requested}")
        return min(int(requested), usable_cores())
    free = usable_cores() - busy_cores()
    return max(1, free // max(1, processes))


def auto_processes(n_jobs: int, threads_per_job: int | None) -> int:
    """How many of ``n_jobs`` independent CPU jobs to run side by side: with a fixed ``threads_per_job``, as many
    as the usable cores hold; with ``None`` (auto threads), one per free core, so each gets >= 1 thread."""
    cores = usable_cores() if threads_per_job else max(1, usable_cores() - busy_cores())
    return max(1, min(n_jobs, cores // (threads_per_job or 1)))

