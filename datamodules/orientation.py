"""Orientation codes and lossless reorientation of voxel arrays.

Orientation codes (``"PIR"``, ``"LPS"``, ...) follow nibabel/ITK: letter ``i`` names the patient direction towards
which voxel axis ``i`` grows, axes listed in file order (x, y, z), i.e. numpy axes (2, 1, 0). The canonical
orientation is ``"LPS"`` (ITK identity direction): numpy axes (0, 1, 2) grow towards (superior, posterior, left).
Reorientation only permutes and flips voxel axes, so it is lossless and world coordinates are unchanged.
"""

from __future__ import annotations

import itertools

import numpy as np

from spinebench.datamodules.errors import InputError
from spinebench.datamodules.geometry import Geometry

CANONICAL_ORIENTATION = "LPS"

# World axis (LPS index) and sign for each orientation letter.
_LETTER_AXIS = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}
_AXIS_LETTER = {(0, 1): "L", (0, -1): "R", (1, 1): "P", (1, -1): "A", (2, 1): "S", (2, -1): "I"}


def _axis_assignment(direction: np.ndarray) -> tuple[tuple[int, ...], np.ndarray]:
    """World axis and sign of each numpy axis: the permutation that best matches the direction cosines."""
    best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(direction[p[a], a]) for a in range(3)))
    signs = np.array([1 if direction[best[a], a] >= 0 else -1 for a in range(3)])
    return best, signs


def orientation_code(geometry: Geometry) -> str:
    """Three-letter orientation code of ``geometry`` in file axis order (x, y, z), e.g. ``"PIR"``, ``"RAS"``."""
    world_axis, signs = _axis_assignment(geometry.direction)
    return "".join(_AXIS_LETTER[(world_axis[a], int(signs[a]))] for a in (2, 1, 0))


def _parse_code(code: str) -> list[tuple[int, int]]:
    """(world axis, sign) for numpy axes 0, 1, 2 from a code listed in file order (x, y, z)."""
    code = "".join(code).upper()
    pairs = [_LETTER_AXIS.get(c) for c in code]
    if len(code) != 3 or None in pairs or len({p[0] for p in pairs}) != 3:
        raise InputError(f"invalid orientation code {code!r}; expected three of L/R, P/A, S/I, e.g. 'LPS' or 'PIR'")
    return list(reversed(pairs))


def _reorient_plan(geometry: Geometry, code: str):
    target = _parse_code(code)
    world_axis, signs = _axis_assignment(geometry.direction)
    source_of = {w: a for a, w in enumerate(world_axis)}
    order = [source_of[w] for w, _ in target]  # new axis t takes old axis order[t]
    flips = [bool(signs[order[t]] != target[t][1]) for t in range(3)]
    old_shape = np.asarray(geometry.shape)
    corner_vox = np.array([0.0, 0.0, 0.0])  # old voxel that becomes the new (0, 0, 0)
    for t in range(3):
        if flips[t]:
            corner_vox[order[t]] = old_shape[order[t]] - 1
    direction = geometry.direction[:, order] * np.where(flips, -1.0, 1.0)[None, :]
    new_geometry = Geometry(
        shape=tuple(int(old_shape[a]) for a in order),
        spacing_mm=geometry.spacing_mm[order],
        origin_mm=geometry.vox_to_world(corner_vox),
        direction=direction,
    )
    return order, flips, new_geometry


def reoriented_geometry(geometry: Geometry, code: str = CANONICAL_ORIENTATION) -> Geometry:
    """The geometry that ``reorient(array, geometry, code)`` would return (no voxels touched)."""
    return _reorient_plan(geometry, code)[2]


def reorient(array: np.ndarray, geometry: Geometry, code: str) -> tuple[np.ndarray, Geometry]:
    """Permute/flip voxel axes so that the image has orientation ``code``; world coordinates are unchanged.

    Oblique scans keep their small residual rotation in ``direction`` (a lossless reorientation cannot remove it).
    """
    order, flips, new_geometry = _reorient_plan(geometry, code)
    out = np.transpose(array, order)
    flip_axes = tuple(t for t in range(3) if flips[t])
    if flip_axes:
        out = np.flip(out, axis=flip_axes)
    return np.ascontiguousarray(out), new_geometry


def reorient_canonical(array: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, Geometry]:
    """Reorient to ``"LPS"``: numpy axes (0, 1, 2) grow towards (superior, posterior, left)."""
    return reorient(array, geometry, CANONICAL_ORIENTATION)
