"""MLflow tracking of a benchmark run: one parent run per run, one child run per (method, seed) cell.

The store is shared by every run, as MLflow itself does it: ``MLFLOW_TRACKING_URI`` when set, otherwise
``sqlite:///mlflow.db`` in the working folder (MLflow's own default since 3.7), with artifacts in ``mlartifacts``
beside a sqlite file; ``mlflow ui`` started in that folder compares all runs. One experiment per config name
(``tracking.experiment`` overrides it). Runs are tagged with the source (``mlflow.source.*``: command, git
commit), the config hash and the split hash. ``--tracking-uri`` takes any MLflow URI; an HTTP server is probed at
start-up so an unreachable one fails before any training. Only rank 0 tracks under DDP: the ``Tracker`` of
another rank is disabled and every call is a no-op. The MlflowClient API is used explicitly (no fluent global
active run), so child runs and Lightning's MLFlowLogger share run ids without hidden state.

A new sqlite store starts as a copy of an empty, migrated store kept per MLflow version in
``<cache root>/mlflow`` (``datamodules.cache_root``: SPINEBENCH_CACHE, else the XDG cache folder): MLflow's schema
migrations then run once per machine and version, not once per store (perf/bench_runner.py).
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from spinebench import __version__
from spinebench.datamodules.atomic import write_text_atomic
from spinebench.datamodules.cache_root import cache_root
from spinebench.datamodules.errors import InputError

STATE_FILE = "mlflow_run.json"
DEFAULT_STORE = "mlflow.db"  # in the working folder, as MLflow's own default
ARTIFACTS = "mlartifacts"  # beside a sqlite store's file, as ``mlflow server`` keeps them


class TrackingError(InputError):
    """The tracking store cannot be used (unreachable server, refused URI)."""


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<working folder>/mlflow.db`` (absolute, so the runs of
    one folder share it whatever folder a worker process starts in)."""
    return os.environ.get("MLFLOW_TRACKING_URI", "").strip() or f"sqlite:///{Path.cwd().resolve() / DEFAULT_STORE}"


def restore_default_uri(before: str | None) -> None:
    """Put ``MLFLOW_TRACKING_URI`` back to ``before`` (a run's value at its start). Lightning's ``MLFlowLogger``
    sets MLflow's global tracking URI, and with it that variable: without this, one run's explicit URI would
    become the default store of everything the process does next (``default_tracking_uri`` reads it)."""
    if os.environ.get("MLFLOW_TRACKING_URI") != before:
        import mlflow

        mlflow.set_tracking_uri(before)  # None unsets the variable and MLflow's global


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for any other store)."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def source_tags(manifest: Mapping[str, Any]) -> dict[str, str]:
    """MLflow's ``mlflow.source.*`` / ``mlflow.user`` tags and ours from a run's manifest (``benchmark.manifest``)."""
    argv = [str(a) for a in manifest.get("command") or ["spinebench"]]
    program = Path(argv[0]).name
    command = ["spinebench" if program == "__main__.py" else program, *argv[1:]]  # python -m spinebench
    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": " ".join(command)[:500],
            "spinebench.config_hash": str(manifest.get("config_hash", "")),
            "spinebench.split_hash": str(manifest.get("case_ids_hash", ""))}
    git = manifest.get("git") or {}
    if git.get("commit"):
        tags["mlflow.source.git.commit"] = str(git["commit"])
        tags["spinebench.git_dirty"] = str(bool(git.get("dirty"))).lower()
    try:
        tags["mlflow.user"] = getpass.getuser()
    except (KeyError, OSError):  # no user name (e.g. an uid without a passwd entry in a container)
        pass
    return tags


