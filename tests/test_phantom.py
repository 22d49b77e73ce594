import json

import numpy as np
import pytest

from spinebench.datamodules.errors import InputError
from spinebench.datamodules.phantom import METAL_THRESHOLD_HU, PhantomConfig, generate_case
from spinebench.datamodules.phantom_anatomy import PHANTOM_MASK_ID
from spinebench.datamodules.sources.phantom import PhantomSource

# 4 mm and no random difficulties, uniform cancellous bone: each test switches on only what it checks.
PLAIN = dict(spacing_mm=4.0, limited_fov_rate=0.0, scoliosis_rate=0.0, kyphosis_rate=0.0, metal_rate=0.0,
             anisotropic_rate=0.0, noise_hu=(10.0, 10.0), texture=False)


def plain(**overrides) -> PhantomConfig:
    return PhantomConfig(**{**PLAIN, **overrides})


def _xyz(case) -> np.ndarray:
    return np.stack([case.centroids_mm[n] for n in case.centroids_mm])


def test_same_seed_same_bytes_other_index_differs():
    cfg = PhantomConfig(spacing_mm=4.0, fov_vertebrae=(6, 10))
    a, b, c = generate_case(5, 1, cfg), generate_case(5, 1, cfg), generate_case(5, 2, cfg)
    assert a.case_id == "phantom-s5-0001"
    assert a.ct_hu.dtype == np.int16 and a.ct_hu.tobytes() == b.ct_hu.tobytes()
    assert a.vertebra_mask.tobytes() == b.vertebra_mask.tobytes()
    assert a.centroids_mm == b.centroids_mm and a.geometry == b.geometry
    assert json.dumps(a.metadata, sort_keys=True, default=str) == json.dumps(b.metadata, sort_keys=True, default=str)
    assert a.ct_hu.shape != c.ct_hu.shape or a.ct_hu.tobytes() != c.ct_hu.tobytes()
    assert not np.allclose(_xyz(a)[:4], _xyz(c)[:4])


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
    h.update(np.round(_xyz(case), 4).tobytes())
    assert h.hexdigest() == expected


def test_canonical_geometry_and_centroids_inside():
    case = generate_case(0, 0, plain())
    np.testing.assert_allclose(case.geometry.direction, np.eye(3)[:, ::-1])  # axes grow S, P, L
    np.testing.assert_allclose(case.geometry.spacing_mm, 4.0)
    names = list(case.centroids_mm)
    assert names[0] == "C1" and names[-1] == "S2" and len(names) == 26
    vox = case.geometry.world_to_vox(_xyz(case))
    assert np.all(np.diff(vox[:, 0]) < 0)  # axis 0 grows towards the head: C1 has the largest index
    assert case.geometry.contains_vox(vox, margin=0.0).all()
    # Body cross-section stays small: at most ~300 x 250 mm plus margins.
    assert case.ct_hu.shape[2] * 4.0 <= 320 and case.ct_hu.shape[1] * 4.0 <= 275 + 50  # + room for the table


