"""Shared fixtures. Tests that read the real files beside the project skip with a reason when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_REAL = REPO_ROOT.parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def shared_real() -> Path:
    """``../shared/data/real``: small real CTs, masks and centroid tables (present in CI, not in a user's clone)."""
    if not SHARED_REAL.is_dir():
        pytest.skip(f"real test data not found at {SHARED_REAL} (only present beside the project checkout, e.g. in CI)")
    return SHARED_REAL


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory):
    """One throw-away MLflow store for the session's tracking runs, subprocesses included (without it they would
    write to ``MLFLOW_TRACKING_URI`` or to ``mlflow.db`` in the checkout). Tests of the default store unset it."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(autouse=True)
def _restore_mlflow_default(mlflow_store):
    """Lightning's MLFlowLogger sets MLflow's global tracking URI (and the variable); a test that drives one
    directly must not change the store the next test's runs default to."""
    yield
    if os.environ.get("MLFLOW_TRACKING_URI") != mlflow_store:
        import mlflow

        mlflow.set_tracking_uri(mlflow_store)


@pytest.fixture(scope="session")
def smoke_cache(tmp_path_factory) -> Path:
    """The preprocessing cache of the tiny runs of tests/test_runner.py and tests/test_finished_run.py."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, smoke_cache) -> Path:
    """One tiny di2in run (``smoke`` config, 8 mm phantoms of 6-10 vertebrae, a few steps), trained once per session
    and shared by the tests that run or use a finished run. Tests may add evaluations to it, never change its files."""
    from spinebench.benchmark.config_files import load_experiment
    from spinebench.benchmark.runner import run_benchmark
    from tests.run_fixtures import smoke_sets

    out = tmp_path_factory.mktemp("run") / "smoke"
    run_benchmark(load_experiment("smoke", smoke_sets(smoke_cache)), out)
    return out
