import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from spinebench.datamodules.ct_io import read_geometry, read_image, read_sitk_image, write_image
from spinebench.datamodules.orientation import orientation_code, reorient, reorient_canonical
from spinebench.datamodules.resample import box_factors, resample_isotropic
from spinebench.datamodules.errors import InputError
from spinebench.datamodules.geometry import CANONICAL_DIRECTION, Geometry, canonical_geometry

# A P-I-R geometry like the VerSe files: file x -> P, y -> I, z -> R; numpy axes (z, y, x) -> (R, I, P).
PIR_DIRECTION = np.array([[-1.0, 0, 0], [0, 0, 1], [0, -1, 0]])


def _pir_geometry(shape=(6, 7, 8)):
    return Geometry(shape, (3.0, 1.5, 1.0), (12.5, -40.0, 7.25), PIR_DIRECTION)


def _ramp(shape, dtype=np.int16):
    return np.arange(np.prod(shape)).reshape(shape).astype(dtype)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"])
def test_write_read_round_trip_every_format(tmp_path, suffix):
    geometry = _pir_geometry()
    array = _ramp(geometry.shape)
    path = tmp_path / f"img{suffix}"
    write_image(path, array, geometry)
    back, back_geometry = read_image(path)
    np.testing.assert_array_equal(back, array)
    assert back.dtype == np.int16
    assert back_geometry == geometry
    assert read_geometry(path) == geometry
    assert orientation_code(back_geometry) == "PIR"
    # Only the image (and the data file of detached formats) remains: no temporary files.
    expected = {path.name} | ({"img.raw"} if suffix == ".mhd" else {"img.raw"} if suffix == ".nhdr" else set())
    assert {p.name for p in tmp_path.iterdir()} == expected


def test_failed_write_leaves_no_file(tmp_path):
    geometry = _pir_geometry()
    with pytest.raises(ValueError):
        write_image(tmp_path / "bad.nii.gz", np.zeros((2, 2, 2)), geometry)
    with pytest.raises(InputError, match="unsupported image format"):
        write_image(tmp_path / "bad.png", _ramp(geometry.shape), geometry)
    assert list(tmp_path.iterdir()) == []


def test_reorient_canonical_keeps_every_voxel_at_its_world_position():
    geometry = _pir_geometry()
    array = _ramp(geometry.shape, np.int32)
    out, out_geometry = reorient_canonical(array, geometry)
    np.testing.assert_allclose(out_geometry.direction, CANONICAL_DIRECTION)
    assert orientation_code(out_geometry) == "LPS"
    assert out.shape == (7, 8, 6)  # (I->S, P, R->L)
    np.testing.assert_allclose(out_geometry.spacing_mm, (1.5, 1.0, 3.0))
    rng = np.random.default_rng(0)
    for vox in rng.integers(0, geometry.shape, size=(20, 3)):
        new_vox = np.rint(out_geometry.world_to_vox(geometry.vox_to_world(vox))).astype(int)
        assert out[tuple(new_vox)] == array[tuple(vox)]
    # Canonical in, unchanged out; and back to P-I-R reproduces the input exactly.
    same, same_geometry = reorient_canonical(out, out_geometry)
    assert same_geometry == out_geometry and np.array_equal(same, out)
    back, back_geometry = reorient(out, out_geometry, "PIR")
    assert back_geometry == geometry and np.array_equal(back, array)
    canon = canonical_geometry((3, 4, 5), 2.0)
    assert orientation_code(canon) == "LPS" and reorient_canonical(np.zeros((3, 4, 5)), canon)[1] == canon


def test_reorient_rejects_bad_codes():
    with pytest.raises(InputError, match="invalid orientation code"):
        reorient(np.zeros((2, 2, 2)), _pir_geometry((2, 2, 2)), "LLS")


def test_resample_isotropic_keeps_extent_centre_and_linear_ramps():
    geometry = Geometry((10, 20, 30), (3.0, 1.0, 0.5), (5.0, -3.0, 100.0), PIR_DIRECTION)
    vox = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij"), axis=-1)
    world = geometry.vox_to_world(vox)
    ct = (2.0 * world[..., 0] - world[..., 1] + 0.5 * world[..., 2]).astype(np.float32)  # linear in mm
    out, out_geometry = resample_isotropic(ct, geometry, 2.0, "linear", antialias=False)  # point samples
    assert out.shape == (15, 10, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out_geometry.spacing_mm, 2.0)
    np.testing.assert_allclose(out_geometry.direction, geometry.direction)
    centre = lambda g: g.vox_to_world((np.asarray(g.shape) - 1) / 2)  # noqa: E731
    np.testing.assert_allclose(centre(out_geometry), centre(geometry), atol=1e-9)
    extent = np.asarray(out_geometry.shape) * 2.0
    assert np.all(np.abs(extent - np.asarray(geometry.shape) * geometry.spacing_mm) <= 1.0)
    # Linear interpolation reproduces a linear function at every sample inside the old voxel centres.
    new_vox = np.stack(np.meshgrid(*[np.arange(n) for n in out.shape], indexing="ij"), axis=-1)
    new_world = out_geometry.vox_to_world(new_vox)
    inside = geometry.contains_vox(geometry.world_to_vox(new_world), margin=0.0)  # (..., 3) batches
    expected = 2.0 * new_world[..., 0] - new_world[..., 1] + 0.5 * new_world[..., 2]
    assert inside.sum() > 500
    np.testing.assert_allclose(out[inside], expected[inside], atol=1e-3)

    labels = np.zeros(geometry.shape, np.uint8)
    labels[3:7, 5:15, 10:20] = 7
    lab, lab_geometry = resample_isotropic(labels, geometry, 2.0, "nearest")
    assert lab.dtype == np.uint8 and set(np.unique(lab)) == {0, 7}
    assert lab_geometry == out_geometry
    with pytest.raises(InputError, match="unknown interpolation"):
        resample_isotropic(labels, geometry, 2.0, "cubic")