@pytest.mark.parametrize("seed,overrides", [
    (1, {}),
    (2, {"scoliosis_rate": 1.0, "kyphosis_rate": 1.0, "metal_rate": 1.0}),
    (3, {"label_set": "transitional", "transitional_rate": 1.0, "spacing_mm": 3.0}),
])
def test_every_centroid_lies_in_bone_of_its_own_vertebra(seed, overrides):
    spacing = overrides.get("spacing_mm", PLAIN["spacing_mm"])  # point samples: the painted HU values appear as such
    case = generate_case(seed, 0, plain(noise_hu=(0.0, 0.0), blur_sigma_mm=(0.0, 0.0), fine_spacing_mm=spacing,
                                        **overrides))
    vox = np.rint(case.geometry.world_to_vox(_xyz(case))).astype(int)
    tissue = case.metadata["tissue_hu"]
    checked = 0
    for name, (i, j, k) in zip(case.centroids_mm, vox):
        assert case.vertebra_mask[i, j, k] == PHANTOM_MASK_ID[name], name
        if case.ct_hu[i].max() < METAL_THRESHOLD_HU:  # streaks may darken bone in slices that hold metal
            assert case.ct_hu[i, j, k] >= tissue["cancellous"] - 1, (name, case.ct_hu[i, j, k])  # cancellous or cortical
            checked += 1
    assert checked >= len(case.centroids_mm) - 8
    # Cortical shell and cancellous core both present, in their HU ranges (set per case).
    assert 200 <= tissue["cortical"] <= 450 and 60 <= tissue["cancellous"] <= 180  # fitted to real CT
    assert tissue["posterior"] == pytest.approx(1.1 * tissue["cortical"], abs=1e-3)
    bone = case.ct_hu[case.vertebra_mask > 0]
    assert np.any(np.abs(bone - tissue["cortical"]) < 1) and np.any(np.abs(bone - tissue["cancellous"]) < 1)
    # Lungs and air are present; ribs (bone outside the vertebra labels) too.
    assert np.any(case.ct_hu < -800) and np.any((case.ct_hu >= tissue["cortical"] - 1) & (case.vertebra_mask == 0))


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
    xyz = _xyz(case)
    fit = np.polyval(np.polyfit(xyz[:, 2], xyz[:, 0], 1), xyz[:, 2])
    return float(np.abs(xyz[:, 0] - fit).max())


def test_scoliosis_and_kyphosis_deform_the_curve():
    base = generate_case(7, 0, plain())
    sco = generate_case(7, 0, plain(scoliosis_rate=1.0))
    kyph = generate_case(7, 0, plain(kyphosis_rate=1.0))
    assert sco.metadata["scoliosis"]["applied"] and abs(sco.metadata["scoliosis"]["amplitude_mm"]) >= 12
    assert _lateral_deviation(sco) > _lateral_deviation(base) + 5.0
    dy = np.abs(_xyz(kyph)[:, 1] - _xyz(base)[:, 1])
    assert kyph.metadata["kyphosis"]["applied"] and dy.max() > 5.0
    np.testing.assert_allclose(_xyz(kyph)[:, 0], _xyz(base)[:, 0])  # sagittal only


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
    assert case.geometry.contains_vox(case.geometry.world_to_vox(_xyz(case)), margin=0.0).all()


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
    assert crop.geometry.contains_vox(crop.geometry.world_to_vox(_xyz(crop)), margin=0.0).all()
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
    spine = _xyz(whole)
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


def test_articular_processes_form_columns_beside_the_canal():
    """Beside and behind the canal, L3's bone spans more of the spine's length than its body does (the superior and
    inferior articular processes reach towards L2's and L4's, which they meet at the facet joints)."""
    case = generate_case(15, 0, plain(spacing_mm=2.0, noise_hu=(0.0, 0.0), blur_sigma_mm=(0.0, 0.0)))
    g, mask = case.geometry, case.vertebra_mask
    l3 = g.world_to_vox(case.centroids_mm["L3"])  # (s, p, l) voxels
    idx = np.argwhere(mask == PHANTOM_MASK_ID["L3"])
    d = idx - l3
    body = idx[(np.abs(d[:, 2]) < 4) & (d[:, 1] < 0)]  # the body's middle, in front of the centroid
    side = idx[(np.abs(d[:, 2]) >= 6) & (d[:, 1] >= 10)]  # lateral to the canal, behind it
    assert len(body) and len(side)
    span = lambda a: np.ptp(a[:, 0])  # noqa: E731
    assert span(side) >= span(body) + 3  # 6 mm longer than the body is tall


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


