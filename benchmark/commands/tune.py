"""``spinebench tune``: an Optuna study over a run experiment; any number of workers may share one storage."""

from __future__ import annotations

import argparse
import sys

from spinebench.benchmark.commands import positive


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "tune",
        help="tune a method's hyperparameters with Optuna (pruning, parallel workers, MLflow)",
        description="Run Optuna trials over the search space in the config's 'tune' section. Each trial trains "
        "the experiment's (method, seed) cell and is scored by the best validation metric (val/id_rate by "
        "default). Re-running the same command continues the study; several workers on one --storage share it. "
        "Writes best_config.yaml (for `spinebench run --config`), trials.csv and PNG plots into --out.",
    )
    p.add_argument("--config", required=True, help="tuning YAML: a run experiment plus a 'tune' section "
                   "(or a shipped name: tune_di2in, tune_resml)")
    p.add_argument("--n-trials", type=positive(int), default=None, metavar="N",
                   help="total trials of the study, over all workers and re-runs (default: tune.n_trials or 20)")
    p.add_argument("--timeout", type=positive(float), default=None, metavar="S",
                   help="start no new trial after S seconds (this worker)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna storage: an RDB URL (sqlite:///study.db, postgresql://user:pw@host/db) or a journal "
                   "file path (e.g. study.log); default sqlite:///<out>/optuna.db")
    p.add_argument("--study", default=None, metavar="NAME", help="study name (default: tune.study or the config name)")
    p.add_argument("-o", "--out", default=None, metavar="DIR", help="output folder (default: runs/tune/<study>)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the file, e.g. --set trainer.max_epochs=4 --set tune.pruner.type=none")
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the "
                        "working folder)")
    p.set_defaults(func=tune)


def tune(args: argparse.Namespace) -> int:
    import logging

    import optuna

    from spinebench.benchmark.tuning import TrialsFailingError, prepare_tuning, run_tuning

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is printed instead
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    job = prepare_tuning(
        args.config, args.sets, n_trials=args.n_trials, timeout_s=args.timeout, storage=args.storage,
        study=args.study, out=args.out, tracking_uri=args.tracking_uri,
    )
    try:
        study, outputs = run_tuning(job, log=lambda line: print(line, flush=True))
    except TrialsFailingError as exc:
        print(f"spinebench tune: {exc}", file=sys.stderr)
        return 1
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        print(f"best trial {best.number}: {job.settings.metric} = {best.value:.4f}")
        for name, value in best.params.items():
            print(f"  {name} = {value!r}")
    for name, path in outputs.items():
        print(f"{name}: {path}")
    if "best_config" in outputs:
        print(f"train it: spinebench run --config {outputs['best_config']}")
    return 0
