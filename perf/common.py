"""Shared helpers for the performance scripts in ``perf/`` (measurements, not tests).

How to add a benchmark: create ``perf/bench_<name>.py`` that measures something and ends with

    from common import machine_markdown, write_fragment   # perf/ is on sys.path when run as a script
    write_fragment("<name>", "## <Title>\\n\\n| what | time |\\n|---|---|\\n| ... | 1.23 s |\\n")

``write_fragment(name, markdown)`` writes ``perf/results/<name>.md``: your markdown, then the exact command
that reproduces it (``.venv/bin/python perf/bench_<name>.py``, or pass ``command=``), then a machine
description (CPU model from /proc/cpuinfo, ``nproc``, torch threads, Python/torch/SimpleITK/numpy
versions, date). ``perf/run_all.py`` (``make bench``) runs every ``perf/bench_*.py`` and assembles
``PERFORMANCE.md`` from the fragments, sorted by file name. Keep each script under a few minutes on 2 cores.

``timed(fn, repeat=3)`` returns the best wall time of ``repeat`` calls (seconds) and the last result;
``flops(fn)`` counts a call's floating-point operations and ``achievable_gflops()`` measures the reference
throughput of one large conv3d, for figures reported as a fraction of what the CPU can do.

Figures taken on a busy machine are not figures: importing this module reads the 1-minute load average
(before the benchmark's own work), and ``write_fragment`` refuses to record when it exceeded ``MAX_LOAD``
(1.5), exiting with status 3 and leaving the old fragment in place; ``--force`` on the script's command
line, or ``SPINEBENCH_BENCH_FORCE=1``, records anyway and says so in the fragment.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
import time
from pathlib import Path

MAX_LOAD = 1.5
LOAD_AT_START = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
FORCED = "--force" in sys.argv or os.environ.get("SPINEBENCH_BENCH_FORCE") == "1"
if "--force" in sys.argv:
    sys.argv.remove("--force")  # the scripts' own argument parsers never see it
# The allocator settings of the CLI (benchmark/allocator.py: huge pages, glibc keeping freed blocks); must come
# before torch is imported, i.e. import common first.
from spinebench.benchmark.allocator import configure_allocator  # noqa: E402

configure_allocator()

PERF_DIR = Path(__file__).resolve().parent
RESULTS_DIR = PERF_DIR / "results"
REPO_ROOT = PERF_DIR.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> dict[str, str]:
    """CPU model, nproc, torch threads and library versions of this process."""
    info = {
        "cpu": cpu_model(),
        "nproc": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()),
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch threads"] = str(torch.get_num_threads())
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except ImportError:
        info["torch"] = "not installed"
    for module in ("numpy", "SimpleITK", "scipy"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            pass
    try:
        import SimpleITK as sitk

        info["SimpleITK threads"] = str(sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())
    except ImportError:
        pass
    if hasattr(os, "getloadavg"):
        info["load average (1/5/15 min)"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    info["date (UTC)"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    return info


def machine_markdown() -> str:
    return "; ".join(f"{k}: {v}" for k, v in machine_description().items())


def default_command() -> str:
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO_ROOT)
    except ValueError:
        pass
    return f".venv/bin/python {script}"


def write_fragment(name: str, markdown: str, command: str | None = None) -> Path:
    """Write ``perf/results/<name>.md``: ``markdown`` + reproduce command + machine description. Returns the path."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"fragment name must be a plain file stem, got {name!r}")
    load_note = f"1-minute load average {LOAD_AT_START:.2f} when the script started"
    if LOAD_AT_START > MAX_LOAD:
        if not FORCED:
            print(f"[bench] not recorded: {load_note}, above {MAX_LOAD} (another job is running); "
                  f"rerun on an idle machine, or pass --force", file=sys.stderr)
            raise SystemExit(3)
        load_note += f" (above {MAX_LOAD}: recorded with --force, figures are upper bounds)"
    text = (
        markdown.rstrip()
        + f"\n\nCommand: `{command or default_command()}`\n\nLoad: {load_note}.\n\nMachine: {machine_markdown()}\n"
    )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.md"
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def timed(fn, repeat: int = 3):
    """(best wall seconds over ``repeat`` calls, result of the last call)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def flops(fn) -> float:
    """Floating-point operations of one call of ``fn``, counted by ``torch.utils.flop_counter`` (convolutions
    and matrix products; element-wise work and resizing are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def achievable_gflops(bfloat16: bool = False) -> float:
    """GFLOP/s of one large 3x3x3 conv3d (32 -> 32 channels, 64^3, channels_last_3d), forward, in this process's
    torch thread setting: the reference every network's throughput is reported against. ``bfloat16``: the same
    under CPU bfloat16 autocast (for comparison only; the figures are float32's)."""
    import torch

    x = torch.randn(1, 32, 64, 64, 64).contiguous(memory_format=torch.channels_last_3d)
    conv = torch.nn.Conv3d(32, 32, 3, padding=1).to(memory_format=torch.channels_last_3d)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
        seconds, _ = timed(lambda: conv(x), repeat=6)  # best of 6: the ceiling, not a typical run
        return flops(lambda: conv(x)) / seconds / 1e9


def shown_path(path: Path) -> Path:
    """``path`` relative to the repository when it lies inside it (as a fragment's command should read)."""
    path = Path(path).absolute()
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path


def newest_run(required: bool = True) -> Path | None:
    """The most recently finished ``runs/default-*`` folder (by its ``records.csv``), for scripts that read a run.
    Exits with a hint when there is none and ``required``."""
    runs = sorted((REPO_ROOT / "runs").glob("default-*/records.csv"), key=lambda p: p.stat().st_mtime)
    if runs:
        return runs[-1].parent
    if required:
        sys.exit("no runs/default-*/records.csv: run `spinebench run` first, or pass --run DIR")
    return None

