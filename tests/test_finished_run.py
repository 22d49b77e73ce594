"""Using a finished run: ``spinebench predict`` (one CT, a folder, a real CT), ``spinebench evaluate`` (another
dataset, other inference settings) and what a run folder is trusted with.

The run is the tiny di2in run of conftest.py's ``trained_run`` (shared with tests/test_runner.py). Subprocess tests
use ``python -m spinebench`` like a user would.
"""

from __future__ import annotations

import json
import shutil

import pytest

from tests.run_fixtures import TIMING_COLUMNS, read_rows, run_cli

pytestmark = pytest.mark.slow

def test_predict_on_a_real_ct(trained_run, shared_real, tmp_path):
    ct = shared_real / "totalsegmentator_tests" / "example_ct.nii.gz"  # RAS NIfTI, 3 mm
    out = tmp_path / "pred.json"
    res = run_cli("predict", str(ct), "--run", str(trained_run), "--out", str(out), "--preview")
    assert res.returncode == 0, res.stderr[-3000:]
    entries = json.loads(out.read_text())
    assert "direction" in entries[0]  # VerSe json: axcodes first, then one entry per predicted vertebra
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv_out = tmp_path / "pred.csv"
    res = run_cli("predict", str(ct), "--run", str(trained_run), "--method", "di2in", "--out", str(csv_out))
    assert res.returncode == 0, res.stderr[-3000:]
    from spinebench.datamodules.centroids import read_centroids
    from spinebench.datamodules.ct_io import read_geometry

    geometry = read_geometry(ct)
    for name, mm in read_centroids(csv_out).items():  # every written centroid lies inside the CT
        assert geometry.contains_vox(geometry.world_to_vox(mm), margin=0.5), name
    assert len(read_centroids(csv_out)) == len(entries) - 1
    bad = run_cli("predict", str(ct), "--run", str(trained_run), "--method", "nosuch", "--out", str(out))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "its methods: di2in" in bad.stderr


def test_a_run_folder_is_not_trusted_beyond_itself(trained_run, tmp_path):
    """A copied run uses its own checkpoints or none: never the original's; checkpoints load as plain data."""
    from spinebench.benchmark.builders import read_checkpoint
    from spinebench.datamodules.errors import InputError

    ct = tmp_path / "ph" / "phantom-s0-0000_ct.nii.gz"
    assert run_cli("phantom", "--n", "1", "--spacing", "8", "--out", str(tmp_path / "ph")).returncode == 0
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    cell = copy / "cells" / "di2in" / "seed0"
    (cell / "checkpoints" / "best.ckpt").unlink()
    res = run_cli("predict", str(ct), "--run", str(copy), "--out", str(tmp_path / "a.csv"))
    assert res.returncode == 2 and "missing" in res.stderr and str(copy) in res.stderr, res.stderr
    # a result.json that points outside its run (an older absolute path, an edited file) is refused
    result = json.loads((cell / "result.json").read_text())
    result["best_checkpoint"] = str(trained_run / "cells" / "di2in" / "seed0" / "checkpoints" / "best.ckpt")
    (cell / "result.json").write_text(json.dumps(result))
    res = run_cli("predict", str(ct), "--run", str(copy), "--out", str(tmp_path / "b.csv"))
    assert res.returncode == 2 and "outside the run folder" in res.stderr, res.stderr
    assert not (tmp_path / "a.csv").exists() and not (tmp_path / "b.csv").exists()
    # a checkpoint that would run code when unpickled is refused by name
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("this ran",))

    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": Payload()}))
    with pytest.raises(InputError, match="evil.ckpt: not a plain checkpoint"):
        read_checkpoint(evil)


def test_predict_a_folder_of_cts_loads_the_model_once_and_reports_bad_files(trained_run, tmp_path):
    cts = tmp_path / "cts"
    assert run_cli("phantom", "--n", "2", "--spacing", "8", "--out", str(cts)).returncode == 0
    for extra in cts.glob("*_ctd.*"):
        extra.unlink()  # the phantom's own centroid files: not CTs
    (cts / "broken_ct.nii.gz").write_bytes(b"not a volume")
    # a label mask beside its CT (VerSe's naming) is not a CT to predict on
    masks = tmp_path / "masks"
    masks.mkdir()
    for name in ("phantom-s0-0000_seg-vert_msk.nii.gz", "phantom-s0-0001_msk.nii.gz"):
        shutil.copy(cts / "phantom-s0-0000_ct.nii.gz", cts / name)
        shutil.copy(cts / "phantom-s0-0000_ct.nii.gz", masks / name)
    res = run_cli("predict", "-i", str(cts), "-o", str(tmp_path / "out"), "--run", str(trained_run), "--format", "csv")
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.count("\n") == 1 and "broken_ct.nii.gz" in res.stderr
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["phantom-s0-0000_ctd.csv", "phantom-s0-0001_ctd.csv"]
    assert "2 of 3 CTs predicted" in res.stdout and "[3/3] phantom-s0-0001_ct.nii.gz" in res.stdout
    assert "3 CTs; 2 label masks beside them left out" in res.stdout
    only = run_cli("predict", "-i", str(masks), "-o", str(tmp_path / "m"), "--run", str(trained_run))
    assert only.returncode == 2 and only.stderr.count("\n") == 1 and "only label masks" in only.stderr
    assert not (tmp_path / "m").exists()
    # one CT with -i gives the same file as the positional form
    one = cts / "phantom-s0-0000_ct.nii.gz"
    one_out = run_cli("predict", "-i", str(one), "-o", str(tmp_path / "one.csv"), "--run", str(trained_run))
    assert one_out.returncode == 0
    assert (tmp_path / "one.csv").read_text() == (tmp_path / "out" / "phantom-s0-0000_ctd.csv").read_text()
    both = run_cli("predict", str(one), "-i", str(one), "-o", str(tmp_path / "x.csv"), "--run", str(trained_run))
    assert both.returncode == 2 and "one of them" in both.stderr


