"""What message passing and shape refinement change, measured on one DI2IN checkpoint.

In a run, ``di2in``, ``di2in_mp`` and ``di2in_mp_sparsity`` are evaluated on the same trained network
(``benchmark.schedule``), so the difference between their records is the effect of the post-processing alone.
This script reads a run's ``records.csv`` (default: the newest ``runs/default-*``; or ``--run DIR``) and reports,
per variant, the test Id.Rate and the failure classes of ``leaderboard.failures`` (one-level shifts above all).

Usage: ``.venv/bin/python perf/bench_message_passing.py [--run runs/default-...]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from common import REPO_ROOT, newest_run, shown_path, write_fragment

sys.path.insert(0, str(REPO_ROOT))
from spinebench.leaderboard.evaluate import group_scans  # noqa: E402
from spinebench.leaderboard.failures import class_counts, classify_vertebrae  # noqa: E402
from spinebench.leaderboard.schema import read_records  # noqa: E402

VARIANTS = ("di2in", "di2in_mp", "di2in_mp_sparsity")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="a run folder with records.csv")
    args = parser.parse_args()
    run = args.run or newest_run()
    scans = {s.method: s for group in group_scans(read_records(run / "records.csv")).values() for s in group}
    lines = ["## Message passing and shape refinement on one DI2IN checkpoint", "",
             f"Run: `{run.name}` (test split; the three variants share one training). Classes: "
             "`leaderboard/failures.py`.", "",
             "| variant | annotated | Id.Rate | ±1-level shifts | shifts by more | ambiguous | mislocalised | missed |",
             "|---|---|---|---|---|---|---|---|"]
    for name in VARIANTS:
        if name not in scans:
            continue
        s = scans[name]
        counts = class_counts(classify_vertebrae(s.true_mm, s.pred_mm, s.pred_present))
        total = int(np.isfinite(s.true_mm).all(-1).sum())
        lines.append(f"| {name} | {total} | {100 * counts['identified'] / total:.1f} % | {counts['shift_1']} | "
                     f"{counts['shift_more']} | {counts['ambiguous']} | {counts['mislocalised']} | {counts['missed']} |")
        print(lines[-1], flush=True)
    write_fragment("message_passing", "\n".join(lines) + "\n",
                   command=f".venv/bin/python perf/bench_message_passing.py --run {shown_path(run)}")


if __name__ == "__main__":
    main()
