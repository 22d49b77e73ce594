"""Atomic file writes: a reader never sees a half-written file, and a failed write leaves no file at all.

Files get the permissions any program's new files get (0666 less the umask), not ``mkstemp``'s private 0600, so
colleagues sharing a run folder or a cache can read them. Used by every writer of spinebench (the leaderboard's
too).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def new_file_mode() -> int:
    """0666 less this process's umask: the mode ``open(path, "w")`` would give a new file."""
    try:  # Linux >= 4.7 reports the umask without changing it (os.umask would, briefly, for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def ensure_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` and its parents if needed; a file in the way is named as the error."""
    folder = Path(folder)
    for part in [*reversed(folder.parents), folder]:
        if part.exists() and not part.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "is a file, not a folder", str(part))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed.

    The temporary name keeps the final suffixes (``.nii.gz``), so writers that pick a format from the
    file name work unchanged.
    """
    final = Path(path)
    if final.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(final))
    ensure_folder(final.parent)
    suffix = "".join(final.suffixes)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name.removesuffix(suffix)}.", suffix=f".part{suffix}",
                                   dir=final.parent)
    except OSError as exc:  # name the file the user asked for, not a temporary one or a parent
        raise _about(exc, final) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, new_file_mode())  # after the writer: some replace the file they were given
        os.replace(tmp_path, final)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and str(tmp_path) in (exc.filename, exc.filename2):
            raise _about(exc, final) from None
        raise


def _about(exc: OSError, final: Path) -> OSError:
    """The same error (type, errno, reason) about ``final``."""
    return type(exc)(exc.errno, exc.strerror or str(exc), str(final))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, value: object, *, indent: int = 2, sort_keys: bool = False) -> Path:
    """``value`` as a JSON file (atomic), numpy scalars and arrays, tuples and paths written as plain values."""
    return write_text_atomic(path, json.dumps(value, indent=indent, sort_keys=sort_keys, default=json_default) + "\n")


def json_default(value: object) -> object:
    """``json.dumps``'s ``default`` for the values spinebench writes: numpy scalars and arrays, tuples, paths."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a numpy scalar, without importing numpy
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
