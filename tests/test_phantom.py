"""The phantom generator: determinism, geometry, difficulties, configuration and the command line (its anatomy:
tests/test_phantom_anatomy.py)."""

import json

import numpy as np
import pytest

from spinebench.datamodules.errors import InputError
from spinebench.datamodules.phantom import METAL_THRESHOLD_HU, PhantomConfig, generate_case
from spinebench.datamodules.phantom_anatomy import PHANTOM_MASK_ID
from spinebench.datamodules.sources.phantom import PhantomSource
from tests.phantom_fixtures import PLAIN, plain, xyz


def test_same_seed_same_bytes_other_index_differs():
    cfg = PhantomConfig(spacing_mm=4.0, fov_vertebrae=(6, 10))
    a, b, c = generate_case(5, 1, cfg), generate_case(5, 1, cfg), generate_case(5, 2, cfg)
    assert a.case_id == "phantom-s5-0001"
    assert a.ct_hu.dtype == np.int16 and a.ct_hu.tobytes() == b.ct_hu.tobytes()
    assert a.vertebra_mask.tobytes() == b.vertebra_mask.tobytes()
    assert a.centroids_mm == b.centroids_mm and a.geometry == b.geometry
    assert json.dumps(a.metadata, sort_keys=True, default=str) == json.dumps(b.metadata, sort_keys=True, default=str)
    assert a.ct_hu.shape != c.ct_hu.shape or a.ct_hu.tobytes() != c.ct_hu.tobytes()
    assert not np.allclose(xyz(a)[:4], xyz(c)[:4])


# sha256 of (ct bytes, mask bytes, centroids rounded to 1e-4 mm) of one case that runs every code path (scoliosis,
# kyphosis, metal + streaks, thick slices, noise, blur; drawn at 2 mm, averaged to 4 mm). It pins the output across
# machines and numpy/scipy builds; a deliberate change of the generator updates it (and GENERATOR_VERSION).
GOLDEN_CASE = (2024, 2)
GOLDEN_SHA256 = "a00a6c6b380a754af619d80741f199461d0c5739378ec521e9b323cedcb5fcdd"  # version 4 (= 5 without detail)
GOLDEN_SHA256_NO_ORGANS = "e995202bf8a093a29a498e7cb664cd05c87e97fb138d6a4f74012444d1787de9"  # organs, texture off


@pytest.mark.parametrize("organs,expected", [(True, GOLDEN_SHA256), (False, GOLDEN_SHA256_NO_ORGANS)])
def test_golden_case_is_byte_identical_on_this_machine(organs, expected):
    """Organs and texture draw from random streams of their own: without them every other draw is as with them
    (version 2's cases byte for byte until version 4 refitted the vertebrae)."""
    import hashlib

    cfg = PhantomConfig(spacing_mm=4.0, fov_vertebrae=(6, 8), scoliosis_rate=1.0, kyphosis_rate=1.0,
                        metal_rate=1.0, anisotropic_rate=1.0, organs=organs, texture=organs)
    case = generate_case(*GOLDEN_CASE, cfg)
    assert case.metadata["metal"]["applied"] and case.metadata["anisotropic"]["applied"]
    assert ("organs" in case.metadata) == organs
    h = hashlib.sha256()
    h.update(case.ct_hu.tobytes())
    h.update(case.vertebra_mask.tobytes())
    h.update(np.round(xyz(case), 4).tobytes())
    assert h.hexdigest() == expected


def test_canonical_geometry_and_centroids_inside():
    case = generate_case(0, 0, plain())
    np.testing.assert_allclose(case.geometry.direction, np.eye(3)[:, ::-1])  # axes grow S, P, L
    np.testing.assert_allclose(case.geometry.spacing_mm, 4.0)
    names = list(case.centroids_mm)
    assert names[0] == "C1" and names[-1] == "S2" and len(names) == 26
    vox = case.geometry.world_to_vox(xyz(case))
    assert np.all(np.diff(vox[:, 0]) < 0)  # axis 0 grows towards the head: C1 has the largest index
    assert case.geometry.contains_vox(vox, margin=0.0).all()
    # Body cross-section stays small: at most ~300 x 250 mm plus margins.
    assert case.ct_hu.shape[2] * 4.0 <= 320 and case.ct_hu.shape[1] * 4.0 <= 275 + 50  # + room for the table