def seed_sqlite_store(uri: str) -> bool:
    """Create the file of a new ``sqlite:///`` store as a copy of the migrated empty template (built on first
    use). Returns whether it did; an existing file, another kind of URI or any failure leaves MLflow to create
    the store itself, as without a template."""
    target = sqlite_file(uri)
    if target is None or target.exists() or not target.parent.is_dir():
        return False
    import mlflow
    from mlflow.tracking import MlflowClient

    template = cache_root() / "mlflow" / f"empty-{mlflow.__version__}.db"
    try:
        if not template.is_file():
            template.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=template.parent, prefix=".building-", suffix=".db")
            os.close(fd)
            os.unlink(tmp)  # MLflow creates the file: an empty existing file is not a database
            try:
                MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments()  # creates and migrates
                os.replace(tmp, template)
            finally:
                Path(tmp).unlink(missing_ok=True)
        part = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
        try:
            with open(template, "rb") as src, open(part, "xb") as dst:  # "x": mode 0o666 less the umask
                shutil.copyfileobj(src, dst)
            os.link(part, target)  # never replaces a store another process created meanwhile
        finally:
            part.unlink(missing_ok=True)
        return True
    except OSError:
        return False


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"trainer": {"max_epochs": 2}}`` -> ``{"trainer.max_epochs": 2}`` (lists kept as values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast (``TrackingError``) when an HTTP tracking server does not answer ``/health``."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            if response.status != 200:
                raise TrackingError(f"MLflow tracking server {uri} answered /health with HTTP {response.status}")
    except urllib.error.HTTPError as exc:
        raise TrackingError(f"MLflow tracking server {uri} answered /health with HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({reason}); start it, or drop --tracking-uri to use "
            "the local sqlite store"
        ) from None


class Tracker:
    """Parent/child MLflow runs of one benchmark run (a no-op when ``enabled`` is false)."""

    def __init__(self, uri: str, experiment: str, out_dir: Path, *, enabled: bool = True) -> None:
        self.uri = uri
        self.experiment_name = experiment
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.client = None
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None

    def start(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> None:
        """Check the store, create/reuse the experiment and the parent run (reused on resume)."""
        if not self.enabled:
            return
        check_reachable(self.uri)
        if self.uri.startswith(("http://", "https://")):
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        self.open_experiment()
        state = _read_state(self.out_dir)
        if state.get("uri") == self.uri and state.get("parent_run_id"):
            self.parent_run_id = state["parent_run_id"]
            self.client.update_run(self.parent_run_id, status="RUNNING")
        else:
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags or {}))
            self.parent_run_id = run.info.run_id
            self.log_params(self.parent_run_id, params)
            write_text_atomic(
                self.out_dir / STATE_FILE, json.dumps({"uri": self.uri, "parent_run_id": self.parent_run_id}) + "\n"
            )

    def open_experiment(self) -> None:
        """The client, and the experiment by name (created, with its artifacts beside a sqlite store, or
        restored when deleted). Any failure of the store is one ``TrackingError`` line, before any training."""
        from mlflow.tracking import MlflowClient

        seed_sqlite_store(self.uri)
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            experiment = self.client.get_experiment_by_name(self.experiment_name)
            if experiment is None:
                db = sqlite_file(self.uri)
                location = (db.resolve().parent / ARTIFACTS).as_uri() if db is not None else None
                try:
                    self.experiment_id = self.client.create_experiment(self.experiment_name,
                                                                       artifact_location=location)
                except Exception:  # another run of the same config created it a moment ago: the store is shared
                    experiment = self.client.get_experiment_by_name(self.experiment_name)
                    if experiment is None:
                        raise
                    self.experiment_id = experiment.experiment_id
            else:
                if experiment.lifecycle_stage == "deleted":
                    self.client.restore_experiment(experiment.experiment_id)
                self.experiment_id = experiment.experiment_id
        except TrackingError:
            raise
        except Exception as exc:  # MLflow raises many types for a bad store; report it in one line at start-up
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TrackingError(f"MLflow tracking URI {self.uri!r} cannot be used: {first}") from None

    def start_cell(self, cell_dir: Path, run_name: str, tags: Mapping[str, str], params: Mapping[str, Any]
                   ) -> str | None:
        """The child run of a cell; an interrupted cell's child run is reused on resume."""
        if not self.enabled:
            return None
        state = _read_state(cell_dir)
        if state.get("uri") == self.uri and state.get("run_id"):
            self.client.update_run(state["run_id"], status="RUNNING")
            return state["run_id"]
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={**tags, "mlflow.parentRunId": self.parent_run_id})
        self.log_params(run.info.run_id, params)
        write_text_atomic(Path(cell_dir) / STATE_FILE, json.dumps({"uri": self.uri, "run_id": run.info.run_id}) + "\n")
        return run.info.run_id

    def lightning_logger(self, run_id: str | None):
        """Lightning's MLFlowLogger writing into the cell's child run (the URI must be explicit)."""
        if not self.enabled or run_id is None:
            return None
        from lightning.pytorch.loggers import MLFlowLogger

        return MLFlowLogger(experiment_name=self.experiment_name, tracking_uri=self.uri, run_id=run_id)

    def log_params(self, run_id: str | None, params: Mapping[str, Any]) -> None:
        if not self.enabled or run_id is None:
            return
        from mlflow.entities import Param

        items = [Param(k[:250], _param_value(v)) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str | None, metrics: Mapping[str, float], step: int = 0) -> None:
        if not self.enabled or run_id is None:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_metric_key(k), float(v), now, step) for k, v in metrics.items() if _is_number(v)]
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i : i + 500])

    def log_artifacts(self, run_id: str | None, paths: Iterable[Path], artifact_path: str | None = None) -> None:
        if not self.enabled or run_id is None:
            return
        for path in paths:
            path = Path(path)
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), artifact_path=_join(artifact_path, path.name))
            elif path.is_file():
                self.client.log_artifact(run_id, str(path), artifact_path=artifact_path)

    def log_model(self, run_id: str | None, model, *, metadata: Mapping[str, Any], files: Iterable[Path] = ()
                  ) -> str | None:
        """``model`` (a torch module) as an MLflow model (``mlflow.pytorch``) logged by the run, with ``files``
        beside it and ``metadata`` in its ``MLmodel``; returns its URI (``models:/<id>``), also set as the run's
        tag ``spinebench.model_uri``. Through the client API only: MLflow's fluent ``log_model`` would need a
        global active run and tracking URI, which leak into everything the process does afterwards.

        Pickle serialisation (``mlflow.pytorch.load_model`` needs spinebench installed): the methods predict
        whole volumes through ``predict_volume``, which a traced ``pt2`` graph of ``forward`` would not hold."""
        if not self.enabled or run_id is None:
            return None
        import logging

        import mlflow.pytorch
        import torch
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus
        from mlflow.models import Model

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # copying extra_files: no bars
        logged = self.client.create_logged_model(self.experiment_id, name="model", source_run_id=run_id,
                                                 model_type="spinebench")
        quiet = logging.getLogger("mlflow.pytorch")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # the pickle-format caution: the checkpoint stays the weights-only source
        try:
            with tempfile.TemporaryDirectory() as tmp:
                mlflow.pytorch.save_model(
                    model, Path(tmp) / "model", serialization_format="pickle", metadata=dict(metadata),
                    mlflow_model=Model(artifact_path="model", run_id=run_id, model_id=logged.model_id),
                    pip_requirements=[f"torch=={torch.__version__}", f"spinebench=={_version()}"],
                    extra_files=[str(p) for p in files if Path(p).is_file()],
                )  # fmt: skip
                self.client.log_model_artifacts(logged.model_id, str(Path(tmp) / "model"))
        except BaseException:
            self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
            raise
        finally:
            quiet.setLevel(level)
        self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        self.client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        uri = f"models:/{logged.model_id}"
        self.client.set_tag(run_id, "spinebench.model_uri", uri)
        return uri

    def end(self, run_id: str | None, status: str = "FINISHED") -> None:
        if self.enabled and run_id is not None:
            self.client.set_terminated(run_id, status=status)


def _version() -> str:
    return __version__


def _read_state(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(folder) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _param_value(v: Any) -> str:
    text = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return text if len(text) <= 6000 else text[:5997] + "..."


def _metric_key(key: str) -> str:
    # MLflow keys allow alphanumerics, _ - . space / ; other characters become _
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in key)


def _is_number(v: Any) -> bool:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return f == f and abs(f) != float("inf")


def _join(a: str | None, b: str) -> str:
    return f"{a}/{b}" if a else b
