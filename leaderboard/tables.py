"""The leaderboard's tables, built from per-method summaries: the headline first, then the full statistics, how
each method fails, the numbers reported in the literature and the efficiency block.

Every builder returns a ``render.Table``; each output format renders the same tables.
"""

from __future__ import annotations

import math

import numpy as np

from spinebench.leaderboard.evaluate import MethodSummary
from spinebench.leaderboard.failures import CLASS_TITLES, CLASSES, FailureSummary
from spinebench.leaderboard.metrics import REGION_COLUMNS
from spinebench.leaderboard.published import ReportedRow
from spinebench.leaderboard.render import DASH, Cell, Table, Value, fmt, fmt_p, fmt_reported

REGION_TITLES = {"all": "All", "cervical": "Cervical", "thoracic": "Thoracic", "lumbar": "Lumbar", "sacral": "Sacral"}
# (statistic, higher is better, scale, digits) of the headline, per region, in column order.
HEADLINE_STATS = (("id_rate", True, 100.0, 1), ("mean_mm", False, 1.0, 1))
HEADLINE_TITLES = {"id_rate": "Id.Rate (%)", "mean_mm": "Mean (mm)"}
CLASS_SHORT = {"identified": "Ident.", "shift_1": "±1", "shift_more": ">1", "ambiguous": "Ambig.",
               "mislocalised": "Misloc.", "missed": "Missed"}


def shown_regions(summaries: list[MethodSummary]) -> list[int]:
    """Region indices with annotated vertebrae for at least one method ("all" always)."""
    return [r for r, _ in enumerate(REGION_COLUMNS)
            if r == 0 or any(s.point["n_annotated"][r] > 0 for s in summaries)]


def best_mask(values: list[float], higher_is_better: bool, scale: float = 1.0, digits: int = 1) -> list[bool]:
    """Which entries are the best of the column, compared as printed (ties at the printed precision all win)."""
    printed = np.array([round(v * scale, digits) if math.isfinite(v) else math.nan for v in values])
    if not np.isfinite(printed).any():
        return [False] * len(values)
    best = np.nanmax(printed) if higher_is_better else np.nanmin(printed)
    return [bool(p == best) for p in printed]


def value(point: float, lo: float = math.nan, hi: float = math.nan, *, scale: float = 1.0, digits: int = 1,
          best: bool = False) -> Value:
    """A ``Value`` cell: ``point`` printed with ``digits``, its interval ``lo–hi`` when both are finite."""
    if point is None or not math.isfinite(point):
        return Value(DASH)
    ci = f"{fmt(lo, scale, digits)}–{fmt(hi, scale, digits)}" if math.isfinite(lo) and math.isfinite(hi) else ""
    return Value(fmt(point, scale, digits), ci, best, float(point) * scale)


def headline_table(dataset: str, summaries: list[MethodSummary]) -> Table:
    """One row per method: Id.Rate and mean error per region, the best of each column marked, intervals beside."""
    regions = shown_regions(summaries)
    columns = ["Method", "Scans"]
    cells: list[list[Cell]] = [[s.method, str(s.n_scans)] for s in summaries]
    for r in regions:
        for stat, higher, scale, digits in HEADLINE_STATS:
            columns.append(f"{REGION_TITLES[REGION_COLUMNS[r]]} {HEADLINE_TITLES[stat]}")
            marks = best_mask([s.point[stat][r] for s in summaries], higher, scale, digits)
            for row, s, mark in zip(cells, summaries, marks):
                row.append(value(s.point[stat][r], s.lo[stat][r], s.hi[stat][r], scale=scale, digits=digits,
                                 best=mark))
    note = ("Bold: the best of the column. Small type: the 95 % patient-level bootstrap interval. Standard "
            "deviation, median, misses, false positives, paired tests and failure classes follow below.")
    return Table(f"{dataset}: identification rate and mean localization error per region", columns, cells, [note],
                 table_id=f"headline-{dataset}", sortable=True)


def _count_digits(values: list[float]) -> int:
    """Counts print as integers (micro average); per-scan means (macro) with one decimal."""
    finite = [v for v in values if math.isfinite(v)]
    return 0 if all(float(v).is_integer() for v in finite) else 1


def full_table(dataset: str, summaries: list[MethodSummary]) -> Table:
    """Every statistic with its interval, one row per (method, region), and the paired test against the best."""
    regions = shown_regions(summaries)
    columns = ["Method", "Region", "Annotated", "Mean (mm)", "Std (mm)", "Median (mm)", "Id.Rate (%)", "Misses",
               "False positives", "p Mean", "p Id.Rate", "mAP (%)"]
    stats = (("mean_mm", 1.0), ("std_mm", 1.0), ("median_mm", 1.0), ("id_rate", 100.0), ("misses", 1.0),
             ("false_positives", 1.0))
    rows: list[list[Cell]] = []
    for s in summaries:
        for r in regions:
            row: list[Cell] = [s.method, REGION_TITLES[REGION_COLUMNS[r]],
                               value(s.point["n_annotated"][r], digits=_count_digits([s.point["n_annotated"][r]]))]
            for stat, scale in stats:
                digits = _count_digits([s.point[stat][r]]) if stat in ("misses", "false_positives") else 1
                row.append(value(s.point[stat][r], s.lo[stat][r], s.hi[stat][r], scale=scale, digits=digits))
            for stat, pick in (("mean_mm", np.nanargmin), ("id_rate", np.nanargmax)):
                values = np.array([x.point[stat][r] for x in summaries])
                is_best = np.isfinite(values).any() and summaries[int(pick(values))] is s
                p = s.p_vs_best.get(stat, np.full(len(REGION_COLUMNS), np.nan))[r]
                row.append("best" if is_best else fmt_p(p))
            row.append(value(s.mean_ap, scale=100.0) if r == 0 else Value(DASH))
            rows.append(row)
    notes = ["p: paired patient-level bootstrap test of the method against the best one of the column (region), "
             "Holm-corrected over the methods; 'best' marks that method itself. mAP: presence scores, all labels."]
    return Table(f"{dataset}: all statistics per region", columns, rows, notes, table_id=f"full-{dataset}")


