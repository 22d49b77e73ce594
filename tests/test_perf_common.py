"""Benchmarks refuse to record figures taken on a busy machine, unless forced, and say which it was."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

COMMON = Path(__file__).resolve().parents[1] / "perf" / "common.py"


@pytest.fixture()
def common(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("perf_common_under_test", COMMON)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "RESULTS_DIR", tmp_path)
    return module


def test_busy_machine_is_refused_and_the_old_fragment_kept(common, tmp_path, capsys):
    (tmp_path / "x.md").write_text("old figures\n")
    common.LOAD_AT_START, common.FORCED = 3.2, False
    with pytest.raises(SystemExit) as stop:
        common.write_fragment("x", "## new\n")
    assert stop.value.code == 3
    assert (tmp_path / "x.md").read_text() == "old figures\n"
    assert "load average 3.20" in capsys.readouterr().err


def test_forced_or_idle_runs_record_their_load(common, tmp_path):
    common.LOAD_AT_START, common.FORCED = 3.2, True
    assert "recorded with --force" in common.write_fragment("x", "## new\n").read_text()
    common.LOAD_AT_START, common.FORCED = 0.4, False
    text = common.write_fragment("y", "## idle\n").read_text()
    assert "Load: 1-minute load average 0.40 when the script started." in text and "--force" not in text


def test_commands_name_run_folders_as_the_repository_sees_them(common, tmp_path, monkeypatch):
    # a fragment's command is copied by readers: a run inside the clone reads runs/NAME, wherever the clone is
    # (a symlinked run folder keeps its name: no resolving)
    monkeypatch.setattr(common, "REPO_ROOT", tmp_path / "repo")
    (tmp_path / "repo" / "runs").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "repo" / "runs" / "default-s1").symlink_to(tmp_path / "elsewhere")
    assert common.shown_path(tmp_path / "repo" / "runs" / "default-s1") == Path("runs/default-s1")
    monkeypatch.chdir(tmp_path / "repo")
    assert common.shown_path(Path("runs/default-s1")) == Path("runs/default-s1")
    assert common.shown_path(tmp_path / "elsewhere") == tmp_path / "elsewhere"
