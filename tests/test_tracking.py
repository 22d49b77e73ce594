"""MLflow tracking: parent/child runs, params, metrics and artifacts in sqlite and on a real ``mlflow server``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from spinebench.benchmark.tracking import (
    Tracker, TrackingError, check_reachable, default_tracking_uri, flatten, seed_sqlite_store,
)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exercise(tracker: Tracker, out: Path) -> tuple[str, str]:
    """One parent and one child run with params, metrics, an artifact and Lightning's logger."""
    tracker.start("exp", params={"trainer": {"max_epochs": 2}, "methods": ["di2in"]})
    cell = out / "cells" / "di2in" / "seed0"
    cell.mkdir(parents=True)
    child = tracker.start_cell(cell, "di2in/seed0", {"spinebench.method": "di2in"}, {"method": "di2in", "seed": 0})
    logger = tracker.lightning_logger(child)
    logger.log_metrics({"train/loss": 0.5}, step=3)  # what Lightning does during fit
    (cell / "records.csv").write_text("run,method\nx,di2in\n")
    tracker.log_metrics(child, {"test/id_rate": 0.75, "test/cervical/mean_mm": float("nan")})
    tracker.log_artifacts(child, [cell / "records.csv"])
    tracker.end(child)
    tracker.end(tracker.parent_run_id)
    return tracker.parent_run_id, child


def _check_store(uri: str, parent: str, child: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    p, c = client.get_run(parent), client.get_run(child)
    assert p.data.params["trainer.max_epochs"] == "2" and p.info.status == "FINISHED"
    assert c.data.tags["mlflow.parentRunId"] == parent and c.data.params["method"] == "di2in"
    assert c.data.tags["spinebench.method"] == "di2in"
    assert c.data.metrics["test/id_rate"] == 0.75 and c.data.metrics["train/loss"] == 0.5
    assert "test/cervical/mean_mm" not in c.data.metrics  # NaN is not logged
    assert [a.path for a in client.list_artifacts(child)] == ["records.csv"]


def test_flatten_nested_config():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}


def test_default_store_is_mlflow_s_own(tmp_path, monkeypatch):
    """``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///mlflow.db`` in the working folder (absolute)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example.org:5000")
    assert default_tracking_uri() == "http://mlflow.example.org:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


@pytest.mark.slow
def test_sqlite_store_parent_child_and_resume(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    out = tmp_path / "run"
    out.mkdir()
    parent, child = _exercise(Tracker(uri, "spinebench-test", out), out)
    _check_store(uri, parent, child)
    assert (tmp_path / "store" / "mlartifacts").is_dir()  # artifacts beside the sqlite file, as mlflow server does
    # Resume: the same folder reuses the parent run and the cell's child run.
    again = Tracker(uri, "spinebench-test", out)
    again.start("exp", params={})
    assert again.parent_run_id == parent
    assert again.start_cell(out / "cells" / "di2in" / "seed0", "di2in/seed0", {}, {}) == child


def test_new_sqlite_stores_start_from_one_migrated_template(tmp_path, monkeypatch):
    """MLflow's migrations run once per machine and MLflow version; a store seeded from the template is a full
    store (schema at MLflow's head revision, usable by MlflowClient) and an existing store is never replaced."""
    import sqlite3

    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("SPINEBENCH_CACHE", str(tmp_path / "cache"))
    fresh = tmp_path / "fresh.db"
    MlflowClient(tracking_uri=f"sqlite:///{fresh}").search_experiments()  # MLflow's own creation
    assert seed_sqlite_store(f"sqlite:///{tmp_path / 'a.db'}")  # builds the template, then copies it
    template = tmp_path / "cache" / "mlflow" / f"empty-{mlflow.__version__}.db"
    assert template.is_file()
    start = time.perf_counter()
    assert seed_sqlite_store(f"sqlite:///{tmp_path / 'b.db'}")
    assert time.perf_counter() - start < 0.5  # a file copy, no migration

    def revision(path):
        with sqlite3.connect(path) as db:
            return db.execute("SELECT version_num FROM alembic_version").fetchall()

    assert revision(tmp_path / "b.db") == revision(fresh)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'b.db'}")
    run = client.create_run(client.create_experiment("x"))
    client.log_metric(run.info.run_id, "m", 1.0)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.0}
    before = (tmp_path / "b.db").read_bytes()
    assert not seed_sqlite_store(f"sqlite:///{tmp_path / 'b.db'}") and (tmp_path / "b.db").read_bytes() == before
    assert not seed_sqlite_store("http://localhost:5000") and not seed_sqlite_store(f"sqlite:///{tmp_path}/no/x.db")
    mask = os.umask(0)
    os.umask(mask)
    assert not list(tmp_path.glob(".*.part")) and (tmp_path / "b.db").stat().st_mode & 0o777 == 0o666 & ~mask


def test_disabled_tracker_is_a_noop(tmp_path):
    tracker = Tracker("http://127.0.0.1:1", "x", tmp_path, enabled=False)  # a DDP rank > 0
    tracker.start("exp", params={"a": 1})  # no reachability check, nothing written
    assert tracker.start_cell(tmp_path, "c", {}, {}) is None and tracker.lightning_logger(None) is None
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_fails_fast(tmp_path):
    port = _free_port()
    t0 = time.perf_counter()
    with pytest.raises(TrackingError, match=rf"127\.0\.0\.1:{port} is unreachable"):
        check_reachable(f"http://127.0.0.1:{port}")
    with pytest.raises(TrackingError, match="unreachable"):
        Tracker(f"http://127.0.0.1:{port}", "x", tmp_path).start("exp", params={})
    assert time.perf_counter() - t0 < 10


