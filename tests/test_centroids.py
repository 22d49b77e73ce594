import json

import numpy as np
import pytest

from spinebench.datamodules.centroids import Centroids, centroids_from_mask, read_centroids, write_centroids
from spinebench.datamodules.ct_io import read_image
from spinebench.datamodules.resample import resample_isotropic
from spinebench.datamodules.errors import InputError, UnknownLabelError
from spinebench.datamodules.geometry import Geometry
from spinebench.datamodules.labels import get_label_set

PIR_DIRECTION = np.array([[-1.0, 0, 0], [0, 0, 1], [0, -1, 0]])  # numpy axes (z, y, x) -> (R, I, P)


def _geometry(shape=(20, 30, 40)):
    return Geometry(shape, (2.0, 1.0, 0.5), (10.0, -5.0, 30.0), PIR_DIRECTION)


def test_centroids_type_orders_validates_and_maps_to_arrays():
    c = Centroids({"L1": (1, 2, 3), "C2": (4, 5, 6), "T12": (7, 8, 9)})
    assert c.names == ("C2", "T12", "L1")  # anatomical order whatever the input order
    label_set = get_label_set("default")
    array = c.to_array(label_set)
    assert array.shape == (26, 3)
    np.testing.assert_array_equal(array[label_set.index("T12")], (7, 8, 9))
    assert np.isnan(array[label_set.index("C1")]).all() and np.isfinite(array).all(axis=1).sum() == 3
    assert Centroids.from_array(array, label_set) == c
    with pytest.raises(UnknownLabelError):
        Centroids({"X1": (0, 0, 0)})
    with pytest.raises(InputError, match="given twice"):
        Centroids([("T1", (0, 0, 0)), ("T1", (1, 1, 1))])
    with pytest.raises(InputError, match="finite"):
        Centroids({"T1": (0, np.nan, 0)})
    t13 = Centroids({"T13": (0, 0, 0), "L1": (1, 1, 1)})
    with pytest.raises(UnknownLabelError, match="not in this label set"):
        t13.to_array(label_set)
    assert np.isfinite(t13.to_array(label_set, drop_missing=True)).all(axis=1).sum() == 1
    assert np.isfinite(t13.to_array(get_label_set("transitional"))).all(axis=1).sum() == 2


def test_centroids_from_mask_exact_boxes_and_body_subregions():
    geometry = _geometry()
    mask = np.zeros(geometry.shape, np.uint8)
    mask[2:6, 4:10, 10:20] = 20  # L1: centre voxel (3.5, 6.5, 14.5)
    mask[10:13, 20:25, 5:6] = 19  # T12: centre voxel (11, 22, 5)
    mask[15, 0, 0] = 27  # coccyx: not a vertebra of the schema, ignored
    c = centroids_from_mask(mask, geometry)
    assert c.names == ("T12", "L1")
    np.testing.assert_allclose(c["L1"], geometry.vox_to_world((3.5, 6.5, 14.5)), atol=1e-9)
    np.testing.assert_allclose(c["T12"], geometry.vox_to_world((11, 22, 5)), atol=1e-9)
    sub = np.zeros_like(mask)
    sub[2:6, 4:10, 10:12] = 50  # L1 body: centre voxel (3.5, 6.5, 10.5)
    sub[2:6, 4:10, 12:13] = 49
    sub[2:6, 4:10, 13:20] = 41  # arcus: not body
    body = centroids_from_mask(mask, geometry, sub)
    assert body.names == ("L1",)  # T12 has no body voxels
    np.testing.assert_allclose(body["L1"], geometry.vox_to_world((3.5, 6.5, 11.0)), atol=1e-9)
    float_mask = mask.astype(np.float64)  # float-stored label maps are accepted when integral
    assert centroids_from_mask(float_mask, geometry).allclose(c, 1e-9)
    with pytest.raises(InputError, match="no vertebra labels"):
        centroids_from_mask(np.where(mask == 27, 27, 0).astype(np.uint8), geometry, source="m.nii.gz")
    with pytest.raises(InputError, match="integer labels"):
        centroids_from_mask(float_mask + 0.5, geometry)