def test_metal_raises_maximum_above_3000_hu():
    base = generate_case(4, 0, plain())
    metal = generate_case(4, 0, plain(metal_rate=1.0))
    assert base.ct_hu.max() < METAL_THRESHOLD_HU and not base.metadata["metal"]["applied"]
    assert metal.ct_hu.max() > METAL_THRESHOLD_HU and metal.metadata["metal"]["applied"]
    assert 2 <= len(metal.metadata["metal"]["levels"]) <= 5 and metal.metadata["metal"]["streak_slices"] > 0
    # Streaks change the soft tissue in the implant's slices, not only the metal voxels.
    changed = (metal.ct_hu != base.ct_hu) & (metal.ct_hu < 300) & (base.ct_hu < 300)
    assert changed.sum() > 500


def test_limited_fov_reduces_vertebra_count():
    full = generate_case(6, 0, plain())
    cut = generate_case(6, 0, plain(fov_vertebrae=(4, 6)))
    assert len(full.centroids_mm) == 26
    assert 4 <= len(cut.centroids_mm) <= 6 and cut.ct_hu.shape[0] < full.ct_hu.shape[0]
    assert cut.metadata["limited_fov"]["applied"] and cut.metadata["visible_vertebrae"] == list(cut.centroids_mm)
    names = list(full.centroids_mm)
    first, last = names.index(cut.metadata["first_visible"]), names.index(cut.metadata["last_visible"])
    assert names[first : last + 1] == list(cut.centroids_mm)  # a contiguous section


def _lateral_deviation(case) -> float:
    pts = xyz(case)
    fit = np.polyval(np.polyfit(pts[:, 2], pts[:, 0], 1), pts[:, 2])
    return float(np.abs(pts[:, 0] - fit).max())


def test_scoliosis_and_kyphosis_deform_the_curve():
    base = generate_case(7, 0, plain())
    sco = generate_case(7, 0, plain(scoliosis_rate=1.0))
    kyph = generate_case(7, 0, plain(kyphosis_rate=1.0))
    assert sco.metadata["scoliosis"]["applied"] and abs(sco.metadata["scoliosis"]["amplitude_mm"]) >= 12
    assert _lateral_deviation(sco) > _lateral_deviation(base) + 5.0
    dy = np.abs(xyz(kyph)[:, 1] - xyz(base)[:, 1])
    assert kyph.metadata["kyphosis"]["applied"] and dy.max() > 5.0
    np.testing.assert_allclose(xyz(kyph)[:, 0], xyz(base)[:, 0])  # sagittal only


def test_noise_raises_std_in_air_and_soft_tissue():
    quiet = generate_case(8, 0, plain(noise_hu=(0.0, 0.0), blur_sigma_mm=(0.0, 0.0)))
    noisy = generate_case(8, 0, plain(noise_hu=(40.0, 40.0), blur_sigma_mm=(0.0, 0.0)))
    air = quiet.ct_hu == -1000
    soft = quiet.ct_hu == round(quiet.metadata["tissue_hu"]["soft"])
    assert quiet.ct_hu[air].std() == 0 and quiet.ct_hu[soft].std() == 0
    assert 30 < noisy.ct_hu[air].std() < 50 and 30 < noisy.ct_hu[soft].std() < 50


def test_blur_smooths_edges():
    sharp = generate_case(9, 0, plain(noise_hu=(0.0, 0.0), blur_sigma_mm=(0.0, 0.0)))
    blurred = generate_case(9, 0, plain(noise_hu=(0.0, 0.0), blur_sigma_mm=(2.0, 2.0)))
    grad = lambda a: (np.diff(a.astype(np.float32), axis=2) ** 2).mean()  # edge energy; blur spreads steps  # noqa: E731
    assert grad(blurred.ct_hu) < 0.8 * grad(sharp.ct_hu)


def test_anisotropic_spacing_coarsens_slices():
    case = generate_case(10, 0, plain(anisotropic_rate=1.0))
    meta = case.metadata["anisotropic"]
    assert meta["applied"] and meta["slice_factor"] in (2, 3)
    np.testing.assert_allclose(case.geometry.spacing_mm, [4.0 * meta["slice_factor"], 4.0, 4.0])
    assert case.geometry.contains_vox(case.geometry.world_to_vox(xyz(case)), margin=0.0).all()


