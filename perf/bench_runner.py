"""``spinebench run`` overheads: start-up imports, the MLflow store, metric logging, validation.

Measured side by side where an alternative exists:
- start-up: wall time of ``spinebench --help`` and of importing what ``run`` needs (fresh interpreters);
- the MLflow store of a new run: MLflow creating and migrating it vs. the copy of the migrated template
  (``benchmark.tracking.seed_sqlite_store``);
- one metric-logging call of Lightning's ``MLFlowLogger`` on a sqlite store, and what the default config's
  ``log_every_n_steps`` makes of it over a run's steps;
- validation: its share of each training of the newest ``runs/default-*`` (``val/seconds`` / ``train/seconds``
  of the cells; run ``spinebench run`` first);
- the smoke experiment (one di2in cell, cache warm) without tracking and with MLflow.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO_ROOT, newest_run, write_fragment

sys.path.insert(0, str(REPO_ROOT))

PYTHON = sys.executable


def fresh_seconds(code: str, repeat: int = 3) -> float:
    """Best wall time of ``python -c code`` in a fresh interpreter (start-up included)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([PYTHON, "-c", code], check=True, capture_output=True, cwd=REPO_ROOT)
        best = min(best, time.perf_counter() - start)
    return best


def cli_seconds(*args: str, repeat: int = 3) -> float:
    return fresh_seconds(f"import sys; sys.argv = ['spinebench', *{list(args)!r}]\n"
                         "from benchmark.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass", repeat)


def store_seconds(tmp: Path) -> tuple[float, float]:
    """(MLflow creating a new sqlite store, copying the migrated template), fresh interpreters, imports excluded."""
    code = ("import time, sys; sys.path.insert(0, {root!r}); from mlflow.tracking import MlflowClient\n"
            "from benchmark.tracking import seed_sqlite_store\nt = time.perf_counter()\n{body}\n"
            "MlflowClient(tracking_uri={uri!r}).search_experiments()\nprint(time.perf_counter() - t)")
    times = {"mlflow": [], "template": []}
    for i in range(3):
        for kind, body in (("mlflow", "pass"), ("template", "seed_sqlite_store({uri!r})")):
            uri = f"sqlite:///{tmp / f'{kind}{i}.db'}"
            out = subprocess.run([PYTHON, "-c", code.format(root=str(REPO_ROOT), body=body.format(uri=uri), uri=uri)],
                                 check=True, capture_output=True, text=True, cwd=tmp)
            times[kind].append(float(out.stdout.strip().splitlines()[-1]))
    return min(times["mlflow"]), min(times["template"])


def logging_call_ms(tmp: Path, calls: int = 60) -> float:
    from lightning.pytorch.loggers import MLFlowLogger

    logger = MLFlowLogger(experiment_name="bench", tracking_uri=f"sqlite:///{tmp / 'log.db'}")
    logger.log_metrics({"train/loss": 1.0, "lr-Adam": 1e-3}, step=0)  # creates the run
    start = time.perf_counter()
    for step in range(1, calls + 1):
        logger.log_metrics({"train/loss": 1.0 / step, "lr-Adam": 1e-3}, step=step)
    return 1e3 * (time.perf_counter() - start) / calls


def smoke_seconds(tmp: Path) -> list[tuple[str, float]]:
    from rich.console import Console

    from spinebench.benchmark.config_files import load_experiment
    from spinebench.benchmark.runner import run_benchmark

    base = ["methods=[di2in]", f"data.cache_dir={tmp / 'cache'}"]
    run_benchmark(load_experiment("smoke", base + ["tracking.enabled=false"]), tmp / "warm", console=Console(quiet=True))
    rows = []
    for label, extra in (("no tracking", ["tracking.enabled=false"]), ("MLflow sqlite", ["tracking.enabled=true"])):
        start = time.perf_counter()
        run_benchmark(load_experiment("smoke", base + extra), tmp / label.replace(" ", "_"), console=Console(quiet=True))
        rows.append((label, time.perf_counter() - start))
    return rows


def main() -> None:
    md = ["## spinebench run: start-up, tracking, logging and validation overheads", ""]
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        help_s = cli_seconds("--help")
        imports = {m: fresh_seconds(f"import {m}") for m in ("torch", "lightning", "mlflow", "spinebench.benchmark.runner")}
        created, copied = store_seconds(tmp)
        call_ms = logging_call_ms(tmp)
        smoke = smoke_seconds(tmp)
    md += ["Fresh interpreters, best of 3 (Python start-up included):", "",
           "| what | wall time |", "|---|---|",
           f"| `spinebench --help` | **{help_s:.2f} s** (target < 1 s) |"]
    md += [f"| `import {m}` | {s:.2f} s |" for m, s in imports.items()]
    md += ["", "| MLflow store of a new run | time |", "|---|---|",
           f"| MLflow creates and migrates it | {created:.2f} s |",
           f"| copy of the migrated template (spinebench) | **{copied:.2f} s** ({created / max(copied, 1e-6):.1f}x) |",
           "", "Both open the store in a fresh interpreter with MLflow imported, as a run's first tracking call does "
           "(SQLAlchemy's first use included)."]

    from spinebench.benchmark.config_files import load_experiment

    cfg = load_experiment("default", ["tracking.enabled=false"])
    steps = {m.name: cfg.trainer_for(m).max_steps for m in cfg.methods}
    every = cfg.trainer.log_every_n_steps
    run = newest_run(required=False)
    md += ["", f"Logging: one `MLFlowLogger.log_metrics` call (2 metrics, sqlite) takes **{call_ms:.1f} ms**; the "
           f"default config logs every {every} steps."]
    if run is not None:
        md += ["", f"Per training of `{run.name}` (its cells' `train/seconds` and `val/seconds`):", "",
               "| training | steps | fit | validation | share | logging at this cadence | share |",
               "|---|---|---|---|---|---|---|"]
        for cell in sorted((run / "cells").glob("*/seed*/result.json")):
            result = json.loads(cell.read_text())
            metrics = result["metrics"]
            if result.get("extra", {}).get("trained_in") or "train/seconds" not in metrics:
                continue  # evaluated on another cell's training, or a run from before these metrics
            fit, val = metrics["train/seconds"], metrics["val/seconds"]
            log_s = call_ms / 1e3 * steps.get(result["method"], metrics["train/steps"]) / every
            md.append(f"| {result['method']} | {metrics['train/steps']:.0f} | {fit:.0f} s | {val:.1f} s | "
                      f"**{100 * val / fit:.1f} %** (target < 5 %) | {log_s:.1f} s | **{100 * log_s / fit:.2f} %** "
                      "(target < 1 %) |")
    md += ["", "The smoke experiment (`configs/smoke.yaml`, di2in only: 4 train / 2 val / 2 test phantoms at 8 mm, "
           "2 epochs of 2 steps), preprocessing cache warm, in this process (imports excluded):", "",
           "| variant | wall time |", "|---|---|"]
    md += [f"| {label} | {seconds:.1f} s |" for label, seconds in smoke]
    write_fragment("runner", "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
