"""Image geometry and every world (LPS mm) <-> voxel conversion.

Everything is in numpy array axis order: ``spacing_mm[a]`` is the voxel size along array axis ``a`` and
column ``a`` of ``direction`` is the LPS unit vector along which array axis ``a`` grows. (SimpleITK reports
spacing/origin/direction in x, y, z order, which is the *reverse* of the numpy axes; the conversion to and
from SimpleITK lives here and nowhere else.)

    world_mm = origin_mm + direction @ (spacing_mm * voxel)

The canonical orientation after ``orientation.reorient_canonical`` is SimpleITK's identity direction, i.e. array
axes (0, 1, 2) grow towards (superior, posterior, left) -- ITK's "LPS" orientation read as numpy (z, y, x).
In numpy axis order its ``direction`` is the anti-diagonal ``CANONICAL_DIRECTION``, not ``np.eye(3)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True, eq=False)
class Geometry:
    shape: tuple[int, int, int]
    spacing_mm: np.ndarray  # (3,) per array axis
    origin_mm: np.ndarray  # (3,) LPS world position of voxel (0, 0, 0)
    direction: np.ndarray  # (3, 3); column a = LPS unit vector of array axis a

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "spacing_mm", np.asarray(self.spacing_mm, dtype=np.float64).reshape(3))
        object.__setattr__(self, "origin_mm", np.asarray(self.origin_mm, dtype=np.float64).reshape(3))
        object.__setattr__(self, "direction", np.asarray(self.direction, dtype=np.float64).reshape(3, 3))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Geometry):
            return NotImplemented
        return (
            self.shape == other.shape
            and np.allclose(self.spacing_mm, other.spacing_mm, atol=1e-6)
            and np.allclose(self.origin_mm, other.origin_mm, atol=1e-4)
            and np.allclose(self.direction, other.direction, atol=1e-6)
        )

    @property
    def affine_lps(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous voxel coordinates (array order) to LPS mm."""
        a = np.eye(4)
        a[:3, :3] = self.direction * self.spacing_mm[None, :]
        a[:3, 3] = self.origin_mm
        return a

    def vox_to_world(self, vox: np.ndarray) -> np.ndarray:
        """(..., 3) voxel coordinates (array order, may be fractional) -> (..., 3) LPS mm."""
        vox = np.asarray(vox, dtype=np.float64)
        return vox * self.spacing_mm @ self.direction.T + self.origin_mm

    def world_to_vox(self, world_mm: np.ndarray) -> np.ndarray:
        """(..., 3) LPS mm -> (..., 3) fractional voxel coordinates (array order)."""
        world_mm = np.asarray(world_mm, dtype=np.float64)
        offsets = (world_mm - self.origin_mm).reshape(-1, 3)
        return (np.linalg.solve(self.direction, offsets.T).T / self.spacing_mm).reshape(world_mm.shape)

    def cropped(self, lo, hi) -> "Geometry":
        """The geometry of ``array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]`` (voxel indices, array order)."""
        lo, hi = np.asarray(lo, int), np.asarray(hi, int)
        return Geometry(tuple(int(n) for n in hi - lo), self.spacing_mm, self.vox_to_world(lo), self.direction)

    def contains_vox(self, vox: np.ndarray, margin: float = 0.5) -> np.ndarray:
        """Whether (..., 3) voxel coordinates lie inside the image (voxel centres +- ``margin``)."""
        vox = np.asarray(vox, dtype=np.float64)
        upper = np.asarray(self.shape, dtype=np.float64) - 1 + margin
        return np.all((vox >= -margin) & (vox <= upper), axis=-1)

    # --- SimpleITK (x, y, z order) <-> numpy order ------------------------------------------------
    @classmethod
    def from_itk(cls, size, spacing, origin, direction) -> "Geometry":
        """From ITK's (x, y, z)-ordered size, spacing, origin and flat row-major direction (an image's or an
        image reader's ``GetSize()``...): the one place where ITK's axis order is reversed into numpy's."""
        d_xyz = np.asarray(direction, dtype=np.float64).reshape(3, 3)
        return cls(shape=tuple(int(n) for n in reversed(size)), spacing_mm=np.asarray(spacing, dtype=np.float64)[::-1],
                   origin_mm=np.asarray(origin, dtype=np.float64), direction=d_xyz[:, ::-1])

    def itk_parameters(self) -> tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
        """(size, spacing, origin, flat direction) in ITK's (x, y, z) order: what ``SetSize``, ``SetSpacing``,
        ``SetOrigin`` and ``SetDirection`` of an image or a resampler take."""
        return (tuple(int(n) for n in self.shape[::-1]), tuple(float(s) for s in self.spacing_mm[::-1]),
                tuple(float(o) for o in self.origin_mm), tuple(float(v) for v in self.direction[:, ::-1].reshape(-1)))

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Geometry":
        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
        return cls.from_itk(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    def apply_to_sitk(self, image: sitk.Image) -> sitk.Image:
        """Stamp this geometry on ``image`` (whose array must have ``self.shape``); returns ``image``."""
        size, spacing, origin, direction = self.itk_parameters()
        if tuple(image.GetSize()) != size:
            raise ValueError(f"image size {tuple(reversed(image.GetSize()))} does not match geometry {self.shape}")
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        image.SetDirection(direction)
        return image

    def to_sitk(self, array: np.ndarray) -> sitk.Image:
        """A SimpleITK image of ``array`` (numpy order, shape ``self.shape``) carrying this geometry."""
        return self.apply_to_sitk(sitk.GetImageFromArray(np.ascontiguousarray(array)))


def canonical_geometry(shape, spacing_mm, origin_mm=(0.0, 0.0, 0.0)) -> Geometry:
    """A geometry in the canonical orientation: ITK identity direction, array axes grow towards (S, P, L).

    In numpy axis order that is the anti-diagonal matrix: column 0 (array axis 0) = LPS z (superior),
    column 1 = y (posterior), column 2 = x (left).
    """
    return Geometry(tuple(shape), np.broadcast_to(np.asarray(spacing_mm, float), 3), origin_mm, CANONICAL_DIRECTION)


# Geometry.direction (numpy axis order) of an image whose SimpleITK direction is the identity.
CANONICAL_DIRECTION = np.eye(3)[:, ::-1].copy()
