"""The self-contained HTML page: inline CSS and script, tables, and PNG figures embedded as base64 data URIs.

Tables marked ``sortable`` sort by a click on a column heading (numbers by their value, text alphabetically; a
second click reverses). Values never wrap: an interval stays in small type beside its value.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from spinebench.leaderboard.render import Table, escape_html, to_html

_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1600px; }
table { border-collapse: collapse; margin: 0.5em 0 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #bbb; padding: 0.2em 0.4em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #eee; white-space: normal; vertical-align: bottom; }
table.sortable thead th { cursor: pointer; }
table.sortable thead th:hover { background: #dde; }
table.sortable { font-size: 0.8em; }
td.v small.ci { color: #777; font-size: 0.75em; }
td.v b.best { color: #000; }
td.v:has(b.best) { background: #e6f4e6; }
p.note { font-size: 0.8em; color: #555; max-width: 70em; }
figure { display: block; margin: 0.5em 1em 1em 0; }
figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.8em; color: #555; }
"""

_SORT_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("thead th").forEach(function (th, col) {
    th.title = "click to sort";
    th.addEventListener("click", function () {
      var dir = th.getAttribute("data-dir") === "desc" ? 1 : -1;
      table.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("data-dir"); });
      th.setAttribute("data-dir", dir === 1 ? "asc" : "desc");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-sort"), y = b.cells[col].getAttribute("data-sort");
        if (x !== null || y !== null) {
          if (x === null) { return 1; }
          if (y === null) { return -1; }
          return dir * (parseFloat(x) - parseFloat(y));
        }
        return dir * a.cells[col].textContent.localeCompare(b.cells[col].textContent);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


@dataclass
class Figure:
    caption: str
    png: bytes
    figure_id: str


@dataclass
class Section:
    """A titled part of the page: tables and figures, in the order given."""

    title: str
    blocks: list[Table | Figure] = field(default_factory=list)


def figure_html(fig: Figure) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    return (f'<figure id="{escape_html(fig.figure_id)}"><img alt="{escape_html(fig.caption)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{escape_html(fig.caption)}</figcaption></figure>\n')


def page_html(title: str, intro: list[str], sections: list[Section]) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{escape_html(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
             f"<h1>{escape_html(title)}</h1>"]
    parts += [f"<p>{escape_html(p)}</p>" for p in intro]
    for section in sections:
        parts.append(f"<section><h2>{escape_html(section.title)}</h2>")
        parts += [figure_html(b) if isinstance(b, Figure) else to_html(b) for b in section.blocks]
        parts.append("</section>")
    parts += [f"<script>{_SORT_SCRIPT}</script>", "</body>", "</html>", ""]
    return "\n".join(parts)