def test_evaluate_a_run_on_another_dataset_without_training(trained_run):
    before = (trained_run / "records.csv").read_bytes()
    res = run_cli("evaluate", "--run", str(trained_run), "--set", "data.phantom.seed=0", "--name", "same")
    assert res.returncode == 0, res.stderr[-3000:]
    # the same data as the run's own test split: the same predictions, under the evaluation's dataset name
    drop = (*TIMING_COLUMNS, "dataset", "run")
    same = read_rows(trained_run / "evaluations" / "same" / "records.csv", drop)
    assert same == read_rows(trained_run / "records.csv", drop) and len(same) > 0
    named = read_rows(trained_run / "evaluations" / "same" / "records.csv")
    assert {(r["dataset"], r["run"]) for r in named} == {("same", f"{trained_run.name}/same")}
    res = run_cli("evaluate", "--run", str(trained_run), "--set", "data.phantom.seed=5",
                  "--set", "data.phantom.n_train=0", "--set", "data.phantom.n_test=3", "--name", "other")
    assert res.returncode == 0, res.stderr[-3000:]
    other = read_rows(trained_run / "evaluations" / "other" / "records.csv")
    assert len({r["case"] for r in other}) == 3 and all(r["case"].startswith("phantom-s5-") for r in other)
    board = (trained_run / "evaluations" / "other" / "leaderboard" / "leaderboard.md").read_text()
    assert "## phantom" in board and "## other" in board  # the run's own test set beside the new one
    assert (trained_run / "records.csv").read_bytes() == before  # the run's own files are not changed
    again = run_cli("evaluate", "--run", str(trained_run), "--set", "data.phantom.seed=5", "--name", "other")
    assert again.returncode == 2 and "exists already" in again.stderr
    wrong = run_cli("evaluate", "--run", str(trained_run), "--set", "trainer.max_epochs=1", "--name", "x")
    assert wrong.returncode == 2 and "only data.* keys and methods' inference-only settings" in wrong.stderr
    assert not (trained_run / "evaluations" / "x").exists()


def test_evaluate_with_a_methods_inference_setting_changes_only_that(trained_run):
    own = read_rows(trained_run / "records.csv")
    scores = sorted({float(r["score"]) for r in own})
    assert len(scores) >= 2
    k = len(scores) // 2
    threshold = (scores[k - 1] + scores[k]) / 2  # between two scores the run recorded: some present, some not
    res = run_cli("evaluate", "--run", str(trained_run), "--name", "strict",
                  "--set", f"methods.di2in.overrides.presence_threshold={threshold}")
    assert res.returncode == 0, res.stderr[-3000:]
    strict = read_rows(trained_run / "evaluations" / "strict" / "records.csv", (*TIMING_COLUMNS, "dataset", "run"))
    key = lambda r: (r["case"], r["vertebra"])  # noqa: E731
    assert sorted(map(key, strict)) == sorted(map(key, own))
    mine = {key(r): r for r in own}
    for row in strict:  # the same network outputs; only which vertebrae count as present follows the new threshold
        before = mine[key(row)]
        assert [row[c] for c in ("pred_x_mm", "pred_y_mm", "pred_z_mm", "score")] == \
            [before[c] for c in ("pred_x_mm", "pred_y_mm", "pred_z_mm", "score")]
        assert (row["pred_present"] in ("1", "True", "true")) == (float(row["score"]) > threshold)
    assert len({r["pred_present"] for r in strict}) == 2  # the threshold splits the vertebrae
    refused = {
        "methods.di2in.overrides.base_width=16": "not an inference-only setting of di2in",
        "methods.resml_loc.overrides.presence_threshold=0.3": "the run has no method 'resml_loc'",
        "methods.di2in.presence_threshold=0.3": "methods.NAME.overrides.FIELD=VALUE",
        "methods.di2in.overrides.message_passing=true": "does not fit the model",
    }
    for item, message in refused.items():
        res = run_cli("evaluate", "--run", str(trained_run), "--set", item, "--name", "refused")
        assert res.returncode == 2 and message in res.stderr and res.stderr.count("\n") == 1, (item, res.stderr)
    # named like the run's own dataset, the two would be pooled in the evaluation's leaderboard
    res = run_cli("evaluate", "--run", str(trained_run), "--set", "data.phantom.seed=0")
    assert res.returncode == 2 and "--name 'phantom'" in res.stderr
    assert not any((trained_run / "evaluations" / name).exists() for name in ("refused", "phantom"))
