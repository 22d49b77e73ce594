"""Helpers of the tests that run ``spinebench`` end to end (tests/test_runner.py) and use a finished run
(tests/test_finished_run.py); their shared fixtures, ``smoke_cache`` and ``trained_run``, are in conftest.py."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

TIMING_COLUMNS = ("seconds_per_case", "train_peak_memory_mb", "peak_memory_mb")
TINY = ["methods=[di2in]", "tracking.enabled=false"]


def smoke_sets(cache: Path, *extra: str) -> list[str]:
    """``--set`` items of the tiny di2in run on the ``smoke`` config, its cache in ``cache``, plus ``extra``."""
    return [*TINY, f"data.cache_dir={cache}", *extra]


def read_rows(path: Path, drop=TIMING_COLUMNS) -> list[dict]:
    """A records file's rows without the ``drop`` columns (by default the timings, which differ between runs)."""
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


def run_cli(*args: str, env=None, **kw) -> subprocess.CompletedProcess:
    """``python -m spinebench ARGS`` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "spinebench", *args], capture_output=True, text=True, env=env, **kw)
