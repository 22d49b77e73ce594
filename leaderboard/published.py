"""Numbers reported in the papers, stored once in ``data/published_results.csv`` (long format, one value a row).

Columns: citation, dataset, set, method, region, metric (mean_mm, std_mm in mm; id_rate, map in %), value,
status (``✔`` confirmed by a second place, ``~`` read from a scrambled extraction; only ``✔`` shown by default).
Reported rows appear only beside measured results on the same dataset and are always labelled "reported".
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

PUBLISHED_CSV = Path(__file__).resolve().parent / "data" / "published_results.csv"
CONFIRMED = "✔"
UNCONFIRMED = "~"


@dataclass(frozen=True)
class ReportedRow:
    """One reported method on one test set: ``values[(region, metric)]`` (id_rate and map in %)."""

    citation: str
    dataset: str
    set: str
    method: str
    values: dict[tuple[str, str], float]

    @property
    def label(self) -> str:
        return f"{self.method} (reported: {self.citation}; {self.set})"


def load_published(path: Path = PUBLISHED_CSV) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def reported_rows(dataset: str, *, include_unconfirmed: bool = False, path: Path = PUBLISHED_CSV) -> list[ReportedRow]:
    """Reported rows measured on ``dataset`` (e.g. ``csi2014``), in file order; none for other datasets."""
    grouped: dict[tuple[str, str, str], dict[tuple[str, str], float]] = {}
    for row in load_published(path):
        if row["dataset"] != dataset:
            continue
        if row["status"] != CONFIRMED and not include_unconfirmed:
            continue
        key = (row["citation"], row["set"], row["method"])
        grouped.setdefault(key, {})[(row["region"], row["metric"])] = float(row["value"])
    return [ReportedRow(c, dataset, s, m, v) for (c, s, m), v in grouped.items()]
