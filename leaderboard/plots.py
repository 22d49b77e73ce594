"""Deterministic PNG plots (matplotlib's object API on the Agg canvas: no pyplot state, no timestamps)."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from spinebench.datamodules.labels import ALL_NAMES
from spinebench.leaderboard.evaluate import ConditionRow, MethodSummary
from spinebench.leaderboard.metrics import REGION_COLUMNS

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


def _legend_outside(fig: Figure, ax, n: int) -> None:
    """The legend right of the axes, never over the data."""
    if n:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)


def _legend_width_in(methods: list[str]) -> float:
    """Inches right of the axes for a legend of these method names."""
    return 0.6 + 0.08 * max((len(m) for m in methods), default=0)


ERROR_FLOOR_MM = 0.5  # the log axis of the per-vertebra error starts here (sub-millimetre means are drawn on it)


def per_vertebra_error_png(summaries: list[MethodSummary], title: str) -> bytes:
    """Mean localization error per vertebra with its 95 % interval, one series per method, on a log axis so that
    a method with errors of hundreds of millimetres does not flatten the others."""
    names = [n for n in ALL_NAMES if any(n in s.vertebra_names for s in summaries)]
    legend_w = _legend_width_in([s.method for s in summaries])
    width = max(6.0, 0.35 * len(names) + 2) + legend_w
    fig = Figure(figsize=(width, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    step = 0.8 / max(1, len(summaries))
    for i, s in enumerate(summaries):
        index = {n: j for j, n in enumerate(s.vertebra_names)}
        mean, lo, hi = (np.array([v[index[n]] if n in index else np.nan for n in names])
                        for v in (s.vertebra_mean_mm, s.vertebra_lo, s.vertebra_hi))
        mean, lo, hi = (np.maximum(v, ERROR_FLOOR_MM) for v in (mean, lo, hi))
        x = np.arange(len(names)) - 0.4 + step * (i + 0.5)
        ok = np.isfinite(mean)
        err = np.vstack([np.where(np.isfinite(lo), mean - lo, 0.0), np.where(np.isfinite(hi), hi - mean, 0.0)])
        ax.errorbar(x[ok], mean[ok], yerr=err[:, ok], fmt="o", ms=3, capsize=2, color=_color(i),
                    label=plot_text(s.method))
    ax.set_yscale("log")
    shown = np.concatenate([np.maximum(np.r_[s.vertebra_lo, s.vertebra_hi, s.vertebra_mean_mm], ERROR_FLOOR_MM)
                            for s in summaries] or [np.zeros(0)])
    shown = shown[np.isfinite(shown)]
    low, high = (float(shown.min()) / 1.3, float(shown.max()) * 1.3) if shown.size else (1.0, 100.0)
    high = max(high, 25.0)  # the 20 mm line always shows
    ax.set_ylim(low, high)
    ax.set_yticks([t for t in (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000) if low <= t <= high])
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.axhline(20.0, color="0.5", lw=0.8, ls="--")  # the identification threshold
    ax.set_xticks(np.arange(len(names)), names, fontsize=7)
    ax.set_ylabel("mean error (mm, log scale)")
    ax.set_title(plot_text(title) + " (dashed: 20 mm)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    _legend_outside(fig, ax, len(summaries))
    fig.subplots_adjust(left=0.7 / width, right=1 - legend_w / width, bottom=0.12, top=0.9)  # fixed margins
    return figure_png(fig)


def id_rate_per_region_png(summaries: list[MethodSummary], regions: list[int], title: str) -> bytes:
    """Identification rate (%) per region with its 95 % interval, grouped bars per method, legend outside."""
    legend_w = _legend_width_in([s.method for s in summaries])
    width = 6.0 + legend_w
    fig = Figure(figsize=(width, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    step = 0.8 / max(1, len(summaries))
    x0 = np.arange(len(regions))
    for i, s in enumerate(summaries):
        val = np.array([s.point["id_rate"][r] for r in regions]) * 100.0
        lo = np.array([s.lo["id_rate"][r] for r in regions]) * 100.0
        hi = np.array([s.hi["id_rate"][r] for r in regions]) * 100.0
        err = np.vstack([np.nan_to_num(val - lo), np.nan_to_num(hi - val)])
        ax.bar(x0 - 0.4 + step * (i + 0.5), np.nan_to_num(val), step, yerr=err, capsize=2, color=_color(i),
               label=plot_text(s.method))
    ax.set_xticks(x0, [REGION_COLUMNS[r].capitalize() for r in regions])
    return _rate_figure(fig, ax, "Id.Rate (%)", title, len(summaries), width, legend_w, bottom=0.1)


def _rate_figure(fig: Figure, ax, ylabel: str, title: str, n_methods: int, width: float, legend_w: float,
                 bottom: float) -> bytes:
    """Finish an Id.Rate bar plot (0-105 %, grid, legend outside, fixed margins) and return its PNG."""
    ax.set_ylim(0, 105)
    ax.set_ylabel(ylabel)
    ax.set_title(plot_text(title), fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    _legend_outside(fig, ax, n_methods)
    fig.subplots_adjust(left=0.6 / width, right=1 - legend_w / width, bottom=bottom, top=0.9)
    return figure_png(fig)


FLAG_WORDS = {"0": "no", "1": "yes"}


def _is_flag(conditions: list[ConditionRow], column: str) -> bool:
    return {r.value for r in conditions if r.column == column} <= set(FLAG_WORDS)


def id_rate_by_condition_png(conditions: list[ConditionRow], methods: list[str], title: str) -> bytes:
    """Id.Rate (%, all vertebrae) of each method on the scans of each value of each case condition: one group of
    bars per (condition, value), labelled with its scan count; 95 % intervals as error bars."""
    legend_w = _legend_width_in(methods)
    width = max(6.0, 0.12 * len(conditions) * max(1, len(methods)) + 2.0) + legend_w
    fig = Figure(figsize=(width, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    step = 0.8 / max(1, len(methods))
    labels, labelled = [], set()
    for g, row in enumerate(conditions):
        by_method = {s.method: s for s in row.summaries}
        n_scans = max((s.n_scans for s in row.summaries), default=0)
        shown_value = FLAG_WORDS.get(row.value, row.value) if _is_flag(conditions, row.column) else row.value
        labels.append(f"{plot_text(row.column.removeprefix('meta_'))}\n{plot_text(shown_value)} ({n_scans})")
        for i, m in enumerate(methods):
            s = by_method.get(m)
            if s is None or not np.isfinite(s.point["id_rate"][0]):
                continue
            val, lo, hi = (100.0 * d["id_rate"][0] for d in (s.point, s.lo, s.hi))
            err = [[np.nan_to_num(val - lo)], [np.nan_to_num(hi - val)]]
            ax.bar(g - 0.4 + step * (i + 0.5), val, step, yerr=err, capsize=1.5, color=_color(i),
                   label=None if m in labelled else plot_text(m))
            labelled.add(m)
    for g in range(1, len(conditions)):
        if conditions[g].column != conditions[g - 1].column:
            ax.axvline(g - 0.5, color="0.6", lw=0.8)
    ax.set_xticks(np.arange(len(conditions)), labels, fontsize=7)
    ax.set_xlim(-0.5, len(conditions) - 0.5)
    return _rate_figure(fig, ax, "Id.Rate (%), all vertebrae", title, len(methods), width, legend_w, bottom=0.2)
