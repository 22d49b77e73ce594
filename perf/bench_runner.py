"""``spinebench run`` overhead: the tiny smoke experiment (one di2in cell) with and without MLflow tracking.

The difference is what tracking costs (sqlite store creation, params, metrics, artifacts); the rest is phantom
caching, two short epochs, test inference, records and the leaderboard. The full default run is measured by
hand (README, "What `make run` does") because it takes about 10 minutes.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import write_fragment  # noqa: E402

from benchmark.config import load_experiment  # noqa: E402
from benchmark.runner import run_benchmark  # noqa: E402


def main() -> None:
    from rich.console import Console

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        base = ["methods=[di2in]", f"data.cache_dir={cache}"]
        # warm the preprocessing cache once so both timings see the same (cached) data
        run_benchmark(load_experiment("smoke", base + ["tracking.enabled=false"]), Path(tmp) / "warm",
                      console=Console(quiet=True))
        for label, extra in (("no tracking", ["tracking.enabled=false"]), ("MLflow sqlite", ["tracking.enabled=true"])):
            t0 = time.perf_counter()
            out = run_benchmark(load_experiment("smoke", base + extra), Path(tmp) / label.replace(" ", "_"),
                                console=Console(quiet=True))
            rows.append((label, time.perf_counter() - t0, out))
    md = ["## spinebench run: runner and tracking overhead", "",
          "The smoke experiment (`configs/smoke.yaml`, di2in only: 4 train / 2 val / 2 test phantoms at 8 mm, "
          "2 epochs of 2 steps), preprocessing cache warm.", "",
          "| variant | wall time |", "|---|---|"]
    md += [f"| {label} | {seconds:.1f} s |" for label, seconds, _ in rows]
    md += ["", f"MLflow tracking (sqlite store in the run folder) adds {rows[1][1] - rows[0][1]:.1f} s per run."]
    write_fragment("runner", "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
