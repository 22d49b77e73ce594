"""``spinebench run`` end to end on a tiny phantom: outputs, determinism, resume after kill -9, parallel processes,
DDP, concurrent runs, further test sets.

One tiny di2in run (``smoke`` config, 8 mm phantoms of 6-10 vertebrae, a few steps) is trained once per session
(``trained_run`` in conftest.py) and shared with tests/test_finished_run.py. Subprocess tests use
``python -m spinebench`` like a user would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spinebench.benchmark.config_files import load_experiment
from spinebench.benchmark.runner import run_benchmark
from tests.run_fixtures import TIMING_COLUMNS, read_rows, run_cli, smoke_sets

pytestmark = pytest.mark.slow

def test_run_writes_every_output(trained_run):
    out = trained_run
    cfg = load_experiment(out / "config.yaml")
    assert cfg.name == "smoke" and [m.name for m in cfg.methods] == ["di2in"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config_hash"] == cfg.config_hash() and manifest["seeds"] == [0]
    assert len(manifest["case_ids"]["test"]) == cfg.data.options.n_test and len(manifest["case_ids_hash"]) == 64
    assert {"torch", "lightning", "mlflow"} <= set(manifest["packages"]) and manifest["machine"]["cpu_count"]
    result = json.loads((out / "cells" / "di2in" / "seed0" / "result.json").read_text())
    assert 0.0 <= result["metrics"]["val/id_rate"] <= 1.0 and result["metrics"]["test/cases"] == cfg.data.options.n_test
    # paths inside the run are relative to the cell folder: a copied run points at its own files
    assert result["best_checkpoint"] == "checkpoints/best.ckpt" and result["records_path"] == "records.csv"
    # which weights the test set saw (trainer.test_checkpoint, default best)
    assert result["extra"]["test_checkpoint"] == "best" and 1 <= result["extra"]["test_checkpoint_step"] <= 4
    cell = out / "cells" / "di2in" / "seed0"
    assert (cell / "checkpoints" / "last.ckpt").is_file() and (cell / "records.csv").is_file()
    # the fit's wall time, the share its validations took, and the thread count the cell used
    assert result["metrics"]["train/seconds"] > result["metrics"]["val/seconds"] > 0
    assert 1 <= result["metrics"]["torch_threads"] <= manifest["machine"]["cpu_count"]
    rows = read_rows(out / "records.csv", drop=())
    # every test case exactly once, all K vertebrae each, with world-mm truth and the efficiency columns
    assert len(rows) == cfg.data.options.n_test * 26
    assert len({r["case"] for r in rows}) == cfg.data.options.n_test
    assert all(float(r["seconds_per_case"]) > 0 and float(r["params"]) > 0 for r in rows)
    # peak memory of this cell's training and of its predictions, each measured for that phase alone
    assert all(float(r["train_peak_memory_mb"]) > 50 and float(r["peak_memory_mb"]) > 50 for r in rows)
    assert len({(r["train_peak_memory_mb"], r["peak_memory_mb"]) for r in rows}) == 1
    annotated = [r for r in rows if r["annotated"] == "1"]
    assert annotated and all(r["true_z_mm"] for r in annotated)
    identified = sum(r["identified"] == "1" for r in annotated) / len(annotated)
    assert abs(identified - result["metrics"]["test/id_rate"]) < 1e-9
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.tex", "leaderboard.html"):
        assert (out / "leaderboard" / name).stat().st_size > 0
    assert list((out / "projections").rglob("*.npz"))


def test_same_seed_gives_identical_records(trained_run, tmp_path, smoke_cache):
    cfg = load_experiment("smoke", smoke_sets(smoke_cache))
    again = run_benchmark(cfg, tmp_path / "smoke")  # same folder name: the "run" column matches
    first = read_rows(trained_run / "records.csv")
    second = read_rows(again / "records.csv")
    assert first == second and len(first) > 0


def test_test_checkpoint_last_evaluates_the_final_weights_in_every_cell_of_the_training(tmp_path, smoke_cache):
    """With ``trainer.test_checkpoint: last`` the training cell and the cells sharing its training are evaluated
    with the final weights, and ``spinebench evaluate`` uses the same checkpoint as the run did."""
    import torch

    cfg = load_experiment("smoke", smoke_sets(smoke_cache, "methods=[di2in, di2in_mp]", "trainer.test_checkpoint=last"))
    out = run_benchmark(cfg, tmp_path / "run")
    cells = out / "cells"
    trained, member = (json.loads((cells / m / "seed0" / "result.json").read_text()) for m in ("di2in", "di2in_mp"))
    assert trained["best_checkpoint"] == "checkpoints/last.ckpt"
    for result in (trained, member):
        assert result["extra"]["test_checkpoint"] == "last"
        assert result["extra"]["test_checkpoint_step"] == result["metrics"]["train/steps"] == 4
    weights_of = lambda path: torch.load(cells / path, map_location="cpu", weights_only=False)["state_dict"]  # noqa: E731
    last, shared = weights_of("di2in/seed0/checkpoints/last.ckpt"), weights_of("di2in_mp/seed0/checkpoints/best.ckpt")
    weights = [k for k in last if k.startswith("net.")]
    assert weights and all(torch.equal(last[k], shared[k]) for k in weights)
    again = run_cli("evaluate", "--run", str(out), "--set", "data.phantom.seed=0", "--name", "same")
    assert again.returncode == 0, again.stderr
    own = read_rows(out / "records.csv", (*TIMING_COLUMNS, "run", "dataset"))
    evaluated = read_rows(out / "evaluations/same/records.csv", (*TIMING_COLUMNS, "run", "dataset"))
    assert own == evaluated and len(own) == 2 * 2 * 26


def test_existing_output_folder_is_refused(trained_run, smoke_cache):
    sets = sum((["--set", s] for s in smoke_sets(smoke_cache)), [])
    out = run_cli("run", "--config", "smoke", *sets, "--out", str(trained_run))
    assert out.returncode == 2 and "already holds a run; continue it with --resume" in out.stderr


def test_resume_after_kill_keeps_complete_cells_and_continues(tmp_path, smoke_cache):
    out = tmp_path / "run"
    sets = smoke_sets(smoke_cache, "seeds=[0, 1]", "trainer.max_epochs=3", "trainer.limit_train_batches=2",
                      "trainer.checkpoint_every_n_steps=1", "tracking.enabled=true", "execution.processes=1")
    args = ["run", "--config", "smoke", *sum((["--set", s] for s in sets), []), "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "spinebench", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    second_last = out / "cells" / "di2in" / "seed1" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 400
    while not second_last.exists():
        assert proc.poll() is None, f"run ended before the kill: {proc.stderr.read()[-3000:]}"
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first_records = (out / "cells" / "di2in" / "seed0" / "records.csv").read_bytes()
    assert not (out / "cells" / "di2in" / "seed1" / "result.json").exists()

    resumed = run_cli("run", "--resume", str(out), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "cell 1/2: di2in seed 0 (complete, kept)" in resumed.stdout
    assert (out / "cells" / "di2in" / "seed0" / "records.csv").read_bytes() == first_records
    result = json.loads((out / "cells" / "di2in" / "seed1" / "result.json").read_text())
    assert result["resumed_from_step"] >= 1  # continued from last.ckpt, not from scratch
    assert result["metrics"]["train/steps"] == 6  # 3 epochs x 2 batches in all, none repeated
    assert len({r["seed"] for r in read_rows(out / "records.csv")}) == 2

    from mlflow.tracking import MlflowClient

    state = json.loads((out / "mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=state["uri"])  # the session's shared store
    experiment = client.get_experiment_by_name("smoke")
    tagged = client.search_runs([experiment.experiment_id], filter_string=f"tags.`spinebench.run_dir` = '{out}'")
    parents = [r for r in tagged if "mlflow.parentRunId" not in r.data.tags]
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{state['parent_run_id']}'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the resumed run reuses its parent
    assert parents[0].info.run_id == state["parent_run_id"]
    assert sorted(r.data.params["seed"] for r in children) == ["0", "1"]
    assert all(r.info.status == "FINISHED" and "test/id_rate" in r.data.metrics for r in children)
    assert parents[0].data.params["config_hash"] == json.loads((out / "manifest.json").read_text())["config_hash"]


def _stat(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first, then the parent pid), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (Linux /proc; zombies excluded)."""
    out = []
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat(entry.name)
        if fields is not None and int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from Linux's /proc")
