import numpy as np
import SimpleITK as sitk

from spinebench.datamodules.geometry import Geometry


def test_sitk_round_trip_matches_itk_point_transform():
    arr = np.zeros((4, 5, 6), dtype=np.int16)  # numpy (z, y, x)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 1.5, 3.0))
    img.SetOrigin((10.0, -20.0, 30.0))
    # x axis -> P, y axis -> I, z axis -> R (a P-I-R file)
    img.SetDirection((0, 0, -1, 1, 0, 0, 0, -1, 0))
    geo = Geometry.from_sitk(img)
    assert geo.shape == (4, 5, 6)
    np.testing.assert_allclose(geo.spacing_mm, (3.0, 1.5, 0.8))
    for ijk_xyz in [(0, 0, 0), (5, 4, 3), (2.5, 1.25, 0.5)]:
        expected = img.TransformContinuousIndexToPhysicalPoint(ijk_xyz)
        vox = np.asarray(ijk_xyz)[::-1]
        np.testing.assert_allclose(geo.vox_to_world(vox), expected, atol=1e-9)
        np.testing.assert_allclose(geo.world_to_vox(expected), vox, atol=1e-9)
    back = geo.to_sitk(arr)
    assert Geometry.from_sitk(back) == geo
    assert geo.contains_vox([3.4, 4.4, 5.4]) and not geo.contains_vox([4.6, 0, 0])


def test_cropped_geometry_maps_the_crop_voxels_to_the_same_world_points():
    g = Geometry((20, 30, 40), (3.0, 1.0, 2.0), (5.0, -7.0, 11.0), np.array([[0, 0, 1.0], [0, -1.0, 0], [1.0, 0, 0]]))
    c = g.cropped((2, 5, 7), (12, 25, 30))
    assert c.shape == (10, 20, 23)
    vox = np.array([[0.0, 0.0, 0.0], [9.0, 19.0, 22.0], [3.5, 1.25, 8.0]])
    np.testing.assert_allclose(c.vox_to_world(vox), g.vox_to_world(vox + [2, 5, 7]))
