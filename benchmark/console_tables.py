"""The leaderboard in the terminal: after a run (``build_leaderboard``), ``spinebench leaderboard`` and
``spinebench evaluate`` print its headline tables, each method's failure summary and the efficiency block with rich
(no torch: ``spinebench leaderboard`` stays fast)."""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.markup import escape
from rich.table import Table as RichTable

from spinebench.benchmark.layout import RECORDS_FILENAME
from spinebench.leaderboard.build import build_leaderboard as build
from spinebench.leaderboard.render import Table, Value
from spinebench.leaderboard.tables import HEADLINE_STATS, HEADLINE_TITLES, failure_overview_table


def build_leaderboard(out_dir: Path, console=None) -> Path | None:
    """Build ``<out>/leaderboard`` from ``records.csv`` and print its headline, failure summary and efficiency."""
    records = Path(out_dir) / RECORDS_FILENAME
    if not records.is_file():
        return None
    board_dir = Path(out_dir) / "leaderboard"
    outputs = build([records], board_dir, projections=[Path(out_dir) / "projections"])
    if console is not None:
        print_leaderboard(outputs, console)
    return board_dir


def print_leaderboard(outputs, console) -> None:
    """The leaderboard's headline tables (best of each column in bold), each method's failure summary and the
    efficiency block, in the terminal (rich); the files hold the intervals and everything else."""
    for table in outputs.headlines:
        console.print(rich_table(paired_headline(table)))
    for dataset, failures in outputs.failures:
        console.print(rich_table(failure_overview_table(dataset, list(failures))))
    for table in outputs.efficiency:
        console.print(rich_table(table))
    console.print(f"bold: best of the column; intervals, all statistics, failure classes per region and plots: "
                  f"{outputs.markdown} (+ .html, .csv, .tex)", markup=False, highlight=False)


def paired_headline(table):
    """The headline with each region's Id.Rate and mean error in one column ("84.7 / 7.3"), to fit a terminal;
    each half keeps its own best mark."""
    width = len(HEADLINE_STATS)
    suffix = " " + HEADLINE_TITLES[HEADLINE_STATS[0][0]]
    columns = table.columns[:2] + [c.removesuffix(suffix) for c in table.columns[2::width]]
    rows = [row[:2] + [tuple(row[i:i + width]) for i in range(2, len(row), width)] for row in table.rows]
    units = " / ".join(HEADLINE_TITLES[stat] for stat, *_ in HEADLINE_STATS)
    return Table(f"{table.title}: {units}", columns, rows, table.notes, table.table_id)


def rich_table(table):
    """A ``leaderboard.render.Table`` as a rich table: values without their intervals, the best in bold; a cell
    holding several values (``paired_headline``) prints them joined by " / "."""
    def text(cell) -> str:
        if isinstance(cell, tuple):
            return " / ".join(text(c) for c in cell)
        if isinstance(cell, Value):
            return f"[bold]{escape(cell.text)}[/bold]" if cell.best else escape(cell.text)
        return escape(cell)

    out = RichTable(title=escape(table.title), box=box.SIMPLE_HEAD)
    for i, column in enumerate(table.columns):
        out.add_column(escape(column), justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row in table.rows:
        out.add_row(*(text(c) for c in row))
    return out
