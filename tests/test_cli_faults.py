"""Faults and wrong values of every command end in one line naming the file or option, exit 2, and nothing
half-written (issue "Bad input and faults", classes 1 and 2)."""

from __future__ import annotations

import resource
import subprocess
import sys

import numpy as np
import pytest

from spinebench.benchmark.cli import main
from spinebench.datamodules.ct_io import write_image
from spinebench.datamodules.geometry import Geometry


@pytest.fixture()
def inputs(tmp_path):
    """A small mask with T12 and L1 (for centroids), its centroid file (for convert) and a file named like a
    folder (and a folder named like a file)."""
    geometry = Geometry((8, 20, 12), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    mask = np.zeros(geometry.shape, np.uint8)
    mask[2:6, 3:8, 3:9] = 19
    mask[2:6, 11:17, 3:9] = 20
    write_image(tmp_path / "mask.nii.gz", mask, geometry)
    assert main(["centroids", str(tmp_path / "mask.nii.gz"), "--out", str(tmp_path / "c.csv")]) == 0
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "adir.json").mkdir()
    return tmp_path


def _one_line(capfd, argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse refuses a value while parsing
        code = exc.code
    out, err = capfd.readouterr()
    return code, err


def _leftovers(root):
    return sorted(p.name for p in root.rglob("*") if ".part" in p.name)


OS_FAULTS = [  # (argv with {d} the test folder, the path the line must name, the reason)
    (["centroids", "{d}/mask.nii.gz", "--out", "{d}/afile/o.json"], "{d}/afile:", "is a file, not a folder"),
    (["centroids", "{d}/mask.nii.gz", "--out", "{d}/adir.json"], "{d}/adir.json:", "is a folder, not a file"),
    (["convert", "{d}/c.csv", "--to", "verse", "--image", "{d}/mask.nii.gz", "--out", "{d}/afile/sub/o.json"],
     "{d}/afile:", "is a file, not a folder"),
    (["phantom", "--n", "1", "--spacing", "8", "--out", "{d}/afile/ph"], "{d}/afile:", "is a file, not a folder"),
    (["leaderboard", "{d}/recs/records.csv", "--out", "{d}/afile", "--quiet"], "{d}/afile:", "is a file"),
]


@pytest.mark.parametrize("argv, named, reason", OS_FAULTS, ids=[f[0][0] + str(i) for i, f in enumerate(OS_FAULTS)])
def test_os_errors_are_one_line_naming_the_path(inputs, capfd, argv, named, reason, tmp_path):
    if argv[0] == "leaderboard":
        _records(inputs / "recs")
    argv = [a.format(d=inputs) for a in argv]
    code, err = _one_line(capfd, argv)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"spinebench {argv[0]}: error: "), err
    assert named.format(d=inputs) in err and reason in err, err
    assert _leftovers(inputs) == []


def _records(folder):
    """A records.csv of synthetic predictions on 3 cases, written by the package's own writer."""
    from leaderboard_fixtures import write_run  # tests/leaderboard_fixtures.py

    write_run(folder, n_cases=3)


WRONG_VALUES = [
    (["phantom", "--n", "1", "--set", "metal_rate=abc"], "metal_rate", "expected a number"),
    (["phantom", "--n", "1", "--set", "fov_vertebrae=[3]"], "fov_vertebrae", "expected 2 values"),
    (["phantom", "--n", "1", "--set", "noise_hu=nan"], "noise_hu", ""),
    (["phantom", "--n", "1", "--spacing", "nan"], "--spacing", "finite"),
    (["phantom", "--n", "1", "--spacing", "inf"], "--spacing", "finite"),
    (["phantom", "--n", "0"], "--n", ">= 1"),
    (["phantom", "--n", "x"], "--n", "integer"),
    (["leaderboard", "{d}/mask.nii.gz", "--quiet"], "mask.nii.gz", "not a records CSV"),
    (["leaderboard", "{d}/recs/records.csv", "--bootstrap", "5"], "--bootstrap", ">= 10"),
    (["leaderboard", "{d}/recs/records.csv", "--threshold-mm", "nan"], "--threshold-mm", "finite"),
    (["leaderboard", "{d}/recs/records.csv", "--threshold-mm", "-1"], "--threshold-mm", "> 0"),
    (["predict", "{d}/mask.nii.gz", "--run", "{d}", "--threads", "0"], "--threads", ">= 1"),
    (["tune", "--config", "tune_di2in", "--n-trials", "-1"], "--n-trials", ">= 1"),
    (["tune", "--config", "tune_di2in", "--timeout", "nan"], "--timeout", "finite"),
]