@pytest.mark.slow
def test_runs_of_one_folder_share_one_store_with_tags_summary_and_models(tmp_path):
    """Two ``spinebench run``s from one working folder, MLFLOW_TRACKING_URI unset: one ``mlflow.db`` there, one
    experiment named after the config, parents named after their folders and tagged with source, commit and
    hashes; the parent holds the per-method summary only; each cell's best checkpoint is an MLflow model."""
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.tracking import MlflowClient

    from spinebench.benchmark.runner import SUMMARY_KEYS

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    for name in ("a", "b"):
        done = subprocess.run(
            [sys.executable, "-m", "spinebench", "run", "--config", "smoke", "--set", "methods=[di2in]",
             "--set", "trainer.max_epochs=1", "--set", "tracking.enabled=true", "--out", f"runs/{name}"],
            cwd=tmp_path, env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "mlartifacts").is_dir()
    assert not list((tmp_path / "runs").rglob("mlflow.db"))
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)  # models:/ URIs resolve there (the session's store is put back after the test)
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    parents = {r.info.run_name: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    assert sorted(parents) == ["a", "b"] and len(runs) == 4
    manifest = json.loads((tmp_path / "runs" / "a" / "manifest.json").read_text())
    parent = parents["a"]
    tags = parent.data.tags
    assert tags["spinebench.config_hash"] == manifest["config_hash"]
    assert tags["spinebench.split_hash"] == manifest["case_ids_hash"]
    assert tags["mlflow.source.name"].startswith("spinebench run --config smoke")
    assert tags["mlflow.source.type"] == "LOCAL" and tags["spinebench.run_dir"] == str((tmp_path / "runs" / "a"))
    if manifest["git"]["commit"]:  # an editable install in a git checkout
        assert tags["mlflow.source.git.commit"] == manifest["git"]["commit"]
    summary = {"di2in/seeds", *(f"di2in/{key}" for key in SUMMARY_KEYS)}  # NaN figures (no match) are not logged
    assert {"di2in/seeds", "di2in/test/id_rate", "di2in/test/map"} <= set(parent.data.metrics) <= summary
    child = next(r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id)
    assert child.data.tags["spinebench.config_hash"] == manifest["config_hash"] and "train/loss" in child.data.metrics
    result = json.loads((tmp_path / "runs" / "a" / "cells" / "di2in" / "seed0" / "result.json").read_text())
    assert parent.data.metrics["di2in/test/id_rate"] == pytest.approx(result["metrics"]["test/id_rate"])
    model = mlflow.pytorch.load_model(child.data.tags["spinebench.model_uri"])
    best = torch.load(tmp_path / "runs" / "a" / "cells" / "di2in" / "seed0" / "checkpoints" / "best.ckpt",
                      weights_only=True)["state_dict"]
    assert type(model).__name__ == "DI2IN" and set(model.state_dict()) == set(best)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in best.items())


@pytest.mark.slow
def test_real_mlflow_server(tmp_path):
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            assert time.time() < deadline, "mlflow server did not start within 90 s"
            time.sleep(0.5)
        out = tmp_path / "run"
        out.mkdir()
        parent, child = _exercise(Tracker(uri, "spinebench-server-test", out), out)
        _check_store(uri, parent, child)
        assert not (out / "mlflow.db").exists()
        assert any((tmp_path / "server-artifacts").rglob("records.csv"))

        # A whole (one-epoch) benchmark run logging to the server.
        from mlflow.tracking import MlflowClient

        from spinebench.benchmark.config_files import load_experiment
        from spinebench.benchmark.runner import run_benchmark

        cfg = load_experiment("smoke", ["methods=[di2in]", f"data.cache_dir={tmp_path / 'cache'}",
                                        "trainer.max_epochs=1", "tracking.experiment=server-run"])
        before = os.environ.get("MLFLOW_TRACKING_URI")
        run_benchmark(cfg, tmp_path / "bench", tracking_uri=uri)
        assert os.environ.get("MLFLOW_TRACKING_URI") == before  # logging the models left no global URI behind
        client = MlflowClient(tracking_uri=uri)
        runs = client.search_runs([client.get_experiment_by_name("server-run").experiment_id])
        child = next(r for r in runs if "mlflow.parentRunId" in r.data.tags)
        assert "test/id_rate" in child.data.metrics and "train/loss" in child.data.metrics
        model_id = child.data.tags["spinebench.model_uri"].removeprefix("models:/")
        assert client.get_logged_model(model_id).source_run_id == child.info.run_id  # on the server's store
        assert {a.path for a in client.list_artifacts(child.info.run_id)} >= {"records.csv", "best.ckpt"}
        assert not (tmp_path / "bench" / "mlflow.db").exists()
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers: the group we started
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.mark.slow
def test_run_with_unreachable_server_fails_before_training(tmp_path):
    port = _free_port()
    out = subprocess.run(
        [sys.executable, "-m", "spinebench", "run", "--config", "smoke", "--out", str(tmp_path / "run"),
         "--tracking-uri", f"http://127.0.0.1:{port}"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"spinebench run: error: MLflow tracking server http://127.0.0.1:{port} is unreachable ([Errno 111] "
        "Connection refused); start it, or drop --tracking-uri to use the local sqlite store"
    ]
    assert not (tmp_path / "run").exists()
