"""Thread counts are chosen from the free cores, a user's count wins, and bad counts are input errors."""

from __future__ import annotations

import os

import pytest

import torch

from spinebench.benchmark.builders import set_determinism
from spinebench.benchmark.config import TrainerConfig
from spinebench.benchmark.threads import auto_processes, busy_cores, choose_threads, usable_cores
from spinebench.datamodules.errors import InputError


def test_explicit_count_wins_up_to_the_usable_cores_and_bad_counts_are_input_errors():
    assert choose_threads(1) == 1 == choose_threads(1, processes=8)
    assert choose_threads(10_000) == usable_cores()  # never more threads than cores to run them
    with pytest.raises(InputError, match="--threads: must be >= 1"):
        choose_threads(0)


def test_automatic_count_is_the_free_cores_shared_among_processes():
    free = usable_cores() - busy_cores()
    assert choose_threads() == max(1, free)
    assert choose_threads(processes=2) == max(1, free // 2)
    assert choose_threads(processes=10_000) == 1  # never zero, however many processes
    assert 1 <= choose_threads() <= len(os.sched_getaffinity(0))


def test_automatic_processes_fill_the_free_cores(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr("os.getloadavg", lambda: (2.7, 1.0, 1.0), raising=False)  # 3 cores busy elsewhere
    assert auto_processes(10, 1) == 8 and auto_processes(10, 2) == 4 and auto_processes(3, 1) == 3
    assert auto_processes(10, None) == 5 and auto_processes(2, None) == 2  # auto threads: one per free core
    assert choose_threads(None, processes=2) == 2 and choose_threads(None, processes=5) == 1


def test_every_cell_sets_the_chosen_thread_count():
    before = torch.get_num_threads()
    try:
        set_determinism(0, TrainerConfig(accelerator="cpu", num_threads=1))
        assert torch.get_num_threads() == 1
        set_determinism(0, TrainerConfig(accelerator="cpu", num_threads=None), processes=2)
        assert torch.get_num_threads() == choose_threads(None, processes=2)
    finally:
        torch.set_num_threads(before)
