"""Build the whole leaderboard from records files: tables (Markdown, CSV, LaTeX), plots and one HTML page.

Outputs in ``out_dir`` (the same inputs give byte-identical files):
``leaderboard.md``, ``leaderboard.csv``, ``leaderboard.tex``, ``leaderboard.html`` and ``plots/*.png``.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from spinebench.datamodules.atomic import write_bytes_atomic, write_text_atomic
from spinebench.leaderboard import evaluate as E
from spinebench.leaderboard.curves import CURVES_FILE
from spinebench.leaderboard.failures import CLASSES, FailureSummary
from spinebench.leaderboard.html import Figure, Section, page_html
from spinebench.leaderboard.metrics import REGION_COLUMNS
from spinebench.leaderboard.plots import id_rate_by_condition_png, id_rate_per_region_png, per_vertebra_error_png
from spinebench.leaderboard.projections import find_projections, pick_by_result, projection_identity, projection_png
from spinebench.leaderboard.published import reported_rows
from spinebench.leaderboard.render import Table, escape_latex, escape_markdown, fmt, to_latex, to_markdown
from spinebench.leaderboard.schema import Records, read_records, resolve_inputs, validate
from spinebench.leaderboard.tables import (
    efficiency_table, failure_table, full_table, headline_table, reported_table, scan_failure_table, shown_regions,
)  # fmt: skip

TITLE = "spinebench leaderboard"
CSV_STATS = ("mean_mm", "std_mm", "median_mm", "id_rate", "misses", "false_positives")
SCAN_FAILURE_COLUMNS = ("scans_all_right", "scans_whole_shift", "scans_whole_shift_1", "false_positives_per_scan",
                        "transitional_annotated", "transitional_missed", "transitional_invented")
CSV_COLUMNS = (["dataset", "kind", "method", "source", "region", "n_scans", "n_patients"]
               + [f"{s}{x}" for s in CSV_STATS for x in ("", "_lo", "_hi")]
               + ["map", "p_mean_mm_vs_best", "p_id_rate_vs_best"]
               + [f"share_{c}" for c in CLASSES] + list(SCAN_FAILURE_COLUMNS) + ["condition", "condition_value"])


@dataclass(frozen=True)
class LeaderboardOutputs:
    markdown: Path
    csv: Path
    latex: Path
    html: Path
    plots: tuple[Path, ...]
    markdown_text: str
    headlines: tuple[Table, ...] = ()  # per dataset: the headline table (what a terminal shows)
    failures: tuple[tuple[str, tuple[FailureSummary, ...]], ...] = ()  # per dataset: each method's failure summary
    efficiency: tuple[Table, ...] = ()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "dataset"


def _csv_number(value: float) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.6g}"


def _summary_cells(s: E.MethodSummary, r: int) -> list[str]:
    row = []
    for stat in CSV_STATS:
        row += [_csv_number(v[stat][r]) for v in (s.point, s.lo, s.hi)]
    row += [_csv_number(s.mean_ap if r == 0 else math.nan)]
    row += [_csv_number(s.p_vs_best.get(k, [math.nan] * len(REGION_COLUMNS))[r]) for k in ("mean_mm", "id_rate")]
    return row


def _failure_cells(f: FailureSummary | None, r: int) -> list[str]:
    if f is None:
        return [""] * (len(CLASSES) + len(SCAN_FAILURE_COLUMNS))
    shares = [_csv_number(f.shares[c][r]) for c in CLASSES]
    if r != 0:
        return shares + [""] * len(SCAN_FAILURE_COLUMNS)
    transitional = [str(v) if f.has_transitional else "" for v in
                    (f.transitional_annotated, f.transitional_missed, f.transitional_invented)]
    return shares + [str(f.all_right), str(f.whole_shift), str(f.whole_shift_1),
                     _csv_number(f.false_positives_per_scan)] + transitional


def _csv_rows(dataset: str, summaries: list[E.MethodSummary], reported, failures: list[FailureSummary],
              conditions: list[E.ConditionRow]) -> list[list[str]]:
    rows = []
    for s, f in zip(summaries, failures):
        for r, region in enumerate(REGION_COLUMNS):
            rows.append([dataset, "measured", s.method, "", region, str(s.n_scans), str(s.n_patients)]
                        + _summary_cells(s, r) + _failure_cells(f, r) + ["", ""])
    for c in conditions:  # the breakdown by case condition (all vertebrae; the HTML page shows it as a plot)
        for s in c.summaries:
            rows.append([dataset, "condition", s.method, "", "all", str(s.n_scans), str(s.n_patients)]
                        + _summary_cells(s, 0) + _failure_cells(None, 0) + [c.column.removeprefix("meta_"), c.value])
    for rep in reported:  # reported id_rate / map are in %; the CSV stores fractions like the measured rows
        for region in REGION_COLUMNS:
            vals = {m: rep.values.get((region, m), math.nan) for m in ("mean_mm", "std_mm", "id_rate", "map")}
            if all(math.isnan(v) for v in vals.values()):
                continue
            row = [dataset, "reported", rep.method, f"{rep.citation}; {rep.set}", region, "", ""]
            for stat in CSV_STATS:
                v = vals.get(stat, math.nan)
                row += [_csv_number(v / 100.0 if stat == "id_rate" else v), "", ""]
            row += [_csv_number(vals["map"] / 100.0), "", ""]
            rows.append(row + _failure_cells(None, 1) + ["", ""])
    return rows


def _projection_figures(files: list[Path], results: dict[str, dict[str, tuple[float, float]]],
                        order: list[str]) -> list[Figure]:
    """Per method (in table order): its best, median and worst case among those with a projection file, ranked by
    the leaderboard's own per-case results; a method without records shows its first files by path."""
    by_method: dict[str, dict[str, Path]] = {}
    for path in files:
        method, case = projection_identity(path)
        by_method.setdefault(method, {}).setdefault(case or path.stem, path)
    figures = []
    for method in sorted(by_method, key=lambda m: (order.index(m) if m in order else len(order), m)):
        cases = by_method[method]
        known = {c: v for c, v in results.get(method, {}).items() if c in cases}
        if known:
            picks = [(label, case, known[case]) for label, case in pick_by_result(known)]
        else:
            picks = [("", case, (math.nan, math.nan)) for case in sorted(cases, key=lambda c: str(cases[c]))[:3]]
        for label, case, (rate, error) in picks:
            result = f" (Id.Rate {fmt(rate, 100.0)} %, mean error {fmt(error)} mm)" if label else ""
            caption = f"{method}: {label + ' case, ' if label else ''}{case}{result}"
            _, png = projection_png(cases[case], caption)
            figures.append(Figure(f"{caption}; true: green circles, predicted: red crosses", png,
                                  f"projection-{_slug(method)}-{_slug(label or case)}"))
    return figures