def test_every_format_round_trips_with_a_flipped_oblique_image(tmp_path):
    geometry = _geometry()
    c = Centroids({"T11": geometry.vox_to_world((3.2, 5.1, 7.7)), "S1": geometry.vox_to_world((18.0, 2.5, 30.25))})
    for name in ("c.json", "c.csv", "c.lml"):
        write_centroids(tmp_path / name, c, geometry=geometry)
        assert read_centroids(tmp_path / name, geometry).allclose(c, 1e-3), name
    entries = json.loads((tmp_path / "c.json").read_text())
    assert entries[0] == {"direction": ["P", "I", "R"]}
    # For a P-I-R image the VerSe X, Y, Z are the file's own voxel indices (numpy axes reversed).
    assert entries[1] == {"label": 18, "X": 7.7, "Y": 5.1, "Z": 3.2}
    # Another orientation: indices of the image reoriented to R-A-S (flipped axis: n - 1 - i).
    write_centroids(tmp_path / "ras.json", c, geometry=geometry, orientation="RAS")
    entry = json.loads((tmp_path / "ras.json").read_text())[1]
    # R: numpy axis 0 (z, n=20) grows R already; A: flip of P (x, n=40); S: flip of I (y, n=30).
    assert entry["X"] == pytest.approx(3.2) and entry["Y"] == pytest.approx(39 - 7.7)
    assert entry["Z"] == pytest.approx(29 - 5.1)
    assert read_centroids(tmp_path / "ras.json", geometry).allclose(c, 1e-4)
    lml_rows = (tmp_path / "c.lml").read_text().splitlines()
    assert lml_rows[1].split("\t")[:2] == ["180", "T11"] and lml_rows[2].split("\t")[:2] == ["250", "S1"]


def test_malformed_centroid_files_raise_one_line_errors(tmp_path):
    geometry = _geometry()
    files = {
        "no_dir.json": ('[{"label": 20, "X": 1, "Y": 2, "Z": 3}]', "direction entry"),
        "bad.json": ('[{"direction": ["P", "I"', "malformed JSON"),
        "bad_id.json": ('[{"direction": ["P","I","R"]}, {"label": 99, "X": 1, "Y": 2, "Z": 3}]', "unknown VerSe"),
        "far.json": ('[{"direction": ["P","I","R"]}, {"label": 20, "X": 1, "Y": 2, "Z": 300}]', "outside the image"),
        "bad_code.json": ('[{"direction": ["P","P","R"]}]', "invalid orientation code"),
        "short.lml": ("header\n20\tC2\t1.0\t2.0\n", "expected 5 fields"),
        "bad_id.lml": ("header\n25\tC2\t1.0\t2.0\t3.0\n", "unknown CSI-2014"),
        "clash.lml": ("header\n20\tC3\t1.0\t2.0\t3.0\n", "name column says C3"),
        "nan.csv": ("label,x,y,z\nT1,1,nan,3\n", "not finite"),
        "word.csv": ("label,x,y,z\nT1,1,abc,3\n", "not a number"),
        "label.csv": ("label,x,y,z\nX9,1,2,3\n", "unknown vertebra label 'X9'"),
        "dup.csv": ("label,x,y,z\nT1,1,2,3\nT1,1,2,3\n", "given twice"),
        "c.txt": ("", "cannot tell the centroid format"),
    }
    for name, (text, problem) in files.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError) as err:
            read_centroids(tmp_path / name, geometry)
        assert problem in str(err.value) and name in str(err.value) and "\n" not in str(err.value), name
    with pytest.raises(InputError, match="the image is needed"):
        read_centroids(tmp_path / "far.json")
    with pytest.raises(InputError, match="no such file"):
        read_centroids(tmp_path / "missing.csv")
    with pytest.raises(InputError, match="has no VerSe id"):
        write_centroids(tmp_path / "s2.json", Centroids({"S2": geometry.vox_to_world((1, 1, 1))}), geometry=geometry)
    assert not (tmp_path / "s2.json").exists()


# --- real files -----------------------------------------------------------------------------------