def test_killing_a_parallel_run_ends_its_worker_processes(tmp_path, smoke_cache):
    """kill -9 of ``spinebench run`` must not leave its training workers running (they would go on writing
    into the run folder beside a ``--resume``)."""
    sets = smoke_sets(smoke_cache, "methods=[di2in, resml_cls]", "execution.processes=2", "trainer.max_epochs=100000",
                      "trainer.limit_train_batches=2", "tracking.enabled=false")
    args = ["run", "--config", "smoke", *sum((["--set", s] for s in sets), []), "--out", str(tmp_path / "run")]
    proc = subprocess.Popen([sys.executable, "-m", "spinebench", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    started = tmp_path / "run" / "cells" / "di2in" / "seed0" / "curves"
    deadline = time.time() + 300
    while not started.exists():  # a worker is training
        assert proc.poll() is None, f"run ended before the kill: {proc.stderr.read()[-3000:]}"
        assert time.time() < deadline
        time.sleep(0.1)
    workers = _children(proc.pid)
    assert len(workers) >= 2  # the two trainings' processes (and multiprocessing's resource tracker)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.2)
    left = [w for w in workers if _alive(w) and "resource_tracker" not in _cmdline(w)]
    for w in left:  # a failing run of this test must not leave them either
        os.kill(w, signal.SIGKILL)
    assert not left, f"worker processes still running after their run was killed: {left}"


def test_two_process_ddp_on_cpu_evaluates_each_case_once(tmp_path, smoke_cache):
    out = tmp_path / "ddp"
    sets = smoke_sets(smoke_cache, "trainer.devices=2", "trainer.strategy=ddp", "data.phantom.n_test=3")
    run = run_cli("run", "--config", "smoke", *sum((["--set", s] for s in sets), []), "--out", str(out), timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    ddp_rows = read_rows(out / "records.csv")
    assert len(ddp_rows) == 3 * 26 and len({r["case"] for r in ddp_rows}) == 3  # 3 cases on 2 ranks, no padding

    # The same checkpoint evaluated by one process gives the same records.
    from spinebench.benchmark.cell import evaluate_checkpoint
    from spinebench.benchmark.layout import CellResult
    from spinebench.benchmark.records import write_records

    cfg = load_experiment(out / "config.yaml", ["trainer.devices=1", "trainer.strategy=auto"])
    best = CellResult.read(out / "cells" / "di2in" / "seed0").best_checkpoint
    rows, info = evaluate_checkpoint(cfg, cfg.methods[0], 0, best, run_name=out.name, method_order=0)
    assert info["test/cases"] == 3
    write_records(tmp_path / "single.csv", rows)
    assert read_rows(tmp_path / "single.csv") == ddp_rows


def test_concurrent_runs_share_a_cache_and_concurrent_predictions_share_a_folder(trained_run, tmp_path):
    """Two runs filling one empty cache and creating one new MLflow store and experiment at once, and two
    predictions writing into one folder at once, finish with the same, valid results as one alone (writes are
    atomic: the last rename wins with identical content)."""
    from mlflow.tracking import MlflowClient

    cache, store = tmp_path / "cache", f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = sum((["--set", s] for s in smoke_sets(cache, "execution.processes=1", "trainer.num_threads=1",
                                                 "tracking.enabled=true")), [])
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    runs = [subprocess.Popen([sys.executable, "-m", "spinebench", "run", "--config", "smoke", *sets, "--out",
                              str(tmp_path / name / "smoke")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, env=env) for name in ("a", "b")]  # fmt: skip
    errors = [p.communicate(timeout=600)[1] for p in runs]
    assert [p.returncode for p in runs] == [0, 0], [e[-2000:] for e in errors]
    client = MlflowClient(tracking_uri=store)
    (experiment,) = [e for e in client.search_experiments() if e.name == "smoke"]
    finished = {r.info.run_id for r in client.search_runs([experiment.experiment_id],
                                                          filter_string="attributes.status = 'FINISHED'")}
    parents = {json.loads((tmp_path / name / "smoke" / "mlflow_run.json").read_text())["parent_run_id"]
               for name in ("a", "b")}
    cells = len(list((tmp_path / "a" / "smoke" / "cells").glob("*/seed*")))
    assert len(parents) == 2 and parents <= finished and len(finished) == 2 * (1 + cells)  # all in one experiment
    a, b = (read_rows(tmp_path / name / "smoke" / "records.csv") for name in ("a", "b"))
    assert a == b and len(a) > 0  # one thread each (fixed): bit-identical, whatever else the machine does
    entries = sorted(cache.rglob("*.json"))
    assert entries and not list(cache.rglob("*.part*"))
    for meta in entries:  # every entry complete: its array has the size its json promises
        assert meta.with_suffix(".npy").stat().st_size == json.loads(meta.read_text())["npy_bytes"]

    assert run_cli("phantom", "--n", "1", "--spacing", "8", "--out", str(tmp_path / "ph")).returncode == 0
    ct = tmp_path / "ph" / "phantom-s0-0000_ct.nii.gz"
    out = tmp_path / "pred"
    cmds = [[sys.executable, "-m", "spinebench", "predict", str(ct), "--run", str(trained_run), "--out", str(out / f)]
            for f in ("same.csv", "same.csv", "other.json")]
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in cmds]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    alone = tmp_path / "alone.csv"
    assert run_cli("predict", str(ct), "--run", str(trained_run), "--out", str(alone)).returncode == 0
    assert (out / "same.csv").read_text() == alone.read_text() and (out / "other.json").stat().st_size > 0
    assert sorted(p.name for p in out.iterdir()) == ["other.json", "same.csv"]


def test_test_sets_are_evaluated_with_every_trained_model(tmp_path, smoke_cache):
    """A further test set with the run's own test data gives the run's own predictions (same weights, same shape
    prior); a folder test set is its own dataset in the records, the metrics, the manifest and the leaderboard."""
    from spinebench.datamodules.sources.folder import FolderSource

    real = FolderSource.example(tmp_path / "real")  # two tiny CTs: a centroid file, a vertebra mask
    own = load_experiment("smoke").to_dict()["data"]["phantom"]
    sets = smoke_sets(smoke_cache, "test_sets.again.source=phantom", f"test_sets.again.phantom={json.dumps(own)}",
                      "test_sets.real.source=folder",
                      f"test_sets.real.folder={{root: {real.root}, test_fraction: 1.0}}")
    out = run_benchmark(load_experiment("smoke", sets), tmp_path / "run")
    rows = read_rows(out / "records.csv", (*TIMING_COLUMNS, "run"))
    by_dataset = {d: [{k: v for k, v in r.items() if k != "dataset"} for r in rows if r["dataset"] == d]
                  for d in {r["dataset"] for r in rows}}
    assert set(by_dataset) == {"phantom", "again", "real"}
    assert by_dataset["again"] == by_dataset["phantom"] and len(by_dataset["phantom"]) == 2 * 26
    assert {r["case"] for r in by_dataset["real"]} == {"a", "b"}
    (cell,) = (out / "cells").iterdir()
    metrics = json.loads((next(cell.iterdir()) / "result.json").read_text())["metrics"]
    assert metrics["test_sets/again/id_rate"] == metrics["test/id_rate"] and "test_sets/real/mean_mm" in metrics
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["test_sets"]["real"] == ["a", "b"] and len(manifest["test_sets"]["again"]) == 2
    board = (out / "leaderboard" / "leaderboard.md").read_text()
    assert "## phantom" in board and "## real" in board


def test_a_test_set_without_one_usable_case_is_left_out_with_a_warning(tmp_path, smoke_cache):
    """Listing cannot tell that every CT of a folder is unreadable; the cell's own results must not be lost."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "scan.nii.gz").write_bytes(b"not a nifti" * 20)
    sets = smoke_sets(smoke_cache, "test_sets.broken.source=folder",
                      f"test_sets.broken.folder={{root: {broken}, test_fraction: 1.0}}")
    with pytest.warns(UserWarning, match=r"test set broken left out of di2in seed 0: .*no usable case"):
        out = run_benchmark(load_experiment("smoke", sets), tmp_path / "run")
    rows = read_rows(out / "records.csv")
    assert {r["dataset"] for r in rows} == {"phantom"} and rows
    assert (broken / "scan.nii.gz").read_bytes() == b"not a nifti" * 20
