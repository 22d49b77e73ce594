"""``spinebench tune`` on a tiny phantom: study outputs, MLflow child runs, continuation, pruning, parallel workers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from spinebench.benchmark.cli import main
from spinebench.benchmark.tuning import prepare_tuning
from spinebench.benchmark.tuning_study import TuneError

TINY = """
name: tiny
data:
  source: phantom
  spacing_mm: 8.0
  phantom: {{n_train: 3, n_val: 2, n_test: 1, generator: {{spacing_mm: 4.0, fov_vertebrae: [5, 6]}}}}
  sample_mode: volume
  batch_size: 1
  cache_dir: {cache}
methods:
  di2in:
    overrides: {{base_width: 4, depth: 2}}
seeds: [0]
trainer:
  max_epochs: 2
  limit_train_batches: 2
  log_every_n_steps: 1
  enable_progress_bar: false
tracking: {{enabled: {tracking}}}
tune:
  n_trials: 2
  sampler: {{type: random, seed: 0}}
  pruner: {{type: none}}
  space:
    methods:
      di2in:
        learning_rate: {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}
        sigma_vox: {{type: float, low: 1.0, high: 3.0, step: 0.5}}
    trainer:
      max_epochs: {{type: int, low: 1, high: 2}}
"""


def _write_config(folder: Path, cache: Path, tracking: bool = True) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(TINY.format(cache=cache, tracking=str(tracking).lower()))
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("phantom_cache")


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, cache):
    """A 2-trial study, then the same command with --n-trials 3 (continues it)."""
    folder = tmp_path_factory.mktemp("tune")
    config, out = _write_config(folder, cache), folder / "out"
    assert main(["tune", "--config", str(config), "--out", str(out)]) == 0
    first = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.db'}").trials
    assert main(["tune", "--config", str(config), "--out", str(out), "--n-trials", "3"]) == 0
    return config, out, first


def _mlflow_runs(out: Path, study: str):
    """The study's parent run and its trial runs, in the session's shared MLflow store (the study records which
    parent run is its own: other tests' studies of the same name share the store)."""
    from mlflow.tracking import MlflowClient

    from spinebench.benchmark.tuning_trial import PARENT_RUN_ATTR

    (uri, parent_id), = optuna.load_study(study_name=study, storage=f"sqlite:///{out / 'optuna.db'}"
                                          ).user_attrs[PARENT_RUN_ATTR].items()
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(parent_id)
    assert client.get_experiment(parent.info.experiment_id).name == "tiny"  # named after the tuning config
    children = client.search_runs([parent.info.experiment_id], max_results=100,
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    return [parent, *children]


@pytest.mark.slow
def test_study_writes_a_runnable_best_config_plots_and_continues(tiny_study):
    config, out, first = tiny_study
    assert [t.number for t in first] == [0, 1]
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.db'}")
    trials = study.trials
    assert [t.number for t in trials] == [0, 1, 2]  # the re-run added exactly one trial
    assert [t.params for t in trials[:2]] == [t.params for t in first]  # and kept the first two untouched
    assert all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        assert 1e-4 <= t.params["di2in.learning_rate"] <= 1e-2 and t.params["trainer.max_epochs"] in (1, 2)
        assert 0.0 <= t.value <= 1.0 and sorted(t.intermediate_values) == list(range(t.params["trainer.max_epochs"]))
        assert t.value == max(t.intermediate_values.values())  # the best validation epoch is the objective

    # trial 0 is the baseline: the tuning file's own values (DI2IN's default learning_rate and sigma_vox, max_epochs 2)
    assert trials[0].user_attrs["baseline"] is True and not any("baseline" in t.user_attrs for t in trials[1:])
    assert trials[0].params == {"di2in.learning_rate": 1e-3, "di2in.sigma_vox": 2.0, "trainer.max_epochs": 2}
    table = (out / "trials.csv").read_text().splitlines()
    assert table[0].startswith("number,baseline,") and table[1].startswith("0,True,") and ",False," in table[2]

    best = study.best_trial
    exported = yaml.safe_load((out / "best_config.yaml").read_text())
    assert "tune" not in exported
    assert exported["methods"]["di2in"]["overrides"] == {
        "base_width": 4, "depth": 2, "learning_rate": best.params["di2in.learning_rate"], "sigma_vox": best.params["di2in.sigma_vox"]}
    assert exported["trainer"]["max_epochs"] == best.params["trainer.max_epochs"]
    assert exported["trainer"]["limit_train_batches"] == 2  # the rest of the experiment is kept
    for plot in ("optimization_history.png", "param_importances.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "trials.csv").read_text().count("COMPLETE") == 3

    # a third run with the same budget runs nothing
    assert main(["tune", "--config", str(config), "--out", str(out), "--n-trials", "3"]) == 0
    assert len(optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.db'}").trials) == 3


@pytest.mark.slow
def test_each_trial_is_an_mlflow_child_run_of_the_study_run(tiny_study):
    _, out, _ = tiny_study
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.db'}")
    runs = _mlflow_runs(out, "tiny")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].data.tags["optuna.study"] == "tiny"  # re-runs reuse the parent
    children = {int(r.data.tags["optuna.trial"]): r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert sorted(children) == [0, 1, 2]
    for trial in study.trials:
        run = children[trial.number]
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.tags["optuna.state"] == "COMPLETE" and run.info.status == "FINISHED"
        assert float(run.data.params["di2in.learning_rate"]) == pytest.approx(trial.params["di2in.learning_rate"])
        assert run.data.metrics["optuna/value"] == pytest.approx(trial.value)
        assert run.data.metrics["optuna/pruned"] == 0.0
        assert "val/id_rate" in run.data.metrics  # Lightning's MLFlowLogger wrote into the child run
    assert parents[0].data.metrics["best/value"] == pytest.approx(study.best_value)


@pytest.mark.slow
def test_exported_best_config_runs_with_spinebench_run(tiny_study, tmp_path):
    _, out, _ = tiny_study
    run_out = tmp_path / "run"
    assert main(["run", "--config", str(out / "best_config.yaml"), "--out", str(run_out)]) == 0
    assert (run_out / "records.csv").is_file()
    resolved = yaml.safe_load((run_out / "config.yaml").read_text())
    best = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.db'}").best_trial
    assert resolved["methods"]["di2in"]["overrides"]["learning_rate"] == best.params["di2in.learning_rate"]


@pytest.mark.slow
def test_pruned_trial_is_recorded_as_pruned_in_optuna_and_mlflow(tiny_study):
    config, out, _ = tiny_study  # a second study in the same database and MLflow store
    # the identification rate is at most 1, so a lower bound of 2 prunes at the first validation epoch
    args = ["tune", "--config", str(config), "--out", str(out), "--study", "pruned", "--n-trials", "1",
            "--set", "tune.pruner={type: threshold, lower: 2.0}",
            "--set", "tune.space.trainer.max_epochs={type: categorical, choices: [2]}"]
    assert main(args) == 0
    (trial,) = optuna.load_study(study_name="pruned", storage=f"sqlite:///{out / 'optuna.db'}").trials
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [0]
    assert not (out / "trials" / "pruned" / "0000" / "checkpoints" / "last.ckpt").exists()  # stopped in epoch 0
    (child,) = [r for r in _mlflow_runs(out, "pruned") if "mlflow.parentRunId" in r.data.tags]
    assert child.data.tags["optuna.state"] == "PRUNED" and child.data.metrics["optuna/pruned"] == 1.0
    assert child.info.status == "KILLED"


@pytest.mark.slow
def test_two_workers_on_one_journal_file_run_exactly_n_trials(tmp_path, cache):
    config = _write_config(tmp_path, cache, tracking=False)
    journal = tmp_path / "study.log"
    cmd = [sys.executable, "-m", "spinebench", "tune", "--config", str(config), "--out", str(tmp_path / "out"),
           "--storage", str(journal), "--n-trials", "4",
           "--set", "tune.space.trainer.max_epochs={type: categorical, choices: [1]}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
               for _ in range(2)]
    logs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="tiny", storage=JournalStorage(JournalFileBackend(str(journal))))
    trials = study.trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), [t.state for t in trials]
    assert sorted(p.name for p in (tmp_path / "out" / "trials" / "tiny").iterdir()) == ["0000", "0001", "0002", "0003"]
    ran = sum(log.count(" COMPLETE") + log.count(" PRUNED") for log in logs)
    assert ran == 4  # each trial was run by exactly one worker
    # the two workers explore different points: trial n is sampled with the seed + n, whichever worker runs it
    assert len({t.params["di2in.learning_rate"] for t in trials}) == 4


@pytest.mark.slow
def test_ddp_trial_on_two_cpu_processes_stops_all_ranks_when_pruned(tmp_path, cache):
    """devices=2 on CPU (gloo): the trial runs as ``python -m spinebench.tuning JOB`` re-launched per rank."""
    config, out = _write_config(tmp_path, cache, tracking=False), tmp_path / "out"
    # epoch 0 is warm-up, epoch 1 is pruned (id rate < 2); a rank that kept training would hang in epoch 2
    cmd = [sys.executable, "-m", "spinebench", "tune", "--config", str(config), "--out", str(out), "--n-trials", "1",
           "--set", "trainer.devices=2", "--set", "trainer.strategy=ddp",
           "--set", "tune.space.trainer.max_epochs={type: categorical, choices: [3]}",
           "--set", "tune.pruner={type: threshold, lower: 2.0, n_warmup_steps: 1}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (trial,) = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.db'}").trials
    assert trial.state == TrialState.PRUNED and sorted(trial.intermediate_values) == [0, 1]
    assert trial.system_attrs["ddp_pl:pruned"] is True  # written by global rank 0 only
    last = torch.load(out / "trials" / "tiny" / "0000" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 1  # training ended after the pruned epoch, not at max_epochs


@pytest.mark.parametrize("name", ["tune_di2in", "tune_resml"])
def test_shipped_tuning_configs_validate(name, tmp_path):
    job = prepare_tuning(name, out=tmp_path)
    (method,) = job.cfg.methods
    assert job.space.names and all(n.startswith(f"{method.name}.") for n in job.space.names)
    assert job.settings.metric == "val/id_rate" and job.settings.direction == "maximize"
    assert job.settings.storage == f"sqlite:///{tmp_path.resolve() / 'optuna.db'}" and not job.distributed


def test_shipped_resml_study_trains_as_the_default_run_does(tmp_path):
    # its baseline trial is "the shipped values": the default run's overrides and its gradient clipping
    from spinebench.benchmark.config_files import load_experiment

    job = prepare_tuning("tune_resml", out=tmp_path)
    (entry,) = job.cfg.methods
    default = load_experiment("default", check_devices=False)
    (shipped,) = [m for m in default.methods if m.name == entry.name]
    assert job.cfg.trainer_for(entry).gradient_clip_val == default.trainer_for(shipped).gradient_clip_val == 1.0
    assert entry.overrides == shipped.overrides


def test_journal_worker_fails_running_trials_of_dead_processes_on_its_host(tmp_path):
    from spinebench.benchmark.tuning_storage import WORKER_ATTR, fail_dead_local_trials, open_storage

    study = optuna.create_study(storage=open_storage(str(tmp_path / "study.log")), study_name="s")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owners = [f"{socket.gethostname()}:{dead.pid}", f"{socket.gethostname()}:{os.getpid()}", f"elsewhere:{dead.pid}"]
    for owner in owners:
        trial = study.ask()
        study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, owner)
    fail_dead_local_trials(study)
    # only the trial of the dead local process fails; a live one and another host's stay RUNNING
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.RUNNING]


BAD = [
    ({"tune": None}, "no 'tune' section"),
    ({"tune.budget": 3}, "tune.budget: unknown key"),
    ({"methods": ["di2in", "di2in_mp"]}, "exactly one (method, seed) cell"),
    ({"seeds": [0, 1]}, "exactly one (method, seed) cell"),
    ({"tune.pruner": {"type": "asha"}}, "tune.pruner.type: unknown pruner 'asha'"),
    ({"tune.pruner": {"type": "median", "n_startup": 2}}, "tune.pruner: bad arguments for the median pruner"),
    ({"tune.objective": {"metric": "val/mean_error_mm"}}, "tune.objective.direction: give maximize or minimize"),
    ({"tune.n_trials": 0}, "expected a positive integer"),
    ({"tune.space.trainer": {"devices": {"type": "int", "low": 1, "high": 2}}}, "a device setting"),
    ({"tune.space.methods.di2in": {"learning_rate": {"type": "float", "low": 1, "high": 0.1}}}, "inverted range"),
    ({"tune.space.methods.di2in": {"depth": {"type": "int", "low": 0, "high": 2}}}, "methods.di2in"),
    ({"trainer.devices": 2, "trainer.strategy": "ddp", "tune.storage": "study.log"}, "DDP trials need an RDB storage"),
]


@pytest.mark.parametrize("changes, message", BAD, ids=[m for _, m in BAD])
def test_bad_tuning_file_fails_before_any_trial(tmp_path, cache, changes, message):
    raw = yaml.safe_load(_write_config(tmp_path, cache).read_text())
    for key, value in changes.items():
        *parents, last = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last)
        else:
            node[last] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(Exception) as err:
        prepare_tuning(path, out=tmp_path / "out")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, (TuneError, ValueError))
    assert not (tmp_path / "out").exists()


