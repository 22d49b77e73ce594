"""The self-contained HTML page: inline CSS, tables, and PNG figures embedded as base64 data URIs."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from leaderboard.render import Table, escape_html, to_html

_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.5em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #eee; }
p.note { font-size: 0.8em; color: #555; max-width: 70em; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; }
figcaption { font-size: 0.8em; color: #555; }
"""


@dataclass
class Figure:
    caption: str
    png: bytes
    figure_id: str


@dataclass
class Section:
    title: str
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


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
        parts += [to_html(t) for t in section.tables]
        parts += [figure_html(f) for f in section.figures]
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)