def test_transitional_is_opt_in():
    assert not generate_case(11, 0, plain()).metadata["transitional"]["applied"]
    names = set()
    for index in range(4):
        case = generate_case(11, index, plain(label_set="transitional", transitional_rate=1.0))
        extra = case.metadata["transitional"]["name"]
        assert extra in case.centroids_mm and len(case.centroids_mm) == 27
        assert np.any(case.vertebra_mask == PHANTOM_MASK_ID[extra])
        names.add(extra)
    assert names == {"T13", "L6"}
    with pytest.raises(InputError, match="transitional"):
        PhantomConfig(transitional_rate=0.5)


def test_tight_crop_is_opt_in_and_cuts_the_same_voxels_around_the_spine():
    """The crop ends its margin (0-10 mm, drawn per axis) beyond the vertebrae's labels, as VerSe's crops do."""
    whole = generate_case(12, 0, plain())
    assert "tight_crop" not in whole.metadata  # off: no draw, no key (cases stay as they were)
    crop = generate_case(12, 0, plain(tight_crop_rate=1.0))
    meta = crop.metadata["tight_crop"]
    assert meta["applied"] and all(0.0 <= m <= 10.0 for m in meta["margin_mm"])
    assert crop.ct_hu.shape[0] == whole.ct_hu.shape[0] and crop.ct_hu.size < 0.5 * whole.ct_hu.size
    for axis, margin in zip((1, 2), meta["margin_mm"]):
        held = np.flatnonzero(crop.vertebra_mask.any(axis=tuple(a for a in range(3) if a != axis)))
        beyond = np.array([held[0], crop.ct_hu.shape[axis] - 1 - held[-1]]) * crop.geometry.spacing_mm[axis]
        assert np.all(beyond <= margin + crop.geometry.spacing_mm[axis]) and np.all(beyond >= margin - 4.0)
    lo = np.round(whole.geometry.world_to_vox(crop.geometry.origin_mm)).astype(int)
    box = tuple(slice(a, a + n) for a, n in zip(lo, crop.ct_hu.shape))
    np.testing.assert_array_equal(crop.ct_hu, whole.ct_hu[box])  # the same voxels, on the cropped geometry
    np.testing.assert_array_equal(crop.vertebra_mask, whole.vertebra_mask[box])
    assert list(crop.centroids_mm) == list(whole.centroids_mm)
    assert crop.geometry.contains_vox(crop.geometry.world_to_vox(xyz(crop)), margin=0.0).all()
    assert np.mean(crop.ct_hu < -950) < np.mean(whole.ct_hu < -950)  # less air around the spine


def test_bad_config_values_raise():
    with pytest.raises(InputError, match="tight_crop_margin_mm"):
        PhantomConfig(tight_crop_margin_mm=(10.0, 5.0))
    with pytest.raises(InputError, match="metal_rate"):
        PhantomConfig(metal_rate=1.5)
    with pytest.raises(InputError, match="fov_vertebrae"):
        PhantomConfig(fov_vertebrae=(5, 2))


