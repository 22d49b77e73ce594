"""tools/real_ct_sensitivity.py: the stretched copies of a folder of CTs and the leaderboard rows it reads."""

import csv
import importlib.util
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from spinebench.datamodules.errors import InputError

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "real_ct_sensitivity.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("real_ct_sensitivity", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _image(values: np.ndarray, spacing, origin, direction) -> sitk.Image:
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def test_scaled_copy_stretches_images_about_the_world_origin(tool, tmp_path):
    src = tmp_path / "real"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    ct = rng.integers(-1000, 1500, (5, 6, 7)).astype(np.int16)
    mask = (ct > 500).astype(np.uint8) * 20
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    sitk.WriteImage(_image(ct, (0.8, 0.9, 3.0), (10.0, -20.0, 35.0), direction), str(src / "sub" / "a_ct.nii.gz"))
    sitk.WriteImage(_image(mask, (0.8, 0.9, 3.0), (10.0, -20.0, 35.0), direction), str(src / "sub" / "a_msk.nii.gz"))
    (src / "b.json").write_text('[{"direction": ["R", "A", "S"]}, {"label": 20, "X": 1.5, "Y": 2.0, "Z": 3.0}]')

    tool.scaled_copy(src, tmp_path / "out", 1.25)

    for name, values in (("a_ct.nii.gz", ct), ("a_msk.nii.gz", mask)):
        image = sitk.ReadImage(str(tmp_path / "out" / "sub" / name))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), values)
        np.testing.assert_allclose(image.GetSpacing(), (1.0, 1.125, 3.75))
        np.testing.assert_allclose(image.GetOrigin(), (12.5, -25.0, 43.75))
        np.testing.assert_allclose(image.GetDirection(), direction)
        # a voxel's world position is 1.25 times the original one
        original = sitk.ReadImage(str(src / "sub" / name))
        np.testing.assert_allclose(image.TransformIndexToPhysicalPoint((4, 5, 3)),
                                   1.25 * np.array(original.TransformIndexToPhysicalPoint((4, 5, 3))))
    assert (tmp_path / "out" / "b.json").read_bytes() == (src / "b.json").read_bytes()  # voxel coordinates


def test_scaled_copy_refuses_centroids_in_millimetres(tool, tmp_path):
    src = tmp_path / "real"
    src.mkdir()
    (src / "a_ctd.csv").write_text("label,x,y,z\nL1,1,2,3\n")
    with pytest.raises(InputError, match="a_ctd.csv: centroids in millimetres"):
        tool.scaled_copy(src, tmp_path / "out", 1.1)
    assert tool.main(["--run", str(tmp_path / "run"), "--real", str(src), "--scales", "1.1"]) == 2


def test_headline_reads_the_measured_all_region_rows_of_one_dataset(tool, tmp_path):
    path = tmp_path / "leaderboard.csv"
    columns = ["dataset", "kind", "method", "region", "condition", "id_rate", "share_shift_1",
               "false_positives_per_scan"]
    rows = [["real-x1.10", "measured", "di2in", "all", "", "0.5", "0.25", "0.5"],
            ["real-x1.10", "measured", "di2in", "lumbar", "", "0.9", "", ""],
            ["real-x1.10", "measured", "di2in", "all", "metal", "0.1", "", ""],
            ["real-x1.10", "published", "di2in", "all", "", "0.8", "", ""],
            ["phantom", "measured", "di2in", "all", "", "0.7", "0.1", "1.0"]]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([columns, *rows])
    assert tool.headline(path, "real-x1.10") == {
        "di2in": {"id_rate": 0.5, "share_shift_1": 0.25, "false_positives_per_scan": 0.5}}


@pytest.mark.slow
def test_a_trained_run_is_evaluated_once_per_scale(tool, tmp_path, capsys, monkeypatch):
    from spinebench.benchmark.config_files import load_experiment
    from spinebench.benchmark.runner import run_benchmark
    from spinebench.datamodules.sources.example_data import write_example_case

    run = tmp_path / "smoke"
    run_benchmark(load_experiment("smoke", ["methods=[di2in]", "tracking.enabled=false",
                                            f"data.cache_dir={tmp_path / 'cache'}"]), run)
    real = tmp_path / "real"
    write_example_case(real / "a_ct.nii.gz", real / "a_seg-vert_msk.nii.gz")
    write_example_case(real / "b_ct.nii.gz", real / "b.json")

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert tool.main(["--run", str(run), "--real", str(real), "--scales", "1", "1.2"]) == 0

    truth = {}
    for scale in ("1.00", "1.20"):
        with open(run / "evaluations" / f"real-x{scale}" / "records.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["annotated"] == "1"]
        assert {r["case"] for r in rows} == {"a", "b"} and {r["dataset"] for r in rows} == {f"real-x{scale}"}
        truth[scale] = np.array([[float(r[f"true_{a}_mm"]) for a in "xyz"] for r in rows])
    np.testing.assert_allclose(truth["1.20"], 1.2 * truth["1.00"], atol=1e-3)  # stretched about the world origin
    printed = capsys.readouterr().out
    assert "Id.Rate % by scale" in printed and "x1.00" in printed and "x1.20" in printed and "di2in" in printed
    assert not any(scratch.iterdir())  # the stretched copies are gone
