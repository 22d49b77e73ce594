"""Table model, escaping and the Markdown / LaTeX / HTML table renderers, plus the leaderboard's tables.

Cells hold plain text; each renderer escapes every cell, so a method name from a plugin can never inject markup.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import numpy as np

from leaderboard.evaluate import ConditionRow, MethodSummary
from leaderboard.metrics import REGION_COLUMNS
from leaderboard.published import ReportedRow

REGION_TITLES = {"all": "All", "cervical": "Cervical", "thoracic": "Thoracic", "lumbar": "Lumbar", "sacral": "Sacral"}
DASH = "–"
_MD_SPECIAL = set("\\`*_{}[]<>#!|&~$%^+")
_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
          ">": r"\textgreater{}"}


def escape_markdown(text: str) -> str:
    """Backslash-escape Markdown punctuation (CommonMark escapes any ASCII punctuation); newlines become spaces."""
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in str(text).replace("\n", " "))


def escape_latex(text: str) -> str:
    return "".join(_LATEX.get(c, c) for c in str(text).replace("\n", " "))


def escape_html(text: str) -> str:
    return html.escape(str(text), quote=True)


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    table_id: str = "table"


def to_markdown(table: Table) -> str:
    lines = [f"### {escape_markdown(table.title)}", ""]
    lines.append("| " + " | ".join(escape_markdown(c) for c in table.columns) + " |")
    lines.append("|" + "|".join("---" for _ in table.columns) + "|")
    lines += ["| " + " | ".join(escape_markdown(c) for c in row) + " |" for row in table.rows]
    lines += [""] + [escape_markdown(n) for n in table.notes]
    return "\n".join(lines).rstrip("\n") + "\n"


def to_latex(table: Table) -> str:
    spec = "l" * len(table.columns)
    lines = [r"\begin{table}[ht]", r"\centering", r"\scriptsize",
             rf"\caption{{{escape_latex(table.title)}}}", rf"\begin{{tabular}}{{{spec}}}", r"\hline",
             " & ".join(escape_latex(c) for c in table.columns) + r" \\", r"\hline"]
    lines += [" & ".join(escape_latex(c) for c in row) + r" \\" for row in table.rows]
    lines += [r"\hline", r"\end{tabular}"]
    lines += [rf"\par\smallskip {escape_latex(n)}" for n in table.notes]
    lines += [r"\end{table}", ""]
    return "\n".join(lines)


def to_html(table: Table) -> str:
    head = "".join(f"<th>{escape_html(c)}</th>" for c in table.columns)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{escape_html(c)}</td>" for c in row) + "</tr>" for row in table.rows
    )
    notes = "".join(f'<p class="note">{escape_html(n)}</p>' for n in table.notes)
    return (f'<h3>{escape_html(table.title)}</h3>\n<table id="{escape_html(table.table_id)}">\n'
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>\n{notes}\n")


def fmt(value: float, scale: float = 1.0, digits: int = 1) -> str:
    return DASH if value is None or not math.isfinite(value) else f"{value * scale:.{digits}f}"


def fmt_ci(point: float, lo: float, hi: float, scale: float = 1.0, digits: int = 1) -> str:
    if not math.isfinite(point):
        return DASH
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return fmt(point, scale, digits)
    return f"{fmt(point, scale, digits)} [{fmt(lo, scale, digits)}, {fmt(hi, scale, digits)}]"


def fmt_reported(value: float) -> str:
    """A published number as printed in the paper (no rounding)."""
    return DASH if not math.isfinite(value) else f"{value:g}"


def fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def shown_regions(summaries: list[MethodSummary]) -> list[int]:
    """Region indices with annotated vertebrae for at least one method ("all" always)."""
    return [r for r, _ in enumerate(REGION_COLUMNS)
            if r == 0 or any(s.point["n_annotated"][r] > 0 for s in summaries)]


def _columns(regions: list[int]) -> list[str]:
    columns = ["Method", "Scans"]
    for r in regions:
        t = REGION_TITLES[REGION_COLUMNS[r]]
        columns += [f"{t} Mean (mm)", f"{t} Std (mm)", f"{t} Id.Rate (%)"]
    return columns + ["mAP (%)"]


def main_table(dataset: str, summaries: list[MethodSummary], notes: list[str]) -> Table:
    regions = shown_regions(summaries)
    columns = _columns(regions)
    rows = []
    for s in summaries:
        row = [s.method, str(s.n_scans)]
        for r in regions:
            row += [fmt_ci(s.point["mean_mm"][r], s.lo["mean_mm"][r], s.hi["mean_mm"][r]),
                    fmt_ci(s.point["std_mm"][r], s.lo["std_mm"][r], s.hi["std_mm"][r]),
                    fmt_ci(s.point["id_rate"][r], s.lo["id_rate"][r], s.hi["id_rate"][r], scale=100.0)]
        row.append(fmt(s.mean_ap, 100.0))
        rows.append(row)
    return Table(f"{dataset}: localization error and identification rate per region", columns, rows, notes,
                 table_id=f"main-{dataset}")


def reported_table(dataset: str, summaries: list[MethodSummary], reported: list[ReportedRow]) -> Table:
    """Published numbers on ``dataset``, in the main table's columns, every row labelled "reported"."""
    regions = shown_regions(summaries)
    rows = []
    for rep in reported:
        row = [rep.label, DASH]
        for r in regions:
            region = REGION_COLUMNS[r]
            row += [fmt_reported(rep.values.get((region, m), math.nan)) for m in ("mean_mm", "std_mm", "id_rate")]
        rows.append(row + [fmt_reported(rep.values.get(("all", "map"), math.nan))])
    note = ("Numbers reported in the cited papers on their own splits of this dataset (as published, not "
            "re-measured here; no intervals). Only values confirmed by a second source are shown by default.")
    return Table(f"{dataset}: reported in the literature", _columns(regions), rows, [note],
                 table_id=f"reported-{dataset}")


