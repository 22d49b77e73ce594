"""Where a study lives and how its workers take turns: storage URLs, the study-wide lock, dead trials.

``--storage`` is an Optuna RDB URL (``sqlite:///...``, ``postgresql://...``, ``mysql+pymysql://...``; anything
with ``://``) or the path of a journal file (``optuna.storages.JournalStorage`` with ``JournalFileBackend``,
for several processes on one machine or a shared file system).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.trial import TrialState

from spinebench.datamodules.errors import InputError

WORKER_ATTR = "spinebench:worker"  # "host:pid" of the process running a trial


class StorageError(InputError):
    """A study storage that cannot be opened."""


def default_storage(out_dir: Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / 'optuna.db'}"


def is_rdb_url(storage: str) -> bool:
    return "://" in storage


def check_storage_url(storage: str) -> None:
    """Refuse an RDB URL whose database kind or driver SQLAlchemy does not know, before anything is created."""
    if not is_rdb_url(storage):
        return
    import sqlalchemy

    try:
        sqlalchemy.engine.make_url(storage).get_dialect()
    except (sqlalchemy.exc.NoSuchModuleError, ImportError) as exc:  # (NoSuchModuleError is an ArgumentError)
        raise StorageError(f"--storage {storage}: unknown database kind or missing driver ({exc})") from None
    except sqlalchemy.exc.ArgumentError as exc:
        raise StorageError(f"--storage {storage}: not a database URL ({exc})") from None


def open_storage(storage: str) -> optuna.storages.BaseStorage:
    """An RDB storage with heartbeat (sqlite, PostgreSQL, MySQL URLs) or a journal file for multi-process use."""
    if is_rdb_url(storage):
        engine_kwargs = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {}
        if storage.startswith("sqlite:///"):
            Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat: stable since 2.9
                return optuna.storages.RDBStorage(storage, engine_kwargs=engine_kwargs, heartbeat_interval=30,
                                                  grace_period=120)
        except (ImportError, ModuleNotFoundError) as exc:
            raise StorageError(f"--storage {storage}: the database driver is not installed ({exc})") from None
        except Exception as exc:  # sqlalchemy: bad URL, unreachable server, refused credentials
            message = f"--storage {storage}: cannot open the study database: {exc}".replace("\n", " ")
            raise StorageError(message) from None
    path = Path(storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


class StudyLock:
    """A mutex shared by every worker of one storage, held while counting trials and creating the next one.

    sqlite and journal files: ``flock`` on a file beside the database (released by the kernel if a worker dies).
    PostgreSQL: a session advisory lock; MySQL: ``GET_LOCK``. Other URLs: no lock (warned).
    """

    def __init__(self, storage: str, study_name: str) -> None:
        self.storage, self.study_name = storage, study_name
        self._fd: int | None = None
        self._conn = None

    def acquire(self) -> None:
        if self.storage.startswith("sqlite:///") or not is_rdb_url(self.storage):
            path = self.storage.removeprefix("sqlite:///") + ".tune-lock"
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        elif self.storage.startswith(("postgresql", "mysql")):
            import sqlalchemy

            key = int.from_bytes(self.study_name.encode()[:8].ljust(8, b"\0"), "big", signed=True)
            self._conn = sqlalchemy.create_engine(self.storage, poolclass=sqlalchemy.pool.NullPool).connect()
            if self.storage.startswith("postgresql"):
                self._conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            else:
                self._conn.execute(sqlalchemy.text("SELECT GET_LOCK(:k, -1)"), {"k": f"spinebench:{self.study_name}"})
        else:
            optuna.logging.get_logger(__name__).warning(
                "no study lock for %s: parallel workers may run a few trials over n_trials", self.storage)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._conn is not None:
            import sqlalchemy

            postgres = self.storage.startswith("postgresql")
            sql = "SELECT pg_advisory_unlock_all()" if postgres else "SELECT RELEASE_ALL_LOCKS()"
            self._conn.execute(sqlalchemy.text(sql))
            self._conn.close()
            self._conn = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()


def fail_dead_local_trials(study: optuna.Study) -> None:
    """Mark FAIL the RUNNING trials whose process on this host is gone (journal storages have no heartbeat, and an
    RDB heartbeat only notices after its grace period)."""
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.system_attrs.get(WORKER_ATTR, "")
        owner_host, _, pid = owner.rpartition(":")
        if owner_host == host and pid.isdigit() and not _pid_alive(int(pid)):
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
                study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