def test_organs_lie_where_anatomy_puts_them_and_leave_the_vertebrae_alone():
    """Point samples of a noise-free 4 mm case (C4-L5: a section, so its grid is that of the case without organs,
    which ends before the room for the table behind the back): each organ's value appears on its side of the spine
    and at its level, bowel gas lies inside the body in front of the lumbar spine; the vertebrae, their mask and
    centroids are those of the same case without organs."""
    cfg = dict(noise_hu=(0.0, 0.0), blur_sigma_mm=(0.0, 0.0), fine_spacing_mm=4.0, fov_vertebrae=(20, 24))
    case = generate_case(23, 0, plain(**cfg))
    bare = generate_case(23, 0, plain(organs=False, **cfg))
    n = bare.ct_hu.shape[1]
    assert list(case.centroids_mm)[-1] == "L5" and case.centroids_mm == bare.centroids_mm
    assert np.allclose(case.geometry.origin_mm, bare.geometry.origin_mm) and not case.vertebra_mask[:, n:].any()
    case.ct_hu, case.vertebra_mask = case.ct_hu[:, :n], case.vertebra_mask[:, :n]
    assert case.vertebra_mask.tobytes() == bare.vertebra_mask.tobytes()
    bone = case.vertebra_mask > 0
    assert np.array_equal(case.ct_hu[bone], bare.ct_hu[bone])
    organs = case.metadata["organs"]
    hu = organs["tissue_hu"]
    vox = {n: case.geometry.world_to_vox(case.centroids_mm[n]) for n in case.centroids_mm}  # (s, p, l) voxels
    spine_l = vox["L1"][2]

    def where(value):
        idx = np.argwhere(np.abs(case.ct_hu.astype(float) - round(value)) < 0.5)
        return idx[bare.ct_hu[tuple(idx.T)] != case.ct_hu[tuple(idx.T)]]  # painted by the organs

    liver, spleen, aorta = where(hu["liver"]), where(hu["spleen"]), where(hu["aorta"])
    assert len(liver) > 200 and np.mean(liver[:, 2] < spine_l) > 0.95  # the patient's right
    assert len(spleen) > 20 and np.mean(spleen[:, 2] > spine_l) > 0.95  # the left
    assert vox["L2"][0] < np.median(liver[:, 0]) < vox["T9"][0]
    kidney = where(hu["kidney"])
    assert (kidney[:, 2] < spine_l - 8).any() and (kidney[:, 2] > spine_l + 8).any()  # both sides, > 32 mm out
    at_l2 = aorta[aorta[:, 0] == round(vox["L2"][0])]  # without contrast the vena cava (right) has the same value
    assert np.all(at_l2[:, 1] < vox["L2"][1]) and (at_l2[:, 2] > vox["L2"][2]).sum() >= 5  # in front; on the left
    gas = np.argwhere((case.ct_hu < -850) & (bare.ct_hu > -200))  # gas where the body was
    assert organs["bowel_gas_loops"] > 0 and len(gas) > 0
    assert np.all(gas[:, 0] < vox["L1"][0] + 8) and np.median(gas[:, 1]) < vox["L3"][1]


def test_whole_spine_scans_reach_the_hips():
    """With organs a whole spine's scan ends 75 mm below S2 (28 mm without): the femoral heads, acetabula and
    rami are bone outside every vertebra, below the iliac wings and on both sides of S1."""
    case = generate_case(19, 0, plain(noise_hu=(0.0, 0.0), blur_sigma_mm=(0.0, 0.0), fine_spacing_mm=4.0))
    bare = generate_case(19, 0, plain(organs=False, noise_hu=(0.0, 0.0), blur_sigma_mm=(0.0, 0.0)))
    extent = lambda c: c.ct_hu.shape[0] * c.geometry.spacing_mm[0]  # noqa: E731
    assert extent(case) - extent(bare) == pytest.approx(47.0, abs=4.0)
    s1 = case.geometry.world_to_vox(case.centroids_mm["S1"])
    bone = np.argwhere((case.ct_hu >= case.metadata["tissue_hu"]["cortical"] - 1) & (case.vertebra_mask == 0))
    below = bone[bone[:, 0] < s1[0] - 12]  # more than 48 mm below S1's centre: below the iliac wings
    assert (below[:, 2] < s1[2] - 15).any() and (below[:, 2] > s1[2] + 15).any()