@pytest.mark.needs_shared
def test_verse007_centroids_are_t9_to_l3_superior_to_inferior(shared_real):
    mask, geometry = read_image(shared_real / "verse_cropped_elkhashabs" / "sub-verse007_seg-vert_msk.nii.gz")
    c = centroids_from_mask(mask, geometry)
    assert c.names == ("T9", "T10", "T11", "T12", "L1", "L2", "L3")
    points = np.stack(list(c.values()))
    assert np.all(np.diff(points[:, 2]) < 0)  # LPS z = superior: decreasing from T9 down to L3
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    assert np.all((steps > 20) & (steps < 35)), steps


@pytest.mark.needs_shared
def test_mask_to_verse_to_csv_to_verse_is_lossless(shared_real, tmp_path):
    mask, geometry = read_image(shared_real / "verse_cropped_elkhashabs" / "sub-verse008_seg-vert_msk.nii.gz")
    c = centroids_from_mask(mask, geometry)
    write_centroids(tmp_path / "a_ctd.json", c, geometry=geometry)
    assert json.loads((tmp_path / "a_ctd.json").read_text())[0] == {"direction": ["P", "I", "R"]}
    write_centroids(tmp_path / "b.csv", read_centroids(tmp_path / "a_ctd.json", geometry))
    write_centroids(tmp_path / "c_ctd.json", read_centroids(tmp_path / "b.csv"), geometry=geometry)
    back = read_centroids(tmp_path / "c_ctd.json", geometry)
    assert back.names == c.names == ("T12", "L1", "L2", "L3", "L4", "L5")
    assert back.allclose(c, atol_mm=0.01)


@pytest.mark.needs_shared
def test_after_2mm_resampling_every_centroid_is_inside_its_own_label(shared_real):
    """Body centroids (TPTBox) fall on a voxel of their own vertebra in the 2 mm mask. A whole-vertebra centre of
    mass of a ring-shaped vertebra may sit in the canal (an unlabelled voxel even at full resolution), so for
    those the labelled voxel nearest to it must be its own vertebra, within 5 mm."""
    from scipy import ndimage

    from spinebench.datamodules.labels import verse_id

    folder = shared_real / "tptbox_sample_ct"
    mask, geometry = read_image(folder / "sub-ct_seg-vert_label-22_msk.nii.gz")
    sub, _ = read_image(folder / "sub-ct_seg-subreg_label-22_msk.nii.gz")
    body = centroids_from_mask(mask, geometry, sub)
    small, small_geometry = resample_isotropic(mask, geometry, 2.0, "nearest")
    for name, point in body.items():
        assert small[tuple(np.rint(small_geometry.world_to_vox(point)).astype(int))] == verse_id(name), name

    for case in ("sub-verse005", "sub-verse007", "sub-verse008"):
        mask, geometry = read_image(shared_real / "verse_cropped_elkhashabs" / f"{case}_seg-vert_msk.nii.gz")
        c = centroids_from_mask(mask, geometry)
        small, small_geometry = resample_isotropic(mask, geometry, 2.0, "nearest")
        np.testing.assert_allclose(small_geometry.spacing_mm, 2.0)
        _, nearest = ndimage.distance_transform_edt(small == 0, return_indices=True)
        for name, point in c.items():
            vox = np.rint(small_geometry.world_to_vox(point)).astype(int)
            near = nearest[(slice(None), *vox)]
            assert small[tuple(near)] == verse_id(name), (case, name)
            assert np.linalg.norm((near - vox) * 2.0) <= 5.0, (case, name)
        # The 2 mm mask's own centres of mass stay within 1 mm of the full-resolution ones.
        assert centroids_from_mask(small, small_geometry).allclose(c, atol_mm=1.0)


@pytest.mark.needs_shared
def test_tptbox_body_centroids_lie_anterior_of_whole_vertebra_centroids(shared_real):
    folder = shared_real / "tptbox_sample_ct"
    mask, geometry = read_image(folder / "sub-ct_seg-vert_label-22_msk.nii.gz")
    sub, _ = read_image(folder / "sub-ct_seg-subreg_label-22_msk.nii.gz")
    whole = centroids_from_mask(mask, geometry)
    body = centroids_from_mask(mask, geometry, sub)
    assert whole.names == body.names == ("L2", "L3", "L4")
    # SOURCE.md: L3 whole-vertebra CoM at file voxel (P, I, R) = (26.1, 20.9, 35.1), body at (17.7, 20.5, 34.7).
    np.testing.assert_allclose(geometry.world_to_vox(whole["L3"])[::-1], (26.1, 20.9, 35.1), atol=0.06)
    np.testing.assert_allclose(geometry.world_to_vox(body["L3"])[::-1], (17.7, 20.5, 34.7), atol=0.06)
    for name in whole:
        anterior_mm = whole[name][1] - body[name][1]  # LPS y grows posterior
        assert 5 < anterior_mm < 25, (name, anterior_mm)


