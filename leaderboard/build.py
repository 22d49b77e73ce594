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

from leaderboard import evaluate as E
from leaderboard.html import Figure, Section, page_html
from leaderboard.metrics import REGION_COLUMNS
from leaderboard.files import write_bytes_atomic, write_text_atomic
from leaderboard.plots import id_rate_per_region_png, per_vertebra_error_png
from leaderboard.projections import find_projections, projection_png
from leaderboard.published import reported_rows
from leaderboard.render import (
    condition_table, efficiency_table, escape_latex, escape_markdown, main_table, reported_table, shown_regions,
    tests_table,
    to_latex, to_markdown,
)
from leaderboard.schema import Records, read_records, resolve_inputs, validate

TITLE = "spinebench leaderboard"
CSV_STATS = ("mean_mm", "std_mm", "median_mm", "id_rate", "misses", "false_positives")
CSV_COLUMNS = (["dataset", "kind", "method", "source", "region", "n_scans", "n_patients"]
               + [f"{s}{x}" for s in CSV_STATS for x in ("", "_lo", "_hi")]
               + ["map", "p_mean_mm_vs_best", "p_id_rate_vs_best"])


@dataclass(frozen=True)
class LeaderboardOutputs:
    markdown: Path
    csv: Path
    latex: Path
    html: Path
    plots: tuple[Path, ...]
    markdown_text: str


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "dataset"


def _csv_number(value: float) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.6g}"


def _csv_rows(dataset: str, summaries: list[E.MethodSummary], reported) -> list[list[str]]:
    rows = []
    for s in summaries:
        for r, region in enumerate(REGION_COLUMNS):
            row = [dataset, "measured", s.method, "", region, str(s.n_scans), str(s.n_patients)]
            for stat in CSV_STATS:
                row += [_csv_number(v[stat][r]) for v in (s.point, s.lo, s.hi)]
            row += [_csv_number(s.mean_ap if r == 0 else math.nan)]
            row += [_csv_number(s.p_vs_best.get(k, [math.nan] * len(REGION_COLUMNS))[r])
                    for k in ("mean_mm", "id_rate")]
            rows.append(row)
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
            rows.append(row)
    return rows


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
    for dataset, all_scans in E.group_scans(records).items():
        summaries = E.summarize_dataset(all_scans, conv)
        reported = reported_rows(dataset, include_unconfirmed=include_unconfirmed)
        tables = [main_table(dataset, summaries, [])]
        if reported:
            tables.append(reported_table(dataset, summaries, reported))
        tables.append(tests_table(dataset, summaries))
        conditions = E.condition_breakdown(all_scans, conv)
        if conditions:
            tables.append(condition_table(dataset, conditions))
        eff = E.efficiency(all_scans)
        if eff:
            tables.append(efficiency_table(dataset, eff))
        writer.writerows(_csv_rows(dataset, summaries, reported))
        slug = _slug(dataset)
        figures = [
            Figure(f"{dataset}: mean localization error per vertebra (95 % CI)",
                   per_vertebra_error_png(summaries, f"{dataset}: mean error per vertebra"),
                   f"per-vertebra-{slug}"),
            Figure(f"{dataset}: identification rate per region (95 % CI)",
                   id_rate_per_region_png(summaries, shown_regions(summaries), f"{dataset}: Id.Rate per region"),
                   f"id-rate-{slug}"),
        ]
        md_parts.append(f"## {escape_markdown(dataset)}\n")
        md_parts += [to_markdown(t) for t in tables]
        for fig in figures:
            path = write_bytes_atomic(out / "plots" / f"{fig.figure_id}.png", fig.png)
            plot_paths.append(path)
            md_parts.append(f"![{escape_markdown(fig.caption)}](plots/{path.name})\n")
        tex_parts += [to_latex(t) for t in tables]
        sections.append(Section(dataset, tables, figures))
    found = find_projections([Path(p) for p in projections] if projections is not None
                             else sorted({f.parent for f in files}))
    if found:
        figures = []
        for i, proj in enumerate(found):
            caption, png = projection_png(proj)
            figures.append(Figure(f"{caption} (true: green circles, predicted: red crosses)", png, f"projection-{i}"))
        md_parts.append("## Case projections\n")
        for fig in figures:
            path = write_bytes_atomic(out / "plots" / f"{fig.figure_id}.png", fig.png)
            plot_paths.append(path)
            md_parts.append(f"![{escape_markdown(fig.caption)}](plots/{path.name})\n")
        sections.append(Section("Case projections", [], figures))
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
    )
    return paths