def test_cli_reports_a_bad_space_in_one_line(tmp_path, cache, capsys):
    config = _write_config(tmp_path, cache)
    bad = "tune.space.methods.di2in.lrate={type: float, low: 0.1, high: 1}"
    code = main(["tune", "--config", str(config), "--set", bad])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith("spinebench tune: error: tune.space.methods.di2in.lrate: unknown parameter")


def test_each_trial_number_gets_its_own_seed_and_one_seed_repeats():
    from optuna.distributions import FloatDistribution

    from spinebench.benchmark.tuning_study import trial_sampler

    def first_draw(index: int, seed: int | None = 0) -> float:
        study = optuna.create_study(sampler=trial_sampler({"type": "tpe", "seed": seed}, index))
        return study.ask({"x": FloatDistribution(0.0, 1.0)}).params["x"]

    assert first_draw(0) == first_draw(0) and first_draw(3) == first_draw(3)  # reproducible for one worker
    assert len({first_draw(i) for i in range(4)}) == 4  # trials 0..3 differ, whichever worker creates them


POSTGRES = os.environ.get("SPINEBENCH_TEST_POSTGRES")  # .ci/run starts a server (.ci/postgres) and sets it


@pytest.mark.slow
def test_three_workers_on_postgresql_one_killed(tmp_path, cache):
    """The distributed storage of the README, for real: three workers on one PostgreSQL study (advisory lock,
    heartbeat), one killed with SIGKILL inside its first trial. That trial is failed as soon as its process is
    gone and does not count; the study ends with exactly n_trials counted trials, all with distinct parameters."""
    import time

    if not POSTGRES:
        reason = "no PostgreSQL server: set SPINEBENCH_TEST_POSTGRES=postgresql://user@host/db (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    name, n = f"pg{os.getpid()}x{int(time.time())}", 4
    config = _write_config(tmp_path, cache, tracking=False)
    cmd = [sys.executable, "-m", "spinebench", "tune", "--config", str(config), "--out", str(tmp_path / "out"),
           "--storage", POSTGRES, "--study", name, "--n-trials", str(n),
           "--set", "tune.space.trainer.max_epochs={type: categorical, choices: [1]}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    victim = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    storage = optuna.storages.RDBStorage(POSTGRES)
    owner = f"{socket.gethostname()}:{victim.pid}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # until the victim's first trial is RUNNING with its point drawn
        try:
            trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        except KeyError:  # the study does not exist yet
            trials = []
        if any(t.state == TrialState.RUNNING and t.system_attrs.get("spinebench:worker") == owner and t.params
               for t in trials):  # the worker tags its trial a moment before it samples: wait for the parameters
            break
        assert victim.poll() is None, victim.communicate()[0][-3000:]
        time.sleep(0.2)
    else:
        pytest.fail("the first worker never started a trial")
    victim.kill()
    victim.communicate()
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
               for _ in range(2)]
    logs = [w.communicate(timeout=400)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [log[-3000:] for log in logs]
    trials = optuna.load_study(study_name=name, storage=storage).trials
    killed = [t for t in trials if t.system_attrs.get("spinebench:worker") == owner]
    counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(killed) == 1 and killed[0].state == TrialState.FAIL, [(t.number, t.state) for t in trials]
    assert len(counted) == n and len(trials) == n + 1
    assert len({t.params["di2in.learning_rate"] for t in trials}) == len(trials)  # every trial its own point


def test_a_tuning_file_with_the_old_option_names_still_validates(tmp_path):
    """``lr`` in the overrides and in the space (DI2IN's name before ``learning_rate``): both land on the new
    name, so the space's values replace the experiment's instead of clashing with them."""
    text = TINY.format(cache=tmp_path / "cache", tracking="false").replace(
        "overrides: {base_width: 4, depth: 2}", "overrides: {base_width: 4, depth: 2, lr: 0.002}").replace(
        "        learning_rate: {type: float", "        lr: {type: float")
    assert "lr: 0.002" in text and "lr: {type: float" in text
    (tmp_path / "old.yaml").write_text(text)
    job = prepare_tuning(tmp_path / "old.yaml", out=tmp_path / "out")
    assert job.space.names[0] == "di2in.learning_rate"
    assert job.experiment["methods"]["di2in"]["overrides"] == {"base_width": 4, "depth": 2, "learning_rate": 0.002}
    assert job.baseline["di2in.learning_rate"] == 0.002