def test_verse_numbered_drops_only_s2_which_verse_json_cannot_hold(tmp_path):
    from spinebench.datamodules.geometry import canonical_geometry

    geometry = canonical_geometry((40, 20, 20), 2.0)
    full = Centroids({"L5": (20.0, 20.0, 20.0), "S1": (20.0, 20.0, 10.0), "S2": (20.0, 20.0, 2.0)})
    with pytest.raises(InputError, match="full.json: vertebra S2 has no VerSe id"):
        write_centroids(tmp_path / "full.json", full, fmt="verse", geometry=geometry)
    assert not (tmp_path / "full.json").exists()
    assert full.verse_numbered().names == ("L5", "S1")
    write_centroids(tmp_path / "ok.json", full.verse_numbered(), fmt="verse", geometry=geometry)
    assert read_centroids(tmp_path / "ok.json", geometry).allclose(full.verse_numbered(), atol_mm=1e-6)


def _boxes(values: dict[int, tuple[slice, slice, slice]]):
    geometry = Geometry((20, 12, 12), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    mask = np.zeros(geometry.shape, np.int16)
    for value, box in values.items():
        mask[box] = value
    return mask, geometry


@pytest.mark.parametrize("labels, values, names", [
    ("totalsegmentator", {27: (slice(1, 4),) * 3, 31: (slice(6, 9), slice(1, 4), slice(1, 4)), 90: (slice(12, 14),) * 3},
     ["L1", "L5"]),
    ("totalsegmentator-v1", {18: (slice(1, 4),) * 3, 41: (slice(6, 9), slice(1, 4), slice(1, 4)), 92: (slice(12, 14),) * 3},
     ["C1", "L5"]),
    ("spineps", {20: (slice(1, 4),) * 3, 120: (slice(6, 9), slice(1, 4), slice(1, 4)), 220: (slice(12, 14),) * 3},
     ["L1"]),
])
def test_masks_of_other_tools_by_their_own_numbering(labels, values, names):
    mask, geometry = _boxes(values)
    centroids = centroids_from_mask(mask, geometry, source="m.nii.gz", labels=labels)
    assert sorted(centroids.names) == names  # organs, discs and endplates are not vertebrae
    with pytest.raises(InputError, match=r"m\.nii\.gz: mask values .* are not verse labels.*totalsegmentator"):
        centroids_from_mask(mask, geometry, source="m.nii.gz")  # read as VerSe, the values do not fit


@pytest.mark.needs_shared
def test_totalsegmentator_masks_give_the_centroids_of_their_source_table(shared_real):
    """SOURCE.md's whole-vertebra centres of mass (RAS mm) from TotalSegmentator's v2 output; v1 agrees within
    1.1 mm and has no S1."""
    folder = shared_real / "totalsegmentator_tests"
    expected_ras = {"S1": (0.2, 107.0, 221.6), "L5": (-1.3, 125.0, 246.0), "L3": (-3.7, 131.2, 314.9),
                    "T12": (-4.1, 103.0, 414.1)}
    v2 = centroids_from_mask(*read_image(folder / "example_seg_fast_force_split.nii.gz"), labels="totalsegmentator")
    v1 = centroids_from_mask(*read_image(folder / "commit_2515ad45" / "example_seg.nii.gz"), labels="totalsegmentator-v1")
    assert v2.names == ("T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1") and "S1" not in v1.names
    for name, ras in expected_ras.items():
        lps = np.array(ras) * [-1, -1, 1]
        np.testing.assert_allclose(v2[name], lps, atol=0.1)
        if name != "S1":
            assert np.linalg.norm(v1[name] - v2[name]) < 1.2
