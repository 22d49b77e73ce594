"""Resampling CT volumes and label masks onto another grid with SimpleITK (one pass, no full-resolution copies)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from spinebench.datamodules.errors import InputError
from spinebench.datamodules.geometry import Geometry

_INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}


def isotropic_grid(geometry: Geometry, spacing_mm: float = 2.0) -> Geometry:
    """The isotropic ``spacing_mm`` grid over ``geometry``'s physical extent and direction: ``round(n * spacing /
    spacing_mm)`` voxels per axis around the same centre, so the field of view (voxel edge to voxel edge) is kept
    to within half a new voxel per side."""
    if not spacing_mm > 0:
        raise InputError(f"spacing_mm must be positive, got {spacing_mm}")
    old_shape = np.asarray(geometry.shape, dtype=np.float64)
    new_shape = np.maximum(1, np.round(old_shape * geometry.spacing_mm / spacing_mm)).astype(int)
    new_spacing = np.full(3, float(spacing_mm))
    centre_mm = geometry.vox_to_world((old_shape - 1) / 2)
    new_origin = centre_mm - geometry.direction @ (new_spacing * (new_shape - 1) / 2)
    return Geometry(tuple(int(n) for n in new_shape), new_spacing, new_origin, geometry.direction)


def resample_isotropic(
    array: np.ndarray, geometry: Geometry, spacing_mm: float = 2.0, interpolation: str = "linear"
) -> tuple[np.ndarray, Geometry]:
    """Resample to isotropic ``spacing_mm`` over the same physical extent and direction (``isotropic_grid``).

    ``"linear"`` (CT) returns float32 and fills outside samples with the image minimum; ``"nearest"`` (label
    masks) keeps the dtype and fills with 0. No anti-aliasing: downsampling a thin-slice CT by linear
    interpolation is what the published pipelines do.
    """
    grid = isotropic_grid(geometry, spacing_mm)
    return resample_to(array, geometry, grid, interpolation), grid


def resample_to(
    array: np.ndarray | sitk.Image, geometry: Geometry, grid: Geometry, interpolation: str = "linear"
) -> np.ndarray:
    """``array`` (on ``geometry``; a numpy array or the SimpleITK image a file was read into, which saves the
    full-resolution copies in and out of numpy) sampled at the voxel centres of ``grid``, in one SimpleITK pass.

    ``grid`` may differ in orientation too: resampling an image straight onto the canonical isotropic grid gives
    what reorienting it first and then resampling gives (up to float rounding of the sample positions), without
    the full-resolution copies of the reorientation. ``"linear"`` interpolates an integer CT directly into
    float32 output (no float copy of the input) and fills outside samples with the image minimum; ``"nearest"``
    keeps the dtype and fills with 0.
    """
    if interpolation not in _INTERPOLATORS:
        raise InputError(f"unknown interpolation {interpolation!r}; valid: {', '.join(_INTERPOLATORS)}")
    linear = interpolation == "linear"
    if isinstance(array, sitk.Image):
        image = array
        fill = _image_minimum(image) if linear else 0.0
    else:
        image = geometry.to_sitk(array.astype(np.uint8) if array.dtype == bool else array)
        fill = float(array.min()) if (linear and array.size) else 0.0
    resampler = sitk.ResampleImageFilter()
    size, spacing, origin, direction = grid.itk_parameters()
    resampler.SetSize(size)
    resampler.SetOutputSpacing(spacing)
    resampler.SetOutputOrigin(origin)
    resampler.SetOutputDirection(direction)
    resampler.SetInterpolator(_INTERPOLATORS[interpolation])
    resampler.SetDefaultPixelValue(fill)
    if linear:
        resampler.SetOutputPixelType(sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampler.Execute(image))


def _image_minimum(image: sitk.Image) -> float:
    # numpy on a view of the image's buffer (alive as long as ``image``): 3x faster than ITK's min/max filter
    return float(sitk.GetArrayViewFromImage(image).min())
