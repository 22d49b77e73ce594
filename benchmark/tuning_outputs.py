"""What a tuning study leaves behind: the best experiment as a runnable config, the trials table and the plots.

The study's *baseline* trial (``user_attrs["baseline"]``, enqueued first by ``spinebench tune`` unless
``tune.baseline: false``) evaluates the tuning file's own configuration with the same budget and pruner as every
other trial, so the table and the optimization history show whether the search found something better.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from spinebench.benchmark.search_space import SearchSpace, apply_overrides
from spinebench.datamodules.atomic import atomic_path, write_text_atomic

BASELINE_ATTR = "baseline"


def baseline_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The study's baseline trial (the tuning file's own configuration), if it has one."""
    return next((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(BASELINE_ATTR)), None)


def best_experiment(study: optuna.Study, experiment: Mapping[str, Any], space: SearchSpace) -> tuple[dict, Any]:
    """The experiment with the best trial's overrides applied, and that trial."""
    best = study.best_trial
    return apply_overrides(experiment, space.overrides_from_params(best.params)), best


def write_outputs(study: optuna.Study, out: Path, metric: str, direction: str, storage: str, study_name: str,
                  experiment: Mapping[str, Any], space: SearchSpace) -> dict[str, Path]:
    """``best_config.yaml`` (runnable by ``spinebench run --config``), ``trials.csv`` (with a ``baseline`` column)
    and the two plots (PNG)."""
    written: dict[str, Path] = {}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        config, best = best_experiment(study, experiment, space)
        header = (f"# Best trial {best.number} of Optuna study {study_name!r} ({storage}):\n"
                  f"# {metric} = {best.value:.6g} ({direction}). Run it: spinebench run --config "
                  f"{out / 'best_config.yaml'}\n"
                  + "".join(f"#   {k} = {v!r}\n" for k, v in space.overrides_from_params(best.params).items()))
        write_text_atomic(out / "best_config.yaml", header + yaml.safe_dump(config, sort_keys=False))
        written["best_config"] = out / "best_config.yaml"
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "duration"))
    baseline = {t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get(BASELINE_ATTR)}
    frame.insert(1, "baseline", [n in baseline for n in frame["number"]] if len(frame) else [])
    write_text_atomic(out / "trials.csv", frame.to_csv(index=False))
    written["trials"] = out / "trials.csv"
    if complete:
        written.update(_write_plots(study, out, metric))
    return written


def _write_plots(study: optuna.Study, out: Path, metric: str) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    written = {}
    plots = {"optimization_history": lambda: ovm.plot_optimization_history(study, target_name=metric),
             "param_importances": lambda: ovm.plot_param_importances(study, target_name=metric)}
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna's ExperimentalWarning for the matplotlib backend
            try:
                ax = plot()
            except (ValueError, RuntimeError) as exc:  # e.g. importances need >= 2 complete trials
                optuna.logging.get_logger(__name__).warning("no %s plot yet: %s", name, exc)
                continue
        base = baseline_trial(study)
        if name == "optimization_history" and base is not None and base.state == TrialState.COMPLETE:
            ax.axhline(base.value, color="0.3", ls="--", lw=1, label=f"baseline: the tuning file's config "
                       f"(trial {base.number}, {base.value:.3f})")
            ax.legend(fontsize=8)
        figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        with atomic_path(out / f"{name}.png") as tmp:
            figure.savefig(tmp, format="png", dpi=100)
        plt.close(figure)
        written[name] = out / f"{name}.png"
    return written
