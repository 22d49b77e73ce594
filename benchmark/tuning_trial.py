"""One trial of a study: train the experiment's (method, seed) cell through the runner, with pruning and MLflow.

The objective is the best validation value of ``metric`` over the trial's epochs (the runner keeps the checkpoint
of the best ``val/id_rate``). ``PyTorchLightningPruningCallback`` reports every validation epoch to Optuna and
raises ``TrialPruned`` (single process) or stops all ranks together (DDP, see ``benchmark.tuning``).
MLflow: one parent run per study (its id is a study user attribute, so every worker and every re-run logs under
the same parent) and one child run per trial, with the trial's params, its final value and its outcome.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import traceback
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import optuna

from spinebench.benchmark.cell import train_and_evaluate_cell
from spinebench.benchmark.config_files import load_experiment
from spinebench.benchmark.runner import global_rank
from spinebench.benchmark.tracking import Tracker, check_reachable
from spinebench.benchmark.tuning_study import make_pruner
from spinebench.datamodules.atomic import write_text_atomic
from spinebench.datamodules.errors import InputError

PARENT_RUN_ATTR = "mlflow_parent_run_id"
_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


class MetricHistory(L.Callback):
    """The monitored metric after each (non-sanity) validation epoch, and the names that were logged."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.values: list[float] = []
        self.logged: set[str] = set()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.logged |= set(trainer.callback_metrics)
        value = trainer.callback_metrics.get(self.metric)
        if value is not None:
            self.values.append(float(value))

    def best(self, direction: str) -> float:
        finite = [v for v in self.values if math.isfinite(v)]
        if not self.values:
            raise InputError(
                f"tune.objective.metric: {self.metric!r} was never logged during validation; "
                f"logged metrics: {', '.join(sorted(self.logged)) or '(none)'}"
            )
        if not finite:
            return float("nan")
        return max(finite) if direction == "maximize" else min(finite)


class StudyTracker(Tracker):
    """The runner's ``Tracker`` with the parent run shared by a whole study instead of one output folder."""

    source: dict[str, str] = {}  # the study's source tags (``start_study``), repeated on each trial run

    def start_study(self, study: optuna.Study, params: Mapping[str, Any], tags: Mapping[str, str] | None = None
                    ) -> None:
        """Create or reuse the experiment and the study's parent run (``tags`` go on it and on this worker's
        trial runs). Call it under the study lock."""
        self.source = dict(tags or {})
        if not self.enabled:
            return
        check_reachable(self.uri)
        self.open_experiment()
        known = study.user_attrs.get(PARENT_RUN_ATTR, {})
        if isinstance(known, dict) and known.get(self.uri):
            self.parent_run_id = known[self.uri]
            self.client.update_run(self.parent_run_id, status="RUNNING")
            return
        run = self.client.create_run(self.experiment_id, run_name=f"tune:{study.study_name}",
                                     tags={**(tags or {}), "optuna.study": study.study_name})
        self.parent_run_id = run.info.run_id
        self.log_params(self.parent_run_id, params)
        study.set_user_attr(PARENT_RUN_ATTR, {**(known if isinstance(known, dict) else {}), self.uri: run.info.run_id})

    def start_trial(self, trial: optuna.Trial, overrides: Mapping[str, Any]) -> str | None:
        if not self.enabled:
            return None
        tags = {**self.source, "mlflow.parentRunId": self.parent_run_id, "optuna.study": trial.study.study_name,
                "optuna.trial": str(trial.number)}
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{trial.number:04d}", tags=tags)
        self.log_params(run.info.run_id, {**trial.params, "trial": trial.number, "overrides": dict(overrides)})
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        return run.info.run_id

    def end_trial(self, run_id: str | None, trial: optuna.Trial, state: str, value: float | None) -> None:
        if not self.enabled or run_id is None:
            return
        frozen = trial.study._storage.get_trial(trial._trial_id)
        for step, v in sorted(frozen.intermediate_values.items()):
            self.log_metrics(run_id, {"optuna/intermediate_value": v}, step=int(step))
        metrics = {"optuna/pruned": float(state == "PRUNED")}
        if value is not None:
            metrics["optuna/value"] = value
        self.log_metrics(run_id, metrics)
        self.client.set_tag(run_id, "optuna.state", state)
        self.end(run_id, _STATUS[state])