def test_downsampling_beyond_twice_the_spacing_averages_blocks_instead_of_aliasing():
    # 1 mm slabs alternating 0 / 1000 HU along every axis (a 3D checkerboard), 61 voxels: not a whole number of
    # 8 mm blocks, and one -1000 HU voxel at the origin corner makes "outside" (the fill value) visible
    geometry = Geometry((61, 61, 61), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), CANONICAL_DIRECTION)
    i, j, k = np.indices(geometry.shape)
    ct = (1000 * ((i + j + k) % 2)).astype(np.int16)
    ct[0, 0, 0] = -1000
    averaged, grid = resample_isotropic(ct, geometry, 8.0)
    aliased, _ = resample_isotropic(ct, geometry, 8.0, antialias=False)
    assert averaged.shape == (8, 8, 8) and grid.spacing_mm.tolist() == [8.0, 8.0, 8.0]
    inner = averaged[1:, 1:, 1:]  # away from the -1000 corner; the far edges' blocks are completed with edge values
    np.testing.assert_allclose(inner[:-1, :-1, :-1], 500.0, atol=2.0)  # the mean of what each voxel covers
    np.testing.assert_allclose(inner, 500.0, atol=50.0)  # no fill value (-1000) reaches the far edges
    assert np.abs(aliased[1:, 1:, 1:] - 500.0).mean() > 400  # point samples of the pattern alias to 0 or 1000
    # up to a factor 2 nothing changes: linear interpolation already blends every input voxel
    half, _ = resample_isotropic(ct, geometry, 2.0)
    np.testing.assert_array_equal(half, resample_isotropic(ct, geometry, 2.0, antialias=False)[0])
    # one axis thin, the others not: only the thin axis is averaged
    thick = Geometry((61, 61, 61), (1.0, 4.0, 4.0), (0.0, 0.0, 0.0), CANONICAL_DIRECTION)
    assert box_factors(thick.spacing_mm, 8.0) == [8, 1, 1] and box_factors([0.7, 3.0, 1.0], 2.0) == [2, 1, 1]


OBLIQUE = np.linalg.qr(np.array([[0.1, 0.98, 0.05], [0.02, -0.06, 1.0], [-0.99, 0.1, 0.03]]))[0]


@pytest.mark.parametrize("direction", [PIR_DIRECTION, CANONICAL_DIRECTION, OBLIQUE], ids=["PIR", "LPS", "oblique"])
def test_one_pass_preprocessing_equals_reorienting_then_resampling(tmp_path, direction):
    """Straight onto the canonical isotropic grid, from a numpy array or from the SimpleITK image a file was read
    into (no full-resolution copies), gives what reorienting first and then resampling gives."""
    from spinebench.datamodules.preprocess import PreprocessParams, preprocess_volume

    # 0.9 and 0.7 mm axes are averaged in pairs before resampling to 2 mm: whole pairs (18, 30), so the blocks are
    # the same whichever way an axis runs
    geometry = Geometry((23, 18, 30), (2.5, 0.9, 0.7), (5.0, -3.0, 100.0), direction)
    ct = np.random.default_rng(1).integers(-1024, 1500, geometry.shape).astype(np.int16)
    params = PreprocessParams(spacing_mm=2.0)
    canon, canon_geometry = reorient_canonical(ct, geometry)
    two_step, grid = resample_isotropic(canon, canon_geometry, 2.0, "linear")
    expected = (np.maximum(two_step, params.clip_hu_min) - params.hu_mean) / params.hu_std
    write_image(tmp_path / "ct.nii.gz", ct, geometry)
    image, read_geometry_ = read_sitk_image(tmp_path / "ct.nii.gz")
    assert isinstance(image, sitk.Image) and read_geometry_ == geometry
    for source in (ct, image):
        out, out_geometry = preprocess_volume(source, geometry, params)
        assert out_geometry == grid and out.dtype == np.float32 and out.flags.c_contiguous
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)
    # already at the spacing: an exact reorientation, from either input
    same = Geometry((6, 7, 8), (2.0, 2.0, 2.0), (1.0, 2.0, 3.0), PIR_DIRECTION)
    small = ct[:6, :7, :8]
    write_image(tmp_path / "s.nii", small, same)
    canon_small, _ = reorient_canonical(small, same)
    for source in (small, read_sitk_image(tmp_path / "s.nii")[0]):
        out, _ = preprocess_volume(source, same, params)
        np.testing.assert_array_equal(out, ((np.maximum(canon_small.astype(np.float32), params.clip_hu_min)
                                             - np.float32(params.hu_mean)) / np.float32(params.hu_std)))


