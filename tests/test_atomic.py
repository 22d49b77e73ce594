"""Written files follow the umask (readable by colleagues), and a failed write leaves nothing behind."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from spinebench.benchmark.cli import main
from spinebench.datamodules.atomic import atomic_path, new_file_mode, write_text_atomic
from spinebench.datamodules.ct_io import write_image
from spinebench.datamodules.geometry import Geometry


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_get_the_mode_of_any_new_file(tmp_path, umask):
    expected = 0o666 & ~umask
    assert new_file_mode() == expected
    assert _mode(write_text_atomic(tmp_path / "a.json", "{}")) == expected
    # a writer that is handed the temporary path (SimpleITK here) keeps it too
    image = tmp_path / "ct.nii.gz"
    write_image(image, np.zeros((4, 5, 6), np.int16), Geometry((4, 5, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3)))
    assert _mode(image) == expected
    plain = tmp_path / "plain.txt"  # what open() gives, for reference
    plain.write_text("x")
    assert _mode(plain) == expected


def test_a_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.csv") as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert list(tmp_path.iterdir()) == []


def test_command_outputs_are_readable_by_the_group_and_others(tmp_path, umask):
    """A whole command (phantom with its preview, which also writes through matplotlib) follows the umask."""
    assert main(["phantom", "--n", "1", "--spacing", "8", "--preview", "--out", str(tmp_path / "ph")]) == 0
    files = sorted(p for p in (tmp_path / "ph").rglob("*") if p.is_file())
    assert {p.suffix for p in files} >= {".gz", ".json", ".csv", ".png"}
    assert {p.name: _mode(p) for p in files} == {p.name: 0o666 & ~umask for p in files}
