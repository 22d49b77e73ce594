"""Deterministic PNG plots (matplotlib's object API on the Agg canvas: no pyplot state, no timestamps)."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from datamodules.labels import ALL_NAMES
from leaderboard.evaluate import MethodSummary
from leaderboard.metrics import REGION_COLUMNS

DPI = 80
# PNG metadata written by matplotlib: drop the software version so the bytes do not depend on it.
PNG_METADATA = {"Software": None}


def plot_text(text: str) -> str:
    """Keep user text literal in matplotlib (a ``$`` would start mathtext)."""
    return str(text).replace("$", r"\$")


def figure_png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata=PNG_METADATA)
    return buf.getvalue()


def _color(i: int) -> str:
    return f"C{i % 10}"


def per_vertebra_error_png(summaries: list[MethodSummary], title: str) -> bytes:
    """Mean localization error per vertebra with its 95 % interval, one series per method."""
    names = [n for n in ALL_NAMES if any(n in s.vertebra_names for s in summaries)]
    fig = Figure(figsize=(max(6.0, 0.35 * len(names) + 2), 3.6))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(summaries))
    for i, s in enumerate(summaries):
        index = {n: j for j, n in enumerate(s.vertebra_names)}
        mean = np.array([s.vertebra_mean_mm[index[n]] if n in index else np.nan for n in names])
        lo = np.array([s.vertebra_lo[index[n]] if n in index else np.nan for n in names])
        hi = np.array([s.vertebra_hi[index[n]] if n in index else np.nan for n in names])
        x = np.arange(len(names)) - 0.4 + width * (i + 0.5)
        ok = np.isfinite(mean)
        err = np.vstack([np.where(np.isfinite(lo), mean - lo, 0.0), np.where(np.isfinite(hi), hi - mean, 0.0)])
        ax.errorbar(x[ok], mean[ok], yerr=err[:, ok], fmt="o", ms=3, capsize=2, color=_color(i),
                    label=plot_text(s.method))
    ax.set_xticks(np.arange(len(names)), names, fontsize=7)
    ax.set_ylabel("mean error (mm)")
    ax.set_title(plot_text(title), fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    if summaries:
        ax.legend(fontsize=7, loc="upper left")
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.9)  # fixed margins: tight_layout draws twice
    return figure_png(fig)


def id_rate_per_region_png(summaries: list[MethodSummary], regions: list[int], title: str) -> bytes:
    """Identification rate (%) per region with its 95 % interval, grouped bars per method."""
    fig = Figure(figsize=(6.0, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(summaries))
    x0 = np.arange(len(regions))
    for i, s in enumerate(summaries):
        val = np.array([s.point["id_rate"][r] for r in regions]) * 100.0
        lo = np.array([s.lo["id_rate"][r] for r in regions]) * 100.0
        hi = np.array([s.hi["id_rate"][r] for r in regions]) * 100.0
        err = np.vstack([np.nan_to_num(val - lo), np.nan_to_num(hi - val)])
        ax.bar(x0 - 0.4 + width * (i + 0.5), np.nan_to_num(val), width, yerr=err, capsize=2, color=_color(i),
               label=plot_text(s.method))
    ax.set_xticks(x0, [REGION_COLUMNS[r].capitalize() for r in regions])
    ax.set_ylim(0, 105)
    ax.set_ylabel("Id.Rate (%)")
    ax.set_title(plot_text(title), fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    if summaries:
        ax.legend(fontsize=7, loc="lower left")
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.1, top=0.9)
    return figure_png(fig)