def tests_table(dataset: str, summaries: list[MethodSummary]) -> Table:
    regions = shown_regions(summaries)
    columns = ["Method"]
    for r in regions:
        t = REGION_TITLES[REGION_COLUMNS[r]]
        columns += [f"{t} p Mean", f"{t} p Id.Rate"]
    rows = []
    for s in summaries:
        row = [s.method]
        for r in regions:
            for stat, best in (("mean_mm", np.nanargmin), ("id_rate", np.nanargmax)):
                values = np.array([x.point[stat][r] for x in summaries])
                is_best = np.isfinite(values).any() and summaries[int(best(values))] is s
                row.append("best" if is_best else fmt_p(s.p_vs_best.get(stat, np.full(len(REGION_COLUMNS), np.nan))[r]))
        rows.append(row)
    note = "Paired patient-level bootstrap test of each method against the best one of the column, Holm-corrected."
    return Table(f"{dataset}: paired tests against the best method", columns, rows, [note],
                 table_id=f"tests-{dataset}")


def condition_table(dataset: str, conditions: list[ConditionRow]) -> Table:
    columns = ["Condition", "Value", "Method", "Scans", "Mean (mm)", "Id.Rate (%)"]
    rows = []
    for c in conditions:
        for s in c.summaries:
            rows.append([c.column.removeprefix("meta_"), c.value, s.method, str(s.n_scans),
                         fmt_ci(s.point["mean_mm"][0], s.lo["mean_mm"][0], s.hi["mean_mm"][0]),
                         fmt_ci(s.point["id_rate"][0], s.lo["id_rate"][0], s.hi["id_rate"][0], scale=100.0)])
    return Table(f"{dataset}: breakdown by case condition (all vertebrae)", columns, rows, [],
                 table_id=f"conditions-{dataset}")


def efficiency_table(dataset: str, rows_in: list[dict[str, object]]) -> Table:
    columns = ["Method", "Seconds per case", "Parameters (M)", "Peak memory (MiB)"]
    rows = [[str(r["method"]), fmt(r["seconds_per_case"], digits=2), fmt(r["params"], 1e-6, 2),
             fmt(r["peak_memory_mb"], digits=0)] for r in rows_in]
    return Table(f"{dataset}: efficiency", columns, rows, [], table_id=f"efficiency-{dataset}")