def failure_table(dataset: str, failures: list[FailureSummary], regions: list[int]) -> Table:
    """The share of annotated vertebrae in each failure class, per method and region."""
    columns = ["Method", "Region", "Annotated"] + [f"{CLASS_TITLES[c]} (%)" for c in CLASSES]
    rows: list[list[Cell]] = []
    for f in failures:
        for r in regions:
            if not f.n_annotated[r] > 0:
                continue
            rows.append([f.method, REGION_TITLES[REGION_COLUMNS[r]], str(int(f.n_annotated[r]))]
                        + [value(f.shares[c][r], scale=100.0) for c in CLASSES])
    notes = ["Of the annotated vertebrae: identified; ±1 level: on a neighbour's true centroid (within 20 mm of "
             "it, and at least twice as close to it as to its own); shift > 1: the same with a level two or more "
             "away; ambiguous: within 20 mm of another level's centroid, but between levels (nearer to it than to "
             "its own by less than a factor of two); mislocalised: no annotated centroid within 20 mm; missed: not "
             "predicted. Exact rules: leaderboard/failures.py."]
    return Table(f"{dataset}: how each method fails, per region", columns, rows, notes,
                 table_id=f"failures-{dataset}", sortable=True)


def scan_failure_table(dataset: str, failures: list[FailureSummary]) -> Table:
    """Per-scan failures: scans labelled entirely right, whole-spine shifts, false positives, T13/L6."""
    transitional = any(f.has_transitional for f in failures)
    columns = ["Method", "Scans", "Entirely right", "Whole-spine shift", "of which by one level",
               "False positives per scan"]
    if transitional:
        columns += ["T13/L6 annotated", "T13/L6 missed", "T13/L6 invented"]
    rows: list[list[Cell]] = []
    for f in failures:
        row: list[Cell] = [f.method, str(f.n_scans), str(f.all_right), str(f.whole_shift), str(f.whole_shift_1),
                           value(f.false_positives_per_scan, digits=2)]
        if transitional:
            row += [str(f.transitional_annotated), str(f.transitional_missed), str(f.transitional_invented)]
        rows.append(row)
    notes = ["Entirely right: every annotated vertebra identified and no false positive. Whole-spine shift: at "
             "least two predictions sit within 20 mm of annotated centroids, none identified, all of them the same "
             "number of levels away from their own. False positive: predicted present, not annotated."]
    if transitional:
        notes.append("T13/L6 missed: annotated but not predicted; invented: predicted where none is annotated.")
    return Table(f"{dataset}: failures per scan", columns, rows, notes, table_id=f"scan-failures-{dataset}")


def reported_table(dataset: str, summaries: list[MethodSummary], reported: list[ReportedRow]) -> Table:
    """Published numbers on ``dataset``, in the headline's columns, every row labelled "reported"."""
    regions = shown_regions(summaries)
    columns = ["Method", "Scans"]
    for r in regions:
        columns += [f"{REGION_TITLES[REGION_COLUMNS[r]]} {HEADLINE_TITLES[stat]}" for stat, *_ in HEADLINE_STATS]
    rows: list[list[Cell]] = []
    for rep in reported:
        row: list[Cell] = [rep.label, DASH]
        for r in regions:
            row += [fmt_reported(rep.values.get((REGION_COLUMNS[r], stat), math.nan)) for stat, *_ in HEADLINE_STATS]
        rows.append(row)
    note = ("Numbers reported in the cited papers on their own splits of this dataset (as published, not "
            "re-measured here; no intervals). Only values confirmed by a second source are shown by default; "
            "the CSV holds their standard deviations and mAP too.")
    return Table(f"{dataset}: reported in the literature", columns, rows, [note], table_id=f"reported-{dataset}")


def efficiency_table(dataset: str, rows_in: list[dict[str, object]]) -> Table:
    columns = ["Method", "Seconds per case", "Parameters (M)", "Peak memory, training (MiB)",
               "Peak memory, inference (MiB)"]
    rows: list[list[Cell]] = [
        [str(r["method"]), fmt(r["seconds_per_case"], digits=2), fmt(r["params"], 1e-6, 2),
         fmt(r["train_peak_memory_mb"], digits=0), fmt(r["peak_memory_mb"], digits=0)] for r in rows_in]
    note = ("Peak memory of the cell's own training and of its test predictions, measured separately (CPU: peak "
            "resident memory of the process during that phase; GPU: peak allocated CUDA memory). A cell evaluated on "
            "another cell's training shows that training's figure.")
    return Table(f"{dataset}: efficiency", columns, rows, [note], table_id=f"efficiency-{dataset}")


def failure_overview_table(dataset: str, failures: list[FailureSummary]) -> Table:
    """One row per method over all vertebrae: the class shares and the per-scan counts (the terminal's summary)."""
    columns = ["Method"] + [f"{CLASS_SHORT[c]} %" for c in CLASSES] + ["Scans right", "Shifted scans", "FP/scan"]
    rows: list[list[Cell]] = [
        [f.method] + [value(f.shares[c][0], scale=100.0) for c in CLASSES]
        + [f"{f.all_right}/{f.n_scans}", str(f.whole_shift), value(f.false_positives_per_scan, digits=2)]
        for f in failures]
    return Table(f"{dataset}: how each method fails (all vertebrae)", columns, rows, [],
                 table_id=f"failure-overview-{dataset}")
