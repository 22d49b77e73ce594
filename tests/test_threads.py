"""Thread counts are chosen from the free cores, a user's count wins, and bad counts are input errors."""

from __future__ import annotations

import os

import pytest

from benchmark.threads import busy_cores, choose_threads, usable_cores
from datamodules.errors import InputError


def test_explicit_count_wins_and_bad_counts_are_input_errors():
    assert choose_threads(3) == 3
    with pytest.raises(InputError, match="--threads: must be >= 1"):
        choose_threads(0)


def test_automatic_count_is_the_free_cores_shared_among_processes():
    free = usable_cores() - busy_cores()
    assert choose_threads() == max(1, free)
    assert choose_threads(processes=2) == max(1, free // 2)
    assert choose_threads(processes=10_000) == 1  # never zero, however many processes
    assert 1 <= choose_threads() <= len(os.sched_getaffinity(0))