def cell_of(cfg) -> tuple[Any, int]:
    """The one (method, seed) cell a tuning experiment trains."""
    cells = cfg.cells()
    if len(cells) != 1:
        names = ", ".join(f"{e.name}/seed{s}" for e, s in cells)
        raise InputError(
            f"methods/seeds: a tuning experiment trains exactly one (method, seed) cell per trial, got {names}; "
            "keep one method and one seed (tune each method in its own study)"
        )
    return cells[0]


def is_distributed(trainer_cfg) -> bool:
    return trainer_cfg.devices * trainer_cfg.num_nodes > 1 or trainer_cfg.strategy.startswith(("ddp", "fsdp"))


def train_cell(
    experiment: Mapping[str, Any], trial: optuna.Trial, trial_dir: Path, *, metric: str, direction: str,
    tracking_uri: str | None, tracking_experiment: str, run_id: str | None, progress: bool = False,
) -> float:
    """Train the trial's cell in this process (every rank of a DDP trial runs this); returns the objective.

    Raises ``TrialPruned`` when pruned: directly (single process) or, under DDP, on every rank after the
    training loop stopped on all ranks at the same epoch.
    """
    from optuna_integration import PyTorchLightningPruningCallback

    cfg = load_experiment(dict(experiment))
    entry, seed = cell_of(cfg)
    history = MetricHistory(metric)
    pruning = PyTorchLightningPruningCallback(trial, monitor=metric)
    loggers = []
    if tracking_uri and run_id:
        from lightning.pytorch.loggers import MLFlowLogger

        loggers.append(MLFlowLogger(experiment_name=tracking_experiment, tracking_uri=tracking_uri, run_id=run_id))
    train_and_evaluate_cell(cfg, entry, seed, trial_dir, callbacks=[pruning, history], loggers=loggers,
                            evaluate_test=False, progress=progress)
    with warnings.catch_warnings():  # it re-reports rank 0's values, which Optuna already holds
        warnings.simplefilter("ignore", UserWarning)
        pruning.check_pruned()  # DDP: raises TrialPruned on every rank when rank 0 decided to prune
    return history.best(direction)


def is_global_zero() -> bool:
    return global_rank() == 0 and int(os.environ.get("LOCAL_RANK", "0")) == 0


# --- DDP trials in a child process ---------------------------------------------------------------------------


def run_trial_in_subprocess(job: Mapping[str, Any], trial_dir: Path, timeout_s: float | None = None) -> float:
    """Run one trial as ``python -m spinebench.benchmark.tuning_trial JOB.json`` (Lightning re-runs it for the other ranks)."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    job_path, result_path = trial_dir / "trial_job.json", trial_dir / "trial_result.json"
    result_path.unlink(missing_ok=True)
    write_text_atomic(job_path, json.dumps(dict(job), indent=1))
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-m", "spinebench.benchmark.tuning_trial", str(job_path)], env=env, timeout=timeout_s)
    if not result_path.is_file():
        raise RuntimeError(f"trial process exited with status {proc.returncode} and no result ({result_path})")
    result = json.loads(result_path.read_text())
    if result["state"] == "PRUNED":
        raise optuna.TrialPruned(result.get("message", "pruned"))
    if result["state"] != "COMPLETE":
        raise RuntimeError(result.get("message", "trial process failed"))
    return float(result["value"])


def _trial_process_main(job_path: str) -> int:
    """Every rank of a DDP trial: attach to the trial, train the cell; rank 0 writes the outcome."""

    job = json.loads(Path(job_path).read_text())
    # the pruner lives in the process, not in the storage: every rank builds the study's own
    study = optuna.load_study(study_name=job["study_name"], storage=optuna.storages.get_storage(job["storage"]),
                              pruner=make_pruner(job["pruner"]))
    trial = optuna.trial.Trial(study, job["trial_id"])
    try:
        value = train_cell(
            job["experiment"], trial, Path(job["trial_dir"]), metric=job["metric"], direction=job["direction"],
            tracking_uri=job["tracking_uri"], tracking_experiment=job["tracking_experiment"], run_id=job["run_id"])
        result = {"state": "COMPLETE", "value": value}
    except optuna.TrialPruned as exc:
        result = {"state": "PRUNED", "message": str(exc)}
    except Exception as exc:
        traceback.print_exc()
        result = {"state": "FAIL", "message": f"{type(exc).__name__}: {exc}"}
    if is_global_zero():
        write_text_atomic(Path(job_path).with_name("trial_result.json"), json.dumps(result))
    return 0 if result["state"] != "FAIL" else 1


if __name__ == "__main__":
    sys.exit(_trial_process_main(sys.argv[1]))
