"""Synthetic records files for the leaderboard tests (built in the test, small, deterministic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spinebench.benchmark.records import case_rows, write_records
from spinebench.datamodules.labels import get_label_set

EVIL = "<b>x_&{}%$#"
NAMES = get_label_set("default").names


def synthetic_rows(
    dataset: str = "phantom",
    methods: tuple[tuple[str, float], ...] = (("di2in", 9.0), ("di2in_mp", 5.0), (EVIL, 2.5)),
    n_cases: int = 10,
    seeds: tuple[int, ...] = (0,),
    efficiency: bool = True,
    run: str = "run1",
    seed: int = 0,
) -> list[dict]:
    """Methods (name, noise mm) on ``n_cases`` cases; even cases carry metal (and get +6 mm extra noise); about
    5 % misses and 5 % false positives."""
    rng = np.random.default_rng(seed)
    k = len(NAMES)
    base = [np.stack([np.zeros(k), np.zeros(k), 25.0 * np.arange(k)[::-1]], -1) + rng.normal(0, 2, (k, 3))
            for _ in range(n_cases)]
    rows = []
    for order, (method, noise) in enumerate(methods):
        for s in seeds:
            for c in range(n_cases):
                true = base[c].copy()
                true[: c % 6] = np.nan  # limited field of view: the top vertebrae are missing
                metal = c % 2 == 0
                pred = np.nan_to_num(true, nan=0.0) + rng.normal(0, noise + (6.0 if metal else 0.0), (k, 3))
                annotated = np.isfinite(true).all(-1)
                present = np.where(annotated, rng.random(k) > 0.05, rng.random(k) < 0.05)  # misses and FPs
                scores = np.clip(present + rng.normal(0, 0.3, k), 0, 1)
                extra = dict(seconds_per_case=0.25 * (order + 1), params=1e6 * (order + 1),
                             peak_memory_mb=64.0 * (order + 1)) if efficiency else {}
                rows += case_rows(run=run, method=method, seed=s, case=f"case{c:02d}", names=NAMES, true_mm=true,
                                  pred_mm=pred, pred_present=present, scores=scores, dataset=dataset, split="test",
                                  metadata={"metal": metal, "limited_fov": c % 6 > 0}, method_order=order, **extra)
    return rows


def write_run(folder: Path, **kw) -> Path:
    write_records(folder / "records.csv", synthetic_rows(**kw))
    return folder
