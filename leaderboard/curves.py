"""Learning curves of a run: ``<out>/curves.png``, one panel per training, from the cells' CSV logs alone.

Each training writes Lightning's CSVLogger file ``<out>/cells/<method>/seed<k>/curves/metrics.csv`` (columns
``step``, ``train/loss`` every ``log_every_n_steps``, ``val/id_rate`` and ``val/mean_error_mm`` at each
validation). A panel shows the training loss (log scale, left axis) and the validation Id.Rate (right axis,
with the mean error in the legend) against the optimiser step; a panel of a training shared by several cells
names all of them. A row logged twice (a step repeated after a resume) keeps its last value.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from spinebench.datamodules.atomic import write_bytes_atomic
from spinebench.leaderboard.plots import figure_png, plot_text

CURVES_FILE = "curves.png"
TRAIN_LOSS, VAL_ID_RATE, VAL_ERROR = "train/loss", "val/id_rate", "val/mean_error_mm"


def read_curves(path: Path) -> dict[str, list[tuple[int, float]]]:
    """``{column: [(step, value), ...]}`` from a CSVLogger ``metrics.csv`` (empty cells skipped)."""
    series: dict[str, dict[int, float]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            try:
                step = int(float(row.get("step") or "nan"))
            except ValueError:
                continue
            for key, text in row.items():
                if key in ("step", "epoch") or text in (None, ""):
                    continue
                try:
                    value = float(text)
                except ValueError:
                    continue
                if math.isfinite(value):
                    series.setdefault(key, {})[step] = value
    return {key: sorted(points.items()) for key, points in series.items()}


def draw_curves(out_dir: Path, trainings: Sequence[tuple[int, Sequence[str]]]) -> Path | None:
    """Draw ``<out>/curves.png``: one panel per ``(seed, [trainer, *members])`` that has a curves file."""
    panels = []
    for seed, members in trainings:
        path = Path(out_dir) / "cells" / members[0] / f"seed{seed}" / "curves" / "metrics.csv"
        if path.is_file():
            panels.append((seed, list(members), read_curves(path)))
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.2 * rows))
    for i, (seed, members, series) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        loss = series.get(TRAIN_LOSS, [])
        if loss:
            ax.plot([s for s, _ in loss], [v for _, v in loss], color="C0", lw=1.0, label="train loss")
            if min(v for _, v in loss) > 0:
                ax.set_yscale("log")
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("train loss", color="C0")
        title = members[0] + (f" (+ {', '.join(members[1:])})" if len(members) > 1 else "")
        ax.set_title(plot_text(f"{title}, seed {seed}"), fontsize=9)
        rate = series.get(VAL_ID_RATE, [])
        if rate:
            twin = ax.twinx()
            error = dict(series.get(VAL_ERROR, []))
            best = max(rate, key=lambda p: p[1])
            label = f"val Id.Rate (best {100 * best[1]:.0f} % at step {best[0]}"
            label += f", {error[best[0]]:.1f} mm)" if best[0] in error else ")"
            twin.plot([s for s, _ in rate], [100 * v for _, v in rate], color="C3", marker=".", lw=1.2, label=label)
            twin.set_ylim(0, 100)
            twin.set_ylabel("val Id.Rate %", color="C3")
            twin.legend(loc="lower right", fontsize=7)
        if loss:
            ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    return write_bytes_atomic(Path(out_dir) / CURVES_FILE, figure_png(fig))
