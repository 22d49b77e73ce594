"""Case sources: CSI-2014, VerSe (BIDS and subject-based), generic folders, phantom records, split logic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spinebench.datamodules.centroids import Centroids, write_centroids
from spinebench.datamodules.errors import InputError
from spinebench.datamodules.sources import get_source, load_case, record_fingerprint
from spinebench.datamodules.sources.csi2014 import DATA_DIR
from spinebench.datamodules.sources.example_data import EXAMPLE_GEOMETRY, EXAMPLE_VOXELS, write_example_case
from spinebench.datamodules.sources.phantom import PHANTOM_INDEX_OFFSET
from spinebench.datamodules.splits import assign_splits, read_id_list

# P-I-R like VerSe files (numpy axes (z, y, x) grow towards (R, I, P)), three vertebrae at voxel centres stacked
# along the vertical (I) axis 1: the example case of the file-based sources.
GEOMETRY, VOX = EXAMPLE_GEOMETRY, EXAMPLE_VOXELS


def centroids_mm(geometry=GEOMETRY, vox=VOX) -> Centroids:
    return Centroids({n: geometry.vox_to_world(np.array(v, float)) for n, v in vox.items()})


def list_cases(name, **options):
    """The listing of source ``name`` with these options (paths as strings, as YAML gives them)."""
    cls = get_source(name)
    return cls(cls.Options(**{k: str(v) if hasattr(v, "is_dir") else v for k, v in options.items()})).listing()


def write_case(folder, name, annotation=".lml", geometry=GEOMETRY, vox=VOX, image_suffix=".nii.gz"):
    """Tiny CT (-1024 HU air, 1000 HU balls at the centroids) + centroid file, vertebra mask ("mask") or nothing."""
    stem = name.removesuffix("_ct")
    target = {"mask": folder / f"{stem}_seg-vert_msk.nii.gz", None: None}.get(annotation, folder / f"{stem}{annotation}")
    return write_example_case(folder / f"{name}{image_suffix}", target, geometry, vox)[0]


def test_shipped_set2_lists_are_the_published_242_60_split():
    train = read_id_list(DATA_DIR / "csi2014_set2_train.txt")
    test = read_id_list(DATA_DIR / "csi2014_set2_test.txt")
    assert (len(train), len(test)) == (242, 60)
    assert not set(train) & set(test) and len(set(train)) == 242


@pytest.mark.needs_shared
def test_shipped_set2_lists_equal_the_shared_originals(shared_real):
    d = shared_real / "csi2014_landmarks_payer"
    assert read_id_list(DATA_DIR / "csi2014_set2_train.txt") == read_id_list(d / "train_all.txt")
    assert read_id_list(DATA_DIR / "csi2014_set2_test.txt") == read_id_list(d / "test_all.txt")


def test_csi2014_set2_split_and_lml_loading(tmp_path):
    train_id = read_id_list(DATA_DIR / "csi2014_set2_train.txt")[0]
    test_id = read_id_list(DATA_DIR / "csi2014_set2_test.txt")[0]
    write_case(tmp_path / "a", train_id)
    write_case(tmp_path / "b", test_id)
    write_case(tmp_path, "1234567")  # not in Set 2
    listing = list_cases("csi2014", root=tmp_path)
    assert {r.case_id: r.split for r in listing.records} == {train_id: "train", test_id: "test"}
    assert listing.unlisted == ["1234567"] and len(listing.missing) == 300
    raw = load_case(next(r for r in listing.records if r.case_id == test_id))
    assert raw.ct_array().shape == GEOMETRY.shape and raw.geometry == GEOMETRY
    for name, c in centroids_mm().items():
        np.testing.assert_allclose(raw.centroids_mm[name], c, atol=1e-3)


def test_csi2014_user_split_lists(tmp_path):
    for i in ("11", "12", "13"):
        write_case(tmp_path, i)
    (tmp_path / "tr.txt").write_text("# my split\n11\n12\n")
    (tmp_path / "te.txt").write_text("13\n99\n")
    listing = list_cases("csi2014", root=tmp_path, train_list=tmp_path / "tr.txt", test_list=tmp_path / "te.txt")
    assert {r.case_id: r.split for r in listing.records} == {"11": "train", "12": "train", "13": "test"}
    assert listing.missing == ["99"]
    with pytest.raises(InputError, match="unknown CSI-2014 split 'set9'"):
        list_cases("csi2014", root=tmp_path, split="set9")


def test_verse_bids_official_folders(tmp_path):
    for folder, sub in (("dataset-verse19training", "sub-verse004"), ("dataset-verse19validation", "sub-verse011"),
                        ("dataset-verse19test", "sub-verse012")):
        write_case(tmp_path / folder / "rawdata" / sub, f"{sub}_ct", annotation=None)
        deriv = tmp_path / folder / "derivatives" / sub
        deriv.mkdir(parents=True)
        write_centroids(deriv / f"{sub}_seg-subreg_ctd.json", centroids_mm(), geometry=GEOMETRY)
    listing = list_cases("verse", root=tmp_path)
    assert {r.case_id: (r.split, r.dataset) for r in listing.records} == {
        "sub-verse004": ("train", "verse2019"), "sub-verse011": ("val", "verse2019"),
        "sub-verse012": ("test", "verse2019")}
    rec = listing.records[0]
    assert rec.centroids_path.endswith("derivatives/sub-verse004/sub-verse004_seg-subreg_ctd.json")
    raw = load_case(rec)
    np.testing.assert_allclose(raw.centroids_mm["L2"], centroids_mm()["L2"], atol=1e-3)


def test_verse_subject_based_layout_with_mask_fallback(tmp_path):
    # VerSe'20 subject-based: image, ctd and masks together in one folder; one case has only a mask.
    write_case(tmp_path / "01_training" / "sub-verse500", "sub-verse500_dir-ax_ct", annotation=".json")
    write_case(tmp_path / "03_test" / "sub-gl003", "sub-gl003_dir-ax_ct", annotation="mask")
    listing = list_cases("verse", root=tmp_path)
    by_id = {r.case_id: r for r in listing.records}
    assert {k: (r.split, r.dataset) for k, r in by_id.items()} == {
        "sub-verse500_dir-ax": ("train", "verse2020"), "sub-gl003_dir-ax": ("test", "verse2020")}
    gl = by_id["sub-gl003_dir-ax"]
    assert gl.centroids_path is None and gl.mask_path.endswith("_msk.nii.gz")
    raw = load_case(by_id["sub-gl003_dir-ax"])  # centroid = mask centre of mass = the ball centre
    for name, c in centroids_mm().items():
        np.testing.assert_allclose(raw.centroids_mm[name], c, atol=1e-6)


def test_folder_source_pairs_every_annotation_kind(tmp_path):
    write_case(tmp_path, "a", annotation=".csv")
    write_case(tmp_path, "b_ct", annotation="mask")
    write_case(tmp_path / "sub", "c", annotation=".lml", image_suffix=".mha")
    write_case(tmp_path, "d", annotation=None)  # listed, fails at load with a clear reason
    listing = list_cases("folder", root=tmp_path, test_fraction=0.0)
    by_id = {r.case_id: r for r in listing.records}
    assert set(by_id) == {"a", "b", "c", "d"}
    assert by_id["a"].centroids_path.endswith("a.csv") and by_id["b"].mask_path.endswith("b_seg-vert_msk.nii.gz")
    assert by_id["c"].image_path.endswith("c.mha") and by_id["c"].centroids_path.endswith("c.lml")
    for key in "abc":
        assert set(load_case(by_id[key]).centroids_mm) == set(VOX)
    with pytest.raises(InputError, match="no centroid file or label mask"):
        load_case(by_id["d"])
    with pytest.raises(InputError, match="not a folder"):
        list_cases("folder", root=tmp_path / "nope")


@pytest.mark.needs_shared
def test_folder_source_over_real_verse_crops_and_tptbox(shared_real):
    listing = list_cases("folder", root=shared_real / "verse_cropped_elkhashabs", test_fraction=0.25, split_seed=3)
    assert sorted(r.case_id for r in listing.records) == [f"sub-verse00{i}" for i in (5, 6, 7, 8)]
    assert sum(r.split == "test" for r in listing.records) == 1
    raw = load_case(next(r for r in listing.records if r.case_id == "sub-verse006"))
    assert list(raw.centroids_mm) == ["L4", "L5"]  # the mask labels 23, 24 (SOURCE.md)
    tpt = list_cases("folder", root=shared_real / "tptbox_sample_ct", test_fraction=0.0)
    (rec,) = tpt.records
    assert rec.case_id == "sub-ct_label-22" and "seg-vert" in rec.mask_path  # not the subregion mask
    raw = load_case(rec)
    assert list(raw.centroids_mm) == ["L2", "L3", "L4"]
    # L3 whole-vertebra centre of mass, voxel (P, I, R) = (26.1, 20.9, 35.1) per SOURCE.md (numpy order reversed)
    vox = raw.geometry.world_to_vox(raw.centroids_mm["L3"])
    np.testing.assert_allclose(vox, [35.1, 20.9, 26.1], atol=0.1)


def test_assign_splits_fractions_are_seeded_disjoint_and_complete():
    ids = [f"c{i}" for i in range(20)]
    a, _ = assign_splits(ids, None, 0.1, 0.2, seed=1)
    b, _ = assign_splits(list(reversed(ids)), None, 0.1, 0.2, seed=1)
    c, _ = assign_splits(ids, None, 0.1, 0.2, seed=2)
    assert a == b and a != c and set(a) == set(ids)
    assert [sum(s == k for s in a.values()) for k in ("train", "val", "test")] == [14, 2, 4]
    fixed, _ = assign_splits(ids, None, 0.25, 0.0, seed=0, fixed={i: "train" if i < "c5" else "test" for i in ids})
    assert sum(s == "val" for s in fixed.values()) == round(0.25 * sum(i < "c5" for i in ids))
    with pytest.raises(InputError, match="must lie in"):
        assign_splits(ids, None, 0.6, 0.5, seed=0)


def test_phantom_records_test_cases_do_not_depend_on_training_size():
    pytest.importorskip("spinebench.datamodules.phantom")
    small = list_cases("phantom", n_train=2, n_val=1, n_test=3, seed=7)
    large = list_cases("phantom", n_train=50, n_val=0, n_test=3, seed=7)
    test_ids = [r.case_id for r in small.records if r.split == "test"]
    assert test_ids == [r.case_id for r in large.records if r.split == "test"]
    assert [r.param("index") for r in small.records if r.split == "test"] == [PHANTOM_INDEX_OFFSET["test"] + i
                                                                             for i in range(3)]
    assert len({r.case_id for r in large.records}) == 53
    other_seed = list_cases("phantom", n_train=1, n_val=0, n_test=0, seed=8).records[0]
    assert record_fingerprint(small.records[0]) != record_fingerprint(other_seed)


def test_phantom_cache_key_covers_every_generator_module_and_the_shape_model():
    """A cached phantom case is keyed by the hash of what draws it: every ``phantom*.py`` module (the organs and
    the config included, and any added later), the shape model's code and its fitted parameters."""
    from spinebench.datamodules.sources.phantom import generator_files

    names = {p.name for p in generator_files()}
    modules = {p.name for p in (Path(__file__).resolve().parents[1] / "datamodules").glob("phantom*.py")}
    assert modules <= names and {"phantom_organs.py", "phantom_config.py", "phantom.py"} <= modules
    assert {"shape_model.py", "spine_shape_model.npz"} <= names
