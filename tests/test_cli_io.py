"""``spinebench centroids`` and ``spinebench convert`` end to end, including every bad input of issue 2."""

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from spinebench.benchmark.cli import main
from spinebench.datamodules.centroids import Centroids, read_centroids, write_centroids
from spinebench.datamodules.ct_io import write_image
from spinebench.datamodules.geometry import Geometry

PIR_DIRECTION = np.array([[-1.0, 0, 0], [0, 0, 1], [0, -1, 0]])


@pytest.fixture()
def phantom_mask(tmp_path):
    """A small P-I-R mask with T12 and L1 boxes; returns (path, geometry)."""
    geometry = Geometry((12, 40, 16), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), PIR_DIRECTION)
    mask = np.zeros(geometry.shape, np.uint8)
    mask[3:9, 4:14, 4:12] = 19
    mask[3:9, 20:30, 4:12] = 20
    path = tmp_path / "mask.nii.gz"
    write_image(path, mask, geometry)
    return path, geometry


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_centroids_then_convert_through_every_format(phantom_mask, tmp_path, capsys):
    mask_path, geometry = phantom_mask
    code, out, err = _run(capsys, "centroids", mask_path, "--out", tmp_path / "c_ctd.json")
    assert code == 0 and "wrote 2 centroids (T12, L1)" in out and err == ""
    entries = json.loads((tmp_path / "c_ctd.json").read_text())
    assert entries[0] == {"direction": ["P", "I", "R"]}
    assert entries[1] == {"label": 19, "X": 7.5, "Y": 8.5, "Z": 5.5}  # box centre in file (x, y, z) voxels
    for fmt, name in (("csv", "c.csv"), ("lml", "c.lml"), ("verse", "back_ctd.json")):
        source = tmp_path / ("c_ctd.json" if fmt == "csv" else "c.csv" if fmt == "lml" else "c.lml")
        code, out, err = _run(capsys, "convert", source, "--image", mask_path, "--to", fmt, "--out", tmp_path / name)
        assert code == 0 and err == "", err
    assert json.loads((tmp_path / "back_ctd.json").read_text()) == entries
    # without --to the output's suffix names the format, as for centroids and predict
    code, out, err = _run(capsys, "convert", tmp_path / "c.lml", "--image", mask_path,
                          "-o", tmp_path / "again_ctd.json")
    assert code == 0 and "(verse)" in out and json.loads((tmp_path / "again_ctd.json").read_text()) == entries
    code, out, err = _run(capsys, "convert", tmp_path / "c.lml", "--image", mask_path, "-o", tmp_path / "x.txt")
    assert code == 2 and "x.txt" in err and "suffix" in err and not (tmp_path / "x.txt").exists()
    code, _, _ = _run(capsys, "centroids", mask_path, "--format", "csv", "--out", tmp_path / "d.txt")
    assert code == 0 and (tmp_path / "d.txt").read_text().startswith("label,x,y,z\nT12,")


def _bad_inputs(tmp_path, mask_path, geometry):
    """(argv, file named in the error, problem) for each bad input of the issue."""
    data = mask_path.read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(data[: len(data) // 2])
    raw = gzip.decompress(data)
    (tmp_path / "trunc.nii").write_bytes(raw[:-50])
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6), np.uint8)), str(tmp_path / "flat.nii.gz"))
    vol = sitk.GetImageFromArray(np.zeros((3, 5, 6), np.uint8))
    sitk.WriteImage(sitk.JoinSeries([vol, vol]), str(tmp_path / "time.nii.gz"))
    write_image(tmp_path / "empty.nii.gz", np.zeros(geometry.shape, np.uint8), geometry)
    (tmp_path / "label.csv").write_text("label,x,y,z\nT12,10,10,10\nQ4,1,2,3\n")
    (tmp_path / "line.lml").write_text("header\n190\tT12\t1.0\t2.0\n")
    (tmp_path / "nodir_ctd.json").write_text('[{"label": 19, "X": 7.5, "Y": 8.5, "Z": 5.5}]')
    write_centroids(tmp_path / "far.csv", Centroids({"L1": geometry.vox_to_world((5, 500, 5))}))
    (tmp_path / "not_dicom").mkdir()
    (tmp_path / "not_dicom" / "notes.txt").write_text("no images here")
    out = tmp_path / "out.json"
    conv = ["--image", mask_path, "--to", "verse", "--out", out]
    return [
        (["centroids", tmp_path / "nope.nii.gz", "--out", out], "nope.nii.gz", "no such file"),
        (["centroids", tmp_path / "trunc.nii.gz", "--out", out], "trunc.nii.gz", "truncated"),
        (["centroids", tmp_path / "trunc.nii", "--out", out], "trunc.nii", "truncated"),
        (["centroids", tmp_path / "not_dicom", "--out", out], "not_dicom", "no DICOM series"),
        (["centroids", tmp_path / "flat.nii.gz", "--out", out], "flat.nii.gz", "2D image"),
        (["centroids", tmp_path / "time.nii.gz", "--out", out], "time.nii.gz", "4D image"),
        (["centroids", tmp_path / "empty.nii.gz", "--out", out], "empty.nii.gz", "no vertebra labels"),
        (["convert", tmp_path / "label.csv", *conv], "label.csv", "unknown vertebra label 'Q4'"),
        (["convert", tmp_path / "line.lml", *conv], "line.lml", "line 2: expected 5 fields"),
        (["convert", tmp_path / "nodir_ctd.json", *conv], "nodir_ctd.json", "direction entry"),
        (["convert", tmp_path / "far.csv", *conv], "far.csv", "centroid L1"),
        (["convert", tmp_path / "far.csv", "--image", tmp_path / "nope.mha", "--to", "verse", "--out", out],
         "nope.mha", "no such file"),
    ]


