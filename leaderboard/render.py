"""Table model, escaping and the Markdown / LaTeX / HTML table renderers.

A cell is plain text or a ``Value``: a number as printed, its interval (shown in small type beside it), whether
it is the best of its column, and the number to sort by. Each renderer escapes every piece of text, so a method
name from a plugin can never inject markup.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class Value:
    """A table cell holding a statistic: ``text`` as printed, its interval ``ci`` (printed small beside it, empty
    for none), ``best`` (the best of its column: bold), ``sort`` (the number the HTML page sorts by; NaN last)."""

    text: str
    ci: str = ""
    best: bool = False
    sort: float = math.nan

    def __str__(self) -> str:
        return f"{self.text} [{self.ci}]" if self.ci else self.text


Cell = str | Value


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)
    table_id: str = "table"
    sortable: bool = False  # the HTML page sorts its rows by a click on a column heading


def _md_cell(cell: Cell) -> str:
    if not isinstance(cell, Value):
        return escape_markdown(cell)
    text = f"**{escape_markdown(cell.text)}**" if cell.best else escape_markdown(cell.text)
    return f"{text} \\[{escape_markdown(cell.ci)}\\]" if cell.ci else text


def to_markdown(table: Table) -> str:
    lines = [f"### {escape_markdown(table.title)}", ""]
    lines.append("| " + " | ".join(escape_markdown(c) for c in table.columns) + " |")
    lines.append("|" + "|".join("---" for _ in table.columns) + "|")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    lines += [""] + [escape_markdown(n) for n in table.notes]
    return "\n".join(lines).rstrip("\n") + "\n"


def _latex_cell(cell: Cell) -> str:
    if not isinstance(cell, Value):
        return escape_latex(cell)
    text = rf"\textbf{{{escape_latex(cell.text)}}}" if cell.best else escape_latex(cell.text)
    return rf"{text} {{\tiny [{escape_latex(cell.ci)}]}}" if cell.ci else text


def to_latex(table: Table) -> str:
    spec = "l" * len(table.columns)
    lines = [r"\begin{table}[ht]", r"\centering", r"\scriptsize",
             rf"\caption{{{escape_latex(table.title)}}}", rf"\begin{{tabular}}{{{spec}}}", r"\hline",
             " & ".join(escape_latex(c) for c in table.columns) + r" \\", r"\hline"]
    lines += [" & ".join(_latex_cell(c) for c in row) + r" \\" for row in table.rows]
    lines += [r"\hline", r"\end{tabular}"]
    lines += [rf"\par\smallskip {escape_latex(n)}" for n in table.notes]
    lines += [r"\end{table}", ""]
    return "\n".join(lines)


def _html_cell(cell: Cell) -> str:
    if not isinstance(cell, Value):
        return f"<td>{escape_html(cell)}</td>"
    key = "" if math.isnan(cell.sort) else f' data-sort="{float(cell.sort)!r}"'
    text = f'<b class="best">{escape_html(cell.text)}</b>' if cell.best else escape_html(cell.text)
    ci = f' <small class="ci">{escape_html(cell.ci)}</small>' if cell.ci else ""
    return f'<td class="v"{key}>{text}{ci}</td>'


def to_html(table: Table) -> str:
    attrs = ' class="sortable"' if table.sortable else ""
    head = "".join(f"<th>{escape_html(c)}</th>" for c in table.columns)
    body = "\n".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in table.rows)
    notes = "".join(f'<p class="note">{escape_html(n)}</p>' for n in table.notes)
    return (f'<h3>{escape_html(table.title)}</h3>\n<table id="{escape_html(table.table_id)}"{attrs}>\n'
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>\n{notes}\n")


def fmt(value: float, scale: float = 1.0, digits: int = 1) -> str:
    return DASH if value is None or not math.isfinite(value) else f"{value * scale:.{digits}f}"


def fmt_reported(value: float) -> str:
    """A published number as printed in the paper (no rounding)."""
    return DASH if not math.isfinite(value) else f"{value:g}"


def fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.3f}"