@pytest.mark.parametrize("argv, named, reason", WRONG_VALUES, ids=[" ".join(w[0][:1] + w[0][-2:]) for w in WRONG_VALUES])
def test_wrong_values_are_refused_where_parsed(inputs, capfd, argv, named, reason):
    _records(inputs / "recs")
    out = inputs / "out"
    argv = [a.format(d=inputs) for a in argv] + ["--out", str(out)]
    code, err = _one_line(capfd, argv)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"spinebench {argv[0]}: error: "), err
    assert "Traceback" not in err and named in err and reason in err, err
    assert not out.exists()


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # writes past 200 kB fail: a full disk


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path):
    """Files beyond 200 kB fail (EFBIG, as ENOSPC on a full disk): the phantom's 2 mm CT cannot be written."""
    argv = [sys.executable, "-m", "spinebench", "phantom", "--n", "1", "--spacing", "2", "--out", str(tmp_path / "ph")]
    done = subprocess.run(argv, capture_output=True, text=True, preexec_fn=_limit_file_size, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()  # ITK's own complaint about the short write is held back
    assert len(lines) == 1 and lines[0].startswith("spinebench phantom: error: "), done.stderr
    assert lines[0].endswith("limit?)") and "_ct.nii.gz" in lines[0], lines[0]
    assert _leftovers(tmp_path) == [] and not list((tmp_path / "ph").glob("*ct.nii.gz"))


def test_an_output_never_replaces_an_input(inputs, capfd):
    mask = inputs / "mask.nii.gz"
    before = mask.read_bytes()
    cases = [
        ["centroids", mask, "--out", mask],
        ["convert", inputs / "c.csv", "--to", "csv", "--image", mask, "--out", inputs / "c.csv"],
        ["convert", inputs / "c.csv", "--to", "verse", "--image", mask, "--out", inputs / "adir.json" / ".." / "mask.nii.gz"],
    ]
    for argv in cases:
        code, err = _one_line(capfd, argv)
        assert code == 2 and err.count("\n") == 1 and "is the input" in err, err
    assert mask.read_bytes() == before and (inputs / "c.csv").read_text().startswith("label,")


def test_silently_accepted_inputs_are_errors_naming_the_file(inputs, capfd):
    geometry = Geometry((8, 20, 12), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    mask = np.zeros(geometry.shape, np.uint8)
    mask[2:6, 3:8, 3:9] = 19
    mask[2:6, 11:17, 3:9] = 99  # not a VerSe label: another tool's map
    write_image(inputs / "m99.nii.gz", mask, geometry)
    code, err = _one_line(capfd, ["centroids", inputs / "m99.nii.gz", "--out", inputs / "o.json"])
    assert code == 2 and "m99.nii.gz" in err and "values 99 are not verse labels" in err, err
    # a format the output's suffix contradicts
    code, err = _one_line(capfd, ["convert", inputs / "c.csv", "--to", "csv", "--image", inputs / "mask.nii.gz",
                                  "--out", inputs / "o.json"])
    assert code == 2 and "o.json" in err and "means verse" in err, err
    # a truncated image that only lends its header
    big = Geometry((40, 60, 50), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))  # holds the centroids of c.csv
    noise = np.random.default_rng(0).integers(0, 1000, big.shape).astype(np.int16)  # compresses poorly
    write_image(inputs / "whole.nii.gz", noise, big)
    whole = (inputs / "whole.nii.gz").read_bytes()
    (inputs / "cut.nii.gz").write_bytes(whole[: len(whole) // 2])
    code, err = _one_line(capfd, ["convert", inputs / "c.csv", "--to", "verse", "--image", inputs / "cut.nii.gz",
                                  "--out", inputs / "o.json"])
    assert code == 2 and "cut.nii.gz" in err and "truncated" in err, err
    assert not (inputs / "o.json").exists()


@pytest.mark.parametrize("bad, reason", [(np.nan, "NaN or infinite"), (-2000.0, "constant image")])
def test_a_ct_without_anatomy_is_refused(bad, reason):
    from spinebench.datamodules.errors import InputError
    from spinebench.datamodules.preprocess import PreprocessParams, preprocess_volume

    ct = np.full((10, 12, 14), bad, np.float32)
    geometry = Geometry(ct.shape, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    with pytest.raises(InputError, match=f"scan.mha: .*{reason}"):
        preprocess_volume(ct, geometry, PreprocessParams(spacing_mm=4.0), "scan.mha")


@pytest.mark.parametrize("sets, message", [
    (["data.spacing_mm=-1"], "spacing_mm must be > 0"),
    (["data.source=folder"], "needs data.folder.root"),
    (["data.phantom.n_train=0"], "lists no train case"),
    (["test_sets.real.source=folder"], "test_sets.real: data source 'folder' needs test_sets.real.folder.root"),
    (["test_sets.more.source=phantom", "test_sets.more.phantom.n_test=0"], "test_sets.more: the phantom source "
                                                                          "lists no test case"),
])
def test_run_validates_everything_before_writing(tmp_path, capfd, sets, message):
    out = tmp_path / "run"
    argv = ["run", "--config", "smoke", "--out", out] + [a for s in sets for a in ("--set", s)]
    code, err = _one_line(capfd, argv)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_tune_with_an_unusable_storage_is_one_line_and_leaves_no_folder(tmp_path, capfd):
    out = tmp_path / "tune"
    code, err = _one_line(capfd, ["tune", "--config", "tune_di2in", "--storage", "bogus://x", "--out", out])
    assert code == 2 and err.count("\n") == 1 and "--storage bogus://x" in err, err
    assert not out.exists()


ABSURD = [  # requests this (or any) machine cannot hold: refused before anything is allocated or written
    (["phantom", "--n", "1", "--spacing", "0.01", "--out", "{d}/o"], "of memory"),
    (["phantom", "--n", "1000000000", "--spacing", "2", "--out", "{d}/o"], "of disk"),
    (["phantom", "--n", "1", "--spacing", "1e6", "--out", "{d}/o"], "--spacing: must be <= 16"),
    (["leaderboard", "{d}/recs/records.csv", "--bootstrap", "1000000000", "--out", "{d}/o"], "of memory"),
    (["run", "--config", "smoke", "--set", "data.spacing_mm=0.01", "--out", "{d}/o"], "of memory"),
]


@pytest.mark.parametrize("argv, reason", ABSURD, ids=[a[0][0] + str(i) for i, a in enumerate(ABSURD)])
def test_absurd_sizes_are_refused_with_what_they_would_need(inputs, capfd, argv, reason):
    _records(inputs / "recs")
    code, err = _one_line(capfd, [a.format(d=inputs) for a in argv])
    assert code == 2 and err.count("\n") == 1 and reason in err, err
    assert not (inputs / "o").exists()


def test_resource_checks_say_what_is_needed_and_what_there_is(tmp_path):
    from spinebench.datamodules.errors import InputError
    from spinebench.datamodules.resources import available_memory, free_disk, require_disk, require_memory

    assert available_memory() > 0 and free_disk(tmp_path / "not" / "yet") > 0
    require_memory(1024, "a small thing")  # fits
    with pytest.raises(InputError, match=r"^a huge thing needs about 1\.0 PiB of memory; this machine has .* available"):
        require_memory(2**50, "a huge thing")
    with pytest.raises(InputError, match=r"needs about 1\.0 PiB of disk in .*; .* is free there"):
        require_disk(2**50, tmp_path, "many files")


def test_the_prediction_preview_shows_the_ct_at_its_own_resolution(tmp_path):
    """``predict --preview`` draws the input CT in canonical orientation at its voxel size, not the run's grid."""
    from spinebench.benchmark.prediction import preview_volume, write_preview
    from spinebench.datamodules.centroids import Centroids
    from spinebench.datamodules.ct_io import read_sitk_image

    geometry = Geometry((30, 40, 50), (2.5, 0.7, 0.7), (0.0, 0.0, 0.0), np.diag([1.0, -1.0, 1.0]))
    ct = np.random.default_rng(0).integers(-1000, 1500, geometry.shape).astype(np.int16)
    write_image(tmp_path / "ct.nii.gz", ct, geometry)
    original, read_geometry = read_sitk_image(tmp_path / "ct.nii.gz")
    volume, canonical = preview_volume(original, read_geometry)
    assert sorted(volume.shape) == sorted(geometry.shape)
    np.testing.assert_allclose(sorted(canonical.spacing_mm), [0.7, 0.7, 2.5], rtol=1e-6)  # not the run's grid
    centre = canonical.vox_to_world(np.array([[15.0, 20.0, 25.0]]))[0]
    write_preview(tmp_path / "p.png", volume, canonical, Centroids({"L1": centre}), title="t")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
