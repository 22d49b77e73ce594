"""The phantom's anatomy: vertebra parts, organs, hips, sternum, table, bone texture, version 5's vertebra detail
(the generator, its difficulties and its command line: tests/test_phantom.py)."""

import numpy as np
import pytest

from spinebench.datamodules.phantom import METAL_THRESHOLD_HU, generate_case
from spinebench.datamodules.phantom_anatomy import PHANTOM_MASK_ID
from tests.phantom_fixtures import PLAIN, plain, xyz


@pytest.mark.parametrize("seed,overrides", [
    (1, {}),
    (2, {"scoliosis_rate": 1.0, "kyphosis_rate": 1.0, "metal_rate": 1.0}),
    (3, {"label_set": "transitional", "transitional_rate": 1.0, "spacing_mm": 3.0}),
])
def test_every_centroid_lies_in_bone_of_its_own_vertebra(seed, overrides):
    spacing = overrides.get("spacing_mm", PLAIN["spacing_mm"])  # point samples: the painted HU values appear as such
    case = generate_case(seed, 0, plain(noise_hu=(0.0, 0.0), blur_sigma_mm=(0.0, 0.0), fine_spacing_mm=spacing,
                                        **overrides))
    vox = np.rint(case.geometry.world_to_vox(xyz(case))).astype(int)
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
