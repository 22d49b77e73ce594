"""The ISA-L path for ``.nii.gz`` voxels (``datamodules.nifti_gz``) reads what SimpleITK's own reader reads."""

import gzip
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from spinebench.datamodules.ct_io import read_image, write_image
from spinebench.datamodules.errors import InputError
from spinebench.datamodules.geometry import Geometry
from spinebench.datamodules.nifti_gz import read_nifti_gz

# file x -> P, y -> I, z -> R (as the VerSe files), anisotropic: a wrong axis order or geometry shows
GEOMETRY = Geometry((5, 7, 9), (3.0, 1.5, 0.75), (12.5, -40.0, 7.25), np.array([[-1.0, 0, 0], [0, 0, 1], [0, -1, 0]]))


def _values(dtype) -> np.ndarray:
    ramp = np.arange(np.prod(GEOMETRY.shape)).reshape(GEOMETRY.shape) * 7 % 251
    signed = np.issubdtype(dtype, np.signedinteger) or np.issubdtype(dtype, np.floating)
    return (ramp - 120 if signed else ramp).astype(dtype)


def _reader(path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    return reader


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.float32, np.float64])
def test_voxels_and_geometry_equal_itks(tmp_path, dtype):
    path = tmp_path / "ct.nii.gz"
    write_image(path, _values(dtype), GEOMETRY)
    fast = read_nifti_gz(path, _reader(path))
    assert fast is not None, "a plain NIfTI-1 file takes the ISA-L path"
    itk = sitk.ReadImage(str(path))
    assert fast.GetPixelID() == itk.GetPixelID()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(fast), sitk.GetArrayViewFromImage(itk))
    assert (fast.GetSpacing(), fast.GetOrigin(), fast.GetDirection()) == (itk.GetSpacing(), itk.GetOrigin(),
                                                                          itk.GetDirection())
    array, geometry = read_image(path)  # the reader every source uses
    np.testing.assert_array_equal(array, _values(dtype))
    assert geometry == GEOMETRY


def test_scaled_intensities_are_left_to_itk(tmp_path):
    """A CT stored as raw values with scl_slope / scl_inter (common for uint16 scanners' data): ITK rescales."""
    plain = tmp_path / "raw.nii"
    write_image(plain, _values(np.uint16), GEOMETRY)
    header = bytearray(plain.read_bytes())
    header[112:120] = struct.pack("<2f", 2.0, -1024.0)
    path = tmp_path / "scaled.nii.gz"
    path.write_bytes(gzip.compress(bytes(header)))
    assert read_nifti_gz(path, _reader(path)) is None
    array, _ = read_image(path)
    np.testing.assert_allclose(array, 2.0 * _values(np.uint16) - 1024.0)


def test_a_truncated_stream_is_left_to_itk_and_named(tmp_path):
    path = tmp_path / "cut.nii.gz"
    write_image(path, _values(np.int16), GEOMETRY)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert read_nifti_gz(path, _reader(path)) is None
    with pytest.raises(InputError, match="cut.nii.gz.*truncated"):
        read_image(path)


def test_every_real_nifti_beside_the_project_reads_as_itk_reads_it(shared_real):
    """VerSe crops (int16 and float32 CTs), TotalSegmentator and TPTBox files: CTs, masks, float64 segmentations."""
    paths = sorted(shared_real.rglob("*.nii.gz"))
    assert len(paths) >= 12
    for path in paths:
        fast = read_nifti_gz(path, _reader(path))
        assert fast is not None, f"{path.name}: a plain NIfTI-1 file takes the ISA-L path"
        itk = sitk.ReadImage(str(path))
        assert fast.GetPixelID() == itk.GetPixelID(), path.name
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(fast), sitk.GetArrayViewFromImage(itk), path.name)
        assert (fast.GetSpacing(), fast.GetOrigin(), fast.GetDirection()) == (
            itk.GetSpacing(), itk.GetOrigin(), itk.GetDirection()), path.name