def test_sternum_costal_cartilage_and_table():
    """A whole-body case: bone in the front midline at T5 (the sternum, where the true ribs' arcs meet), the
    cartilage's value beside it, and the table's shell behind the back; a scan cut to a depth around the spine
    has no table."""
    cfg = dict(noise_hu=(0.0, 0.0), blur_sigma_mm=(0.0, 0.0), fine_spacing_mm=4.0)
    case = generate_case(21, 0, plain(**cfg))
    tissue, organs, table = case.metadata["tissue_hu"], case.metadata["organs"]["tissue_hu"], case.metadata["table"]
    t5 = case.geometry.world_to_vox(case.centroids_mm["T5"])
    i, j, k = (int(round(x)) for x in t5)
    rows = case.ct_hu[i - 8 : i + 3]  # the sternum sits below the level of its ribs' heads
    bone = np.argwhere((rows >= tissue["cortical"] - 1) & (case.vertebra_mask[i - 8 : i + 3] == 0))
    front = bone[(bone[:, 1] < j - 20) & (np.abs(bone[:, 2] - k) <= 3)]  # > 80 mm in front, within 12 mm of midline
    assert len(front) > 0
    assert np.any(np.abs(case.ct_hu.astype(float) - round(organs["cartilage"])) < 0.5)
    assert table["drawn"]
    behind = case.ct_hu[:, -12:, :]  # the last 48 mm of the canvas: the table, outside the body
    assert np.mean(np.abs(behind.astype(float) - round(table["shell_hu"])) < 0.5) > 0.03
    windowed = generate_case(21, 0, plain(scan_max_depth_mm=120.0, **cfg))
    assert not windowed.metadata["table"]["drawn"]
    assert not np.any(np.abs(windowed.ct_hu.astype(float) - round(table["shell_hu"])) < 0.5)


def test_trabecular_texture_and_correlated_noise():
    """With texture, cancellous bone varies around its value with the drawn standard deviation (mean kept), and
    2 mm noise is correlated between neighbouring voxels at the set standard deviation; without, bone is uniform
    and the noise white."""
    cfg = dict(spacing_mm=2.0, fine_spacing_mm=2.0, blur_sigma_mm=(0.0, 0.0), fov_vertebrae=(4, 4))
    flat = generate_case(22, 0, plain(noise_hu=(0.0, 0.0), **cfg))
    tex = generate_case(22, 0, plain(noise_hu=(0.0, 0.0), texture=True, **cfg))
    cancellous = flat.ct_hu == round(flat.metadata["tissue_hu"]["cancellous"])
    values = tex.ct_hu[cancellous].astype(float)
    std = tex.metadata["texture"]["trabecular_std_hu"]
    assert cancellous.sum() > 500 and 0.7 * std < values.std() < 1.3 * std
    assert abs(values.mean() - flat.metadata["tissue_hu"]["cancellous"]) < 0.2 * std
    assert np.array_equal(tex.ct_hu[~cancellous], flat.ct_hu[~cancellous])  # only cancellous bone changes

    def soft_noise(texture):  # in soft tissue: air's noise is clipped at -1024 HU
        case = generate_case(22, 0, plain(noise_hu=(40.0, 40.0), texture=texture, **cfg))
        soft = flat.ct_hu == round(flat.metadata["tissue_hu"]["soft"])
        pairs = soft[:, :, :-1] & soft[:, :, 1:]
        a, b = case.ct_hu[:, :, :-1][pairs].astype(float), case.ct_hu[:, :, 1:][pairs].astype(float)
        return (a - round(flat.metadata["tissue_hu"]["soft"])).std(), np.corrcoef(a, b)[0, 1]

    (std_white, r_white), (std_corr, r_corr) = soft_noise(False), soft_noise(True)
    assert abs(r_white) < 0.05 and r_corr > 0.15
    assert 36 < std_white < 44 and 36 < std_corr < 44


