"""Run every ``perf/bench_*.py`` with this interpreter, then assemble ``PERFORMANCE.md`` from ``perf/results/*.md``.

Usage: ``make bench`` or ``.venv/bin/python perf/run_all.py [--only NAME ...] [--assemble-only]``.
A failing script is reported and the others still run; the exit status is non-zero if any failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

PERF_DIR = Path(__file__).resolve().parent
REPO_ROOT = PERF_DIR.parent
RESULTS_DIR = PERF_DIR / "results"

HEADER = """# Performance

Measured figures of spinebench, one section per script in `perf/` (scripts measure; they are not tests).
Reproduce all of them with `make bench` (runs `perf/run_all.py`: every `perf/bench_*.py`, then rebuilds this
file from `perf/results/*.md`), or one with the command under its section. Each section names the machine it
ran on; compare figures only between runs on the same machine. A script refuses to record when the 1-minute
load average exceeds 1.5 as it starts (`--force` records anyway and says so); sections with a `Load:` line
were taken under that rule, older ones without it predate it.
"""


SETTLED_LOAD = 1.0  # below the scripts' 1.5 limit with a margin; one busy thread holds the load near 1
SETTLE_SECONDS = 180


def wait_for_quiet(limit: float = SETTLED_LOAD, timeout: float = SETTLE_SECONDS) -> float:
    """Wait (at most ``timeout`` s) until the 1-minute load average is at most ``limit``: the previous script's
    processes (data-loader workers, two-process runs) keep it up for a minute after they end. Returns the load."""
    load = os.getloadavg()[0]
    deadline = time.monotonic() + timeout
    if load > limit:
        print(f"[bench] load average {load:.2f}: waiting for it to fall to {limit}", flush=True)
    while load > limit and time.monotonic() < deadline:
        time.sleep(5)
        load = os.getloadavg()[0]
    return load


def run_scripts(only: list[str] | None, force: bool = False) -> list[str]:
    failed = []
    for script in sorted(PERF_DIR.glob("bench_*.py")):
        name = script.stem.removeprefix("bench_")
        if only and name not in only:
            continue
        if not force:
            wait_for_quiet()
        print(f"[bench] {script.relative_to(REPO_ROOT)} ...", flush=True)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, str(script)] + (["--force"] if force else []), cwd=REPO_ROOT)
        took = time.perf_counter() - start
        status = "ok" if done.returncode == 0 else f"FAILED (exit {done.returncode})"
        print(f"[bench] {script.name}: {status} in {took:.1f} s", flush=True)
        if done.returncode != 0:
            failed.append(script.name)
    return failed


def assemble() -> Path:
    parts = [HEADER]
    for fragment in sorted(RESULTS_DIR.glob("*.md")):
        parts.append(fragment.read_text().strip() + "\n")
    out = REPO_ROOT / "PERFORMANCE.md"
    tmp = out.with_name(".PERFORMANCE.md.part")
    tmp.write_text("\n".join(parts))
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="run only these bench names (bench_<name>.py)")
    parser.add_argument("--assemble-only", action="store_true", help="only rebuild PERFORMANCE.md")
    parser.add_argument("--force", action="store_true",
                        help="record figures even when the 1-minute load average exceeds 1.5 (noted in each section)")
    args = parser.parse_args(argv)
    failed = [] if args.assemble_only else run_scripts(args.only, args.force)
    out = assemble()
    print(f"[bench] wrote {out.relative_to(REPO_ROOT)}")
    if failed:
        print(f"[bench] failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