def test_every_bad_input_is_one_line_exit_2_and_no_output(phantom_mask, tmp_path, capfd):
    mask_path, geometry = phantom_mask
    for argv, named, problem in _bad_inputs(tmp_path, mask_path, geometry):
        code, out, err = _run(capfd, *argv)  # capfd: ITK writes its warnings to file descriptor 2
        assert code == 2, (argv, err)
        assert err.count("\n") == 1 and err.startswith(f"spinebench {argv[0]}: error: "), err
        assert named in err and problem in err, (problem, err)
        assert not (tmp_path / "out.json").exists()
        assert not [p for p in tmp_path.iterdir() if ".part" in p.name]


@pytest.mark.slow
def test_console_script_reports_without_traceback(phantom_mask, tmp_path):
    mask_path, _ = phantom_mask
    (tmp_path / "nodir_ctd.json").write_text('[{"label": 19, "X": 7.5, "Y": 8.5, "Z": 5.5}]')
    argv = ["convert", str(tmp_path / "nodir_ctd.json"), "--image", str(mask_path), "--to", "csv",
            "--out", str(tmp_path / "o.csv")]
    done = subprocess.run([sys.executable, "-m", "spinebench", *argv], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "nodir_ctd.json" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.needs_shared
def test_real_masks_through_the_cli(shared_real, tmp_path, capsys):
    folder = shared_real / "tptbox_sample_ct"
    vert, sub = folder / "sub-ct_seg-vert_label-22_msk.nii.gz", folder / "sub-ct_seg-subreg_label-22_msk.nii.gz"
    code, out, _ = _run(capsys, "centroids", vert, "--out", tmp_path / "whole.csv")
    assert code == 0 and "(L2, L3, L4)" in out
    code, _, _ = _run(capsys, "centroids", vert, "--subregions", sub, "--format", "lml", "--out", tmp_path / "b.lml")
    assert code == 0
    whole, body = read_centroids(tmp_path / "whole.csv"), read_centroids(tmp_path / "b.lml")
    assert all(body[n][1] < whole[n][1] - 5 for n in whole)  # bodies anterior (LPS y smaller)
    # A subregion mask on another grid is refused.
    other = shared_real / "verse_cropped_elkhashabs" / "sub-verse006_seg-vert_msk.nii.gz"
    code, _, err = _run(capsys, "centroids", vert, "--subregions", other, "--out", tmp_path / "x.csv")
    assert code == 2 and "differs from" in err and not (tmp_path / "x.csv").exists()
    # verse007 CT: VerSe json -> CSV against the CT (same grid as the mask) keeps every centroid.
    v7 = shared_real / "verse_cropped_elkhashabs"
    assert _run(capsys, "centroids", v7 / "sub-verse007_seg-vert_msk.nii.gz", "--out", tmp_path / "v7.json")[0] == 0
    code, out, _ = _run(capsys, "convert", tmp_path / "v7.json", "--image", v7 / "sub-verse007_ct.nii.gz",
                        "--to", "csv", "--out", tmp_path / "v7.csv")
    assert code == 0 and read_centroids(tmp_path / "v7.csv").names == ("T9", "T10", "T11", "T12", "L1", "L2", "L3")