def test_bad_image_files_raise_one_line_input_errors(tmp_path):
    geometry = _pir_geometry((8, 9, 10))
    good = tmp_path / "good.nii.gz"
    write_image(good, _ramp(geometry.shape), geometry)
    data = good.read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(data[: len(data) // 2])
    raw = gzip.decompress(data)
    (tmp_path / "trunc.nii").write_bytes(raw[: len(raw) - 100])
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image")
    image2d = sitk.GetImageFromArray(np.zeros((5, 6), np.int16))
    sitk.WriteImage(image2d, str(tmp_path / "flat.nii.gz"))
    image3d = sitk.GetImageFromArray(np.zeros((3, 5, 6), np.int16))
    sitk.WriteImage(sitk.JoinSeries([image3d, image3d]), str(tmp_path / "series.nii.gz"))
    (tmp_path / "empty_dir").mkdir()
    cases = {
        "missing.nii.gz": "no such file",
        "trunc.nii.gz": "truncated",
        "trunc.nii": "truncated",
        "junk.nii.gz": "corrupt file",
        "flat.nii.gz": "2D image",
        "series.nii.gz": "4D image",
        "empty_dir": "no DICOM series",
        "good.png": "unsupported image format",
    }
    (tmp_path / "good.png").write_bytes(b"x")
    for name, problem in cases.items():
        with pytest.raises(InputError) as err:
            read_image(tmp_path / name)
        message = str(err.value)
        assert problem in message and name in message and "\n" not in message, (name, message)


@pytest.mark.needs_shared
def test_dicom_series_and_its_nifti_seg_share_one_grid(shared_real):
    folder = shared_real / "totalsegmentator_tests"
    ct, ct_geometry = read_image(folder / "example_ct_dicom")
    seg, seg_geometry = read_image(folder / "example_seg_dicom.nii.gz")
    assert ct.shape == (20, 512, 512) and ct.dtype == np.int16
    np.testing.assert_allclose(ct_geometry.spacing_mm, (2.0, 0.9765625, 0.9765625))
    np.testing.assert_allclose(ct_geometry.origin_mm, (-249.51171875, -437.51171875, -804.5), atol=1e-4)
    assert orientation_code(ct_geometry) == "LPS" and orientation_code(seg_geometry) == "LAS"
    assert seg_geometry != ct_geometry  # the seg stores y flipped...
    ct_c, ct_c_geometry = reorient_canonical(ct, ct_geometry)
    seg_c, seg_c_geometry = reorient_canonical(seg, seg_geometry)
    assert seg_c_geometry == ct_c_geometry  # ...on the same physical grid
    # and after reorientation the vertebra labels (32 T12, 33 T11) sit on bone; read naively, they would not.
    vertebrae = np.isin(seg_c, [32, 33])
    assert vertebrae.sum() > 10_000 and ct_c[vertebrae].mean() > 200
    assert ct[np.isin(seg, [32, 33])].mean() < 0


@pytest.mark.needs_shared
def test_real_pir_and_ras_files_reorient_losslessly(shared_real):
    ct, geometry = read_image(shared_real / "verse_cropped_elkhashabs" / "sub-verse006_ct.nii.gz")
    assert orientation_code(geometry) == "PIR" and ct.shape == (37, 86, 100)
    out, out_geometry = reorient_canonical(ct, geometry)
    assert out.shape == (86, 100, 37) and orientation_code(out_geometry) == "LPS"
    np.testing.assert_allclose(out_geometry.spacing_mm, (1.0, 1.0, 3.0))
    for vox in [(0, 0, 0), (36, 85, 99), (10, 40, 60)]:
        new = np.rint(out_geometry.world_to_vox(geometry.vox_to_world(vox))).astype(int)
        assert out[tuple(new)] == ct[vox]
    ras, ras_geometry = read_image(shared_real / "totalsegmentator_tests" / "example_ct.nii.gz")
    assert orientation_code(ras_geometry) == "RAS"
    out, out_geometry = reorient_canonical(ras, ras_geometry)
    np.testing.assert_array_equal(out, ras[:, ::-1, ::-1])  # R->L and A->P flips, S kept