def test_cli_writes_nifti_verse_json_meta_and_preview(tmp_path):
    from spinebench.benchmark.cli import main
    from spinebench.datamodules.centroids import read_centroids
    from spinebench.datamodules.ct_io import read_image

    rc = main(["phantom", "--n", "2", "--out", str(tmp_path), "--seed", "3", "--spacing", "4", "--preview",
               "--set", "fov_vertebrae=[5,7]", "--set", "metal_rate=0"])
    assert rc == 0
    case = generate_case(3, 1, PhantomConfig(spacing_mm=4.0, fov_vertebrae=(5, 7), metal_rate=0.0))
    base = tmp_path / case.case_id
    ct, geometry = read_image(f"{base}_ct.nii.gz")
    np.testing.assert_array_equal(ct, case.ct_hu)
    assert geometry == case.geometry
    ctd = read_centroids(f"{base}_ctd.json", geometry=geometry)
    expected = [n for n in case.centroids_mm if n != "S2"]  # VerSe json has no S2 id
    assert list(ctd) == expected
    for name in expected:
        np.testing.assert_allclose(ctd[name], case.centroids_mm[name], atol=1e-3)
    assert read_centroids(f"{base}_ctd.csv").allclose(case.centroids_mm, atol_mm=1e-3)
    meta = json.loads((tmp_path / f"{case.case_id}_meta.json").read_text())
    assert meta["case_id"] == case.case_id and meta["visible_vertebrae"] == list(case.centroids_mm)
    png = (tmp_path / f"{case.case_id}_preview.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left


def test_cli_rejects_unknown_config_key(tmp_path, capsys):
    from spinebench.benchmark.cli import main

    assert main(["phantom", "--n", "1", "--out", str(tmp_path), "--set", "metal=1"]) == 2
    assert "metal_rate" in capsys.readouterr().err


def _mass_near(case, name: str, half_mm: float = 32.0) -> float:
    """Sum of (HU + 1000) x voxel volume (ml) over the voxels within ``half_mm`` of a centroid, per axis."""
    g = case.geometry
    vox = np.stack(np.meshgrid(*[np.arange(n) for n in case.ct_hu.shape], indexing="ij"), axis=-1)
    near = np.all(np.abs(g.vox_to_world(vox) - case.centroids_mm[name]) <= half_mm, axis=-1)
    return float((case.ct_hu[near].astype(np.float64) + 1000.0).sum() * np.prod(g.spacing_mm) / 1000.0)


def test_coarse_cases_are_partial_volume_averages_of_a_fine_drawing():
    cfg = dict(PLAIN, spacing_mm=8.0, noise_hu=(0.0, 0.0))
    averaged = generate_case(13, 0, PhantomConfig(**cfg))  # drawn at 2 mm, 4 x 4 x 4 voxels averaged
    sampled = generate_case(13, 0, PhantomConfig(**cfg, fine_spacing_mm=8.0))  # drawn point by point at 8 mm
    fine = generate_case(13, 0, PhantomConfig(**dict(cfg, spacing_mm=2.0)))
    assert averaged.geometry == sampled.geometry and averaged.centroids_mm == sampled.centroids_mm
    # a 2 mm cortical shell is a 6 mm bright rim when point-sampled at 8 mm, a dimmer partial volume when averaged
    bone = lambda c: c.ct_hu[c.vertebra_mask > 0].mean()  # noqa: E731
    assert bone(averaged) < 0.75 * bone(sampled)
    # averaging keeps the matter around a vertebra where the 2 mm drawing has it; point samples do not
    for name in ("T6", "L3"):
        ref = _mass_near(fine, name)
        assert abs(_mass_near(averaged, name) - ref) < 0.5 * abs(_mass_near(sampled, name) - ref)


def test_scan_window_cuts_the_body_without_shrinking_anatomy():
    whole = generate_case(14, 0, plain())
    window = generate_case(14, 0, plain(scan_max_width_mm=160.0, scan_max_depth_mm=140.0))
    squashed = generate_case(14, 0, plain(body_max_width_mm=160.0, body_max_depth_mm=140.0))
    spine = xyz(whole)
    extent = np.asarray(window.ct_hu.shape) * window.geometry.spacing_mm  # (S, P, L) axes; LPS x = L, y = P
    assert extent[2] <= 160.0 + np.ptp(spine[:, 0]) + 8.0 and extent[1] <= 140.0 + np.ptp(spine[:, 1]) + 8.0
    assert window.ct_hu.size < 0.8 * whole.ct_hu.size
    assert np.mean(window.ct_hu < -950) < np.mean(whole.ct_hu < -950)  # less air outside the patient
    assert window.centroids_mm == whole.centroids_mm
    for label in (PHANTOM_MASK_ID["L3"], PHANTOM_MASK_ID["T8"]):  # inside and as large (the grid moves < 1 voxel:
        # a 4 mm vertebra of ~400 voxels gains or loses a few % of them)
        assert np.sum(window.vertebra_mask == label) == pytest.approx(np.sum(whole.vertebra_mask == label), rel=0.06)
    # the body is cut, not squashed: between L1 and L4 soft tissue reaches the window's left and right edges;
    # squashing keeps air around a slimmer body
    def edge_tissue(case):
        lo, hi = sorted(int(case.geometry.world_to_vox(case.centroids_mm[n])[0]) for n in ("L1", "L4"))
        return np.mean(case.ct_hu[lo:hi, :, [0, -1]] > -500)

    assert edge_tissue(window) > 0.5 and edge_tissue(squashed) < 0.1
    with pytest.raises(InputError, match="scan_max_depth_mm"):
        PhantomConfig(scan_max_depth_mm=10.0)


def test_mask_centroids_are_the_centres_of_mass_of_the_drawn_vertebrae():
    """``centroids="mask"`` annotates what VerSe and `spinebench centroids` compute from a mask (posterior elements
    included); the image is the same, and on lumbar levels that point lies behind the body's centre."""
    from spinebench.datamodules.centroids import centroids_from_mask

    body = generate_case(16, 0, plain(spacing_mm=2.0))
    mask = generate_case(16, 0, plain(spacing_mm=2.0, centroids="mask"))
    assert mask.ct_hu.tobytes() == body.ct_hu.tobytes() and mask.geometry == body.geometry
    labels = np.where(mask.vertebra_mask == PHANTOM_MASK_ID["S2"], 0, mask.vertebra_mask)  # S2: no VerSe id
    expected = centroids_from_mask(labels, mask.geometry)
    for name in expected:
        np.testing.assert_allclose(mask.centroids_mm[name], expected[name], atol=1e-3)
    behind = [mask.centroids_mm[n][1] - body.centroids_mm[n][1] for n in ("L1", "L2", "L3", "L4")]  # LPS y: posterior
    assert all(6.0 < b < 20.0 for b in behind)
    with pytest.raises(InputError, match="centroids"):
        PhantomConfig(centroids="vertebra")


def test_annotated_body_leaves_vertebrae_cut_to_a_sliver_unannotated():
    """With mask centres, ``annotated="point"`` annotates every vertebra with a voxel in the scan (its centre of mass
    lies inside whatever is drawn); ``annotated="body"`` annotates those whose body centre lies in the scan, as with
    body centres, at their mask centres. The image is the same; the vertebrae left out are the outermost ones."""
    slivers = 0
    for index in range(4):
        point = generate_case(3, index, plain(limited_fov_rate=1.0, centroids="mask", with_mask=False))
        body = generate_case(3, index, plain(limited_fov_rate=1.0, centroids="mask", annotated="body", with_mask=False))
        by_body_centre = generate_case(3, index, plain(limited_fov_rate=1.0, with_mask=False))
        assert body.ct_hu.tobytes() == point.ct_hu.tobytes() and body.geometry == point.geometry
        assert list(body.centroids_mm) == list(by_body_centre.centroids_mm)
        assert body.metadata["visible_vertebrae"] == list(body.centroids_mm)
        for name in body.centroids_mm:
            np.testing.assert_array_equal(body.centroids_mm[name], point.centroids_mm[name])
        names, kept = list(point.centroids_mm), list(body.centroids_mm)
        left_out = [n for n in names if n not in kept]
        assert set(kept) <= set(names) and left_out == [n for n in names if names.index(n) < names.index(kept[0])
                                                         or names.index(n) > names.index(kept[-1])]
        slivers += len(left_out)
    assert slivers >= 1  # these four cases cut at least one vertebra to a sliver
    with pytest.raises(InputError, match="annotated"):
        PhantomConfig(annotated="mask")


def test_scan_window_rate_windows_a_share_of_the_cases_and_records_it():
    """With ``scan_window_rate`` < 1 some cases show the whole body cross-section: such a case equals the case
    generated without a window, a windowed one the case with the window for every case (the draw has a stream of
    its own), and the case condition ``scan_window`` says which."""
    cfg = dict(spacing_mm=8.0, fov_vertebrae=(5, 5))
    window = dict(scan_max_width_mm=160.0, scan_max_depth_mm=120.0)
    applied = []
    for index in range(8):
        mixed = generate_case(31, index, plain(scan_window_rate=0.5, **window, **cfg))
        flag = mixed.metadata["scan_window"]["applied"]
        same = generate_case(31, index, plain(**window, **cfg) if flag else plain(**cfg))
        np.testing.assert_array_equal(mixed.ct_hu, same.ct_hu)
        assert mixed.geometry == same.geometry and mixed.centroids_mm == same.centroids_mm
        assert PhantomSource.conditions(mixed.metadata)["scan_window"] is flag
        applied.append(flag)
    assert 0 < sum(applied) < 8
    assert "scan_window" not in generate_case(31, 0, plain(**window, **cfg)).metadata  # rate 1: a setting, no draw
    with pytest.raises(InputError, match="scan_window_rate"):
        PhantomConfig(scan_window_rate=1.5)