def build_leaderboard(
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    conventions: E.Conventions | None = None,
    *,
    include_unconfirmed: bool = False,
    projections: list[str | os.PathLike] | None = None,
) -> LeaderboardOutputs:
    """Read the records (files or run folders), recompute every metric, and write all outputs to ``out_dir``.

    ``projections``: folders or ``.npz`` files of case projections; default: every ``projections`` folder under
    the folders holding the records files.
    """
    conv = conventions or E.Conventions()
    files = resolve_inputs(inputs)
    parts = [read_records(f) for f in files]
    records = Records.concatenate(parts)
    validate(records, "the combined records files", line_numbers=False)
    out = Path(out_dir)
    intro = [conv.describe()]
    md_parts = [f"# {escape_markdown(TITLE)}", "", escape_markdown(conv.describe()), ""]
    tex_parts = [f"% {TITLE}", rf"% {escape_latex(conv.describe())}", ""]
    csv_buf = io.StringIO()
    writer = csv.writer(csv_buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    sections, plot_paths = [], []
    headlines, failure_sets, eff_tables = [], [], []
    case_results: dict[str, dict[str, tuple[float, float]]] = {}
    order: list[str] = []

    def add_figures(figures: list[Figure]) -> None:
        for fig in figures:
            path = write_bytes_atomic(out / "plots" / f"{fig.figure_id}.png", fig.png)
            plot_paths.append(path)
            md_parts.append(f"![{escape_markdown(fig.caption)}](plots/{path.name})\n")

    for dataset, all_scans in E.group_scans(records).items():
        summaries = E.summarize_dataset(all_scans, conv)
        failures = E.failure_summaries(all_scans, conv)
        for scans in all_scans:
            for case, result in E.case_results(scans, conv).items():
                case_results.setdefault(scans.method, {}).setdefault(case, result)
            order += [scans.method] if scans.method not in order else []
        reported = reported_rows(dataset, include_unconfirmed=include_unconfirmed)
        headline = headline_table(dataset, summaries)
        tables = [headline] + ([reported_table(dataset, summaries, reported)] if reported else [])
        tables += [full_table(dataset, summaries), failure_table(dataset, failures, shown_regions(summaries)),
                   scan_failure_table(dataset, failures)]
        eff = E.efficiency(all_scans)
        if eff:
            tables.append(efficiency_table(dataset, eff))
            eff_tables.append(tables[-1])
        headlines.append(headline)
        failure_sets.append((dataset, tuple(failures)))
        conditions = E.condition_breakdown(all_scans, conv)
        writer.writerows(_csv_rows(dataset, summaries, reported, failures, conditions))
        slug = _slug(dataset)
        figures = [
            Figure(f"{dataset}: identification rate per region (95 % CI)",
                   id_rate_per_region_png(summaries, shown_regions(summaries), f"{dataset}: Id.Rate per region"),
                   f"id-rate-{slug}"),
            Figure(f"{dataset}: mean localization error per vertebra (95 % CI), log scale",
                   per_vertebra_error_png(summaries, f"{dataset}: mean error per vertebra"),
                   f"per-vertebra-{slug}"),
        ]
        if conditions:
            figures.append(Figure(
                f"{dataset}: identification rate by case condition (95 % CI; scans in brackets; table in the CSV)",
                id_rate_by_condition_png(conditions, [s.method for s in summaries],
                                         f"{dataset}: Id.Rate by case condition"),
                f"conditions-{slug}"))
        md_parts.append(f"## {escape_markdown(dataset)}\n")
        md_parts.append(to_markdown(tables[0]))
        add_figures(figures[:1])
        md_parts += [to_markdown(t) for t in tables[1:]]
        add_figures(figures[1:])
        tex_parts += [to_latex(t) for t in tables]
        sections.append(Section(dataset, [tables[0], figures[0], *tables[1:], *figures[1:]]))
    found = find_projections([Path(p) for p in projections] if projections is not None
                             else sorted({f.parent for f in files}))
    if found:
        figures = _projection_figures(found, case_results, order)
        md_parts.append("## Case projections\n")
        add_figures(figures)
        sections.append(Section("Case projections: each method's best, median and worst test case", figures))
    curves = sorted({f.parent / CURVES_FILE for f in files if (f.parent / CURVES_FILE).is_file()})
    if curves:  # a run folder's learning curves (leaderboard.curves), copied beside the other plots
        figures = [Figure(f"learning curves of run {c.parent.name}: training loss and validation Id.Rate per "
                          "training", c.read_bytes(), f"curves-{_slug(c.parent.name)}") for c in curves]
        md_parts.append("## Learning curves\n")
        add_figures(figures)
        sections.append(Section("Learning curves", figures))
    # Figures of an earlier build into the same folder (e.g. a dataset no longer in the inputs) would mislead.
    for stale in sorted(set((out / "plots").glob("*.png")) - set(plot_paths)):
        stale.unlink()
    markdown = "\n".join(md_parts).rstrip("\n") + "\n"
    paths = LeaderboardOutputs(
        markdown=write_text_atomic(out / "leaderboard.md", markdown),
        csv=write_text_atomic(out / "leaderboard.csv", csv_buf.getvalue()),
        latex=write_text_atomic(out / "leaderboard.tex", "\n".join(tex_parts)),
        html=write_text_atomic(out / "leaderboard.html", page_html(TITLE, intro, sections)),
        plots=tuple(plot_paths),
        markdown_text=markdown,
        headlines=tuple(headlines),
        failures=tuple(failure_sets),
        efficiency=tuple(eff_tables),
    )
    return paths
