"""``spinebench leaderboard RESULTS... --out DIR``: per-region tables, tests, plots and an HTML page from records."""

from __future__ import annotations

import argparse
from pathlib import Path

from spinebench.benchmark.commands import bounded, non_negative, positive
from spinebench.leaderboard.evaluate import Conventions
from spinebench.leaderboard.metrics import AVERAGES, DENOMINATORS, IDENTIFICATION_THRESHOLD_MM, SEARCH_RULES
from spinebench.leaderboard.stats import DEFAULT_BOOTSTRAP_SAMPLES, DEFAULT_BOOTSTRAP_SEED


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "leaderboard",
        help="build the leaderboard (Markdown, CSV, LaTeX, HTML) from records files or run folders",
        description="Recompute every metric from per-vertebra records (records.csv files or run folders holding "
        "one) and write leaderboard.md/.csv/.tex/.html and plots/ to --out. Same inputs, same bytes.",
    )
    p.add_argument("results", nargs="+", type=Path, help="records.csv files or run folders")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    p.add_argument("--search", choices=SEARCH_RULES, default="glocker",
                   help="closest-centroid search: over all annotated centroids (glocker, default) or labels both "
                   "annotated and predicted (verse)")
    p.add_argument("--denominator", choices=DENOMINATORS, default="annotated",
                   help="Id.Rate denominator: all annotated vertebrae (default) or matched only")
    p.add_argument("--average", choices=AVERAGES, default="micro",
                   help="pool all vertebrae (micro, default) or average per scan (macro)")
    p.add_argument("--threshold-mm", type=positive(float), default=IDENTIFICATION_THRESHOLD_MM,
                   help="identification distance threshold in mm (default 20): < for glocker, <= for verse")
    p.add_argument("--bootstrap", type=bounded(int, 10), default=DEFAULT_BOOTSTRAP_SAMPLES, help="bootstrap draws (default 1000)")
    p.add_argument("--bootstrap-seed", type=non_negative(int), default=DEFAULT_BOOTSTRAP_SEED, help="bootstrap seed (default 0)")
    p.add_argument("--include-unconfirmed", action="store_true",
                   help="also show reported numbers marked ~ (read from scrambled PDF text, unconfirmed)")
    p.add_argument("--quiet", action="store_true", help="print only the paths written, not the headline tables")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spinebench.leaderboard.build import build_leaderboard

    conv = Conventions(search=args.search, denominator=args.denominator, average=args.average,
                       threshold_mm=args.threshold_mm, n_boot=args.bootstrap, seed=args.bootstrap_seed)
    out = build_leaderboard(args.results, args.out, conv, include_unconfirmed=args.include_unconfirmed)
    if not args.quiet:
        from rich.console import Console

        from spinebench.benchmark.console_tables import print_leaderboard

        print_leaderboard(out, Console(width=max(120, Console().width)))  # the tables need the room in logs
    print(f"wrote {out.markdown}, {out.csv.name}, {out.latex.name}, {out.html.name} and {len(out.plots)} plots")
    return 0