def test_canal_front_is_the_body_wall_and_pedicles_join_the_arch():
    """The spinal canal lies directly behind the vertebral body: no posterior-element bone between the body's wall
    and the canal across the canal's width (the arch is a ring behind the canal, joined to the body by the
    pedicles beside it), as on real CT."""
    case = generate_case(15, 0, plain(spacing_mm=2.0, noise_hu=(0.0, 0.0), blur_sigma_mm=(0.0, 0.0)))
    s0, p0, l0 = np.rint(case.geometry.world_to_vox(case.centroids_mm["L3"])).astype(int)
    posterior = round(case.metadata["tissue_hu"]["posterior"])
    checked = 0
    for s in range(s0 - 4, s0 + 5):  # the axial slices that cut body, canal and lamina on the midline
        bone = case.vertebra_mask[s] == PHANTOM_MASK_ID["L3"]  # (p, l)
        wall = p0 + int(np.argmin(bone[p0:, l0]))  # the first voxel behind the body: the canal
        lamina = wall + int(np.argmax(bone[wall:, l0]))
        if not (bone[p0, l0] and bone[lamina, l0] and lamina - wall >= 4):
            continue
        mid = (wall + lamina) // 2
        left, right = int(np.argmax(bone[mid, l0::-1])), int(np.argmax(bone[mid, l0:]))
        assert bone[mid, l0 - left] and bone[mid, l0 + right] and left >= 3 and right >= 3  # walls beside it
        front = case.ct_hu[s, wall - 3:mid, l0 - left + 1:l0 + right]
        assert not np.any(front == posterior), s
        checked += 1
    assert checked >= 2


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


def test_vertebra_detail_adds_subchondral_bone_the_foramen_and_the_canal_contents():
    """Version 5 (opt-in, a stream of its own): the spine, its centroids and the grid stay; each body gets denser bone
    under its endplates around a darker middle, the basivertebral foramen in its posterior wall at mid-height, and
    the canal holds fluid and fat (darker than soft tissue) behind a shallower arch whose spinous tip stays."""
    cfg = dict(spacing_mm=2.0, noise_hu=(0.0, 0.0), blur_sigma_mm=(0.0, 0.0))
    base = generate_case(15, 0, plain(**cfg))
    det = generate_case(15, 0, plain(vertebra_detail=True, **cfg))
    assert det.centroids_mm == base.centroids_mm and det.geometry == base.geometry
    t0, t1 = base.metadata["tissue_hu"], det.metadata["tissue_hu"]
    assert "subchondral" not in t0 and t1["cancellous"] < t0["cancellous"]
    assert t1["cancellous"] < t1["subchondral"] < t1["cortical"] and t1["canal"] < t1["soft"] <= t1["vein"]
    s0, p0, l0 = np.rint(det.geometry.world_to_vox(det.centroids_mm["L3"])).astype(int)  # the body's centre
    l3 = det.vertebra_mask == PHANTOM_MASK_ID["L3"]
    rows = lambda hu: np.argwhere(l3 & (det.ct_hu == round(t1[hu])))  # noqa: E731
    sub, mid, vein = rows("subchondral"), rows("cancellous"), rows("vein")
    assert len(sub) > 50 and len(mid) > 50 and len(vein) > 3
    assert np.abs(sub[:, 0] - s0).mean() > np.abs(mid[:, 0] - s0).mean() + 1.5  # under the endplates
    assert np.abs(vein[:, 0] - s0).mean() <= 3 and vein[:, 1].min() > p0  # mid-height (the body tilts), behind
    # the midline behind the body: canal (fluid, darker than base's soft tissue), then the lamina, nearer than before
    depth, tip = {}, {}
    for name, case in (("base", base), ("detail", det)):
        depth[name] = []
        for s in range(s0 - 4, s0 + 5):  # the axial slices that cut body, canal and lamina on the midline
            bone = case.vertebra_mask[s, :, l0] == PHANTOM_MASK_ID["L3"]
            wall = p0 + int(np.argmin(bone[p0:]))
            if bone[p0] and bone[wall:].any():
                depth[name].append(int(np.argmax(bone[wall:])))
                canal = case.ct_hu[s, wall + depth[name][-1] // 2, l0]
                assert canal == round(t1["canal"]) if name == "detail" else canal > round(t1["canal"])
        tip[name] = np.argwhere(case.vertebra_mask[s0 - 8 : s0 + 9, :, l0] == PHANTOM_MASK_ID["L3"])[:, 1].max()
    assert len(depth["base"]) >= 2 and len(depth["detail"]) >= 2
    assert max(depth["detail"]) < min(depth["base"]) and abs(int(tip["detail"]) - int(tip["base"])) <= 2
    textured = generate_case(15, 0, plain(vertebra_detail=True, texture=True, **cfg))
    assert textured.ct_hu[tuple(sub.T)].std() > 5.0  # trabecular texture reaches the subchondral bone
