"""From a drawn phantom to a case: what the scanner does, the crop, and the annotation.

``acquire``: point-spread blur, partial volume, thick slices, noise and int16 quantisation of the drawing grid;
``tight_crop``: the crop of spine CTs to the vertebrae (VerSe); ``mask_centres`` and ``visible_centroids``: the
annotated points and which of them lie inside the volume. ``datamodules.phantom.generate_case`` calls them last,
in this order; ``acquire`` and ``tight_crop`` take the last draws of the case's main random stream.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from spinebench.datamodules import phantom_artifacts as art
from spinebench.datamodules.centroids import Centroids
from spinebench.datamodules.geometry import Geometry, canonical_geometry
from spinebench.datamodules.phantom_anatomy import PHANTOM_MASK_ID, Canvas
from spinebench.datamodules.phantom_config import PhantomConfig


class ScanSettings(Protocol):
    """What ``acquire`` reads of a case's scan (``phantom._Scan``)."""

    blur_mm: float
    anisotropic: bool
    noise_hu: float
    slice_factor: int


def acquire(rng, canvas: Canvas, scan: ScanSettings, f: int, correlation_mm: float,
            meta: dict) -> tuple[np.ndarray, np.ndarray, Geometry]:  # fmt: skip
    """Point-spread blur, partial volume (blocks of ``f`` fine voxels per axis averaged), thick slices, noise and
    int16 quantisation; the canonical geometry of the result."""
    hu = art.blur(canvas.hu, scan.blur_mm, canvas.spacing_mm)
    labels = canvas.labels
    for axis in range(3):
        hu, labels = art.block_average(hu, labels, axis, f)
    sp = float(canvas.spacing_mm[0]) * f
    origin = np.asarray(canvas.origin_mm, float) + (f - 1) * float(canvas.spacing_mm[0]) / 2
    spacing = np.array([sp, sp, sp])
    factor = scan.slice_factor
    if factor > 1:
        hu, labels = art.thick_slices(hu, labels, factor)
        origin = origin + np.array([(factor - 1) * sp / 2, 0.0, 0.0])
        spacing[0] = factor * sp
    meta["anisotropic"] = {"applied": scan.anisotropic, "slice_factor": factor, "slice_spacing_mm": float(spacing[0])}
    hu = art.add_noise(np.array(hu, dtype=np.float32), rng, scan.noise_hu, correlation_mm, spacing)
    if correlation_mm > 0:
        meta["noise"]["correlation_mm"] = correlation_mm
    ct = np.clip(np.rint(hu), -1024, 16000).astype(np.int16)
    # Canonical geometry: origin in LPS (x, y, z) = array-order (l, p, s).
    return ct, labels, canonical_geometry(ct.shape, spacing, origin_mm=origin[::-1])


def tight_crop(rng, cfg: PhantomConfig, ct: np.ndarray, labels: np.ndarray, geometry: Geometry,
               meta: dict) -> tuple[np.ndarray, np.ndarray, Geometry]:  # fmt: skip
    """With probability ``tight_crop_rate``: crop the AP and LR axes to the vertebrae in the scan (the extent of
    their labels) plus a margin per axis, as spine CTs are cropped to the spine's masks (VerSe)."""
    draws = rng.random(3)
    applied = bool(draws[0] < cfg.tight_crop_rate)
    meta["tight_crop"] = {"applied": applied}
    if not applied:
        return ct, labels, geometry
    lo_m, hi_m = cfg.tight_crop_margin_mm
    margins = lo_m + draws[1:] * (hi_m - lo_m)  # mm, for the AP and the LR axis
    lo, hi = [0, 0, 0], list(ct.shape)
    for axis, margin in zip((1, 2), margins):
        pad = margin / float(geometry.spacing_mm[axis])
        held = np.flatnonzero(labels.any(axis=tuple(a for a in range(3) if a != axis)))  # the vertebrae's extent
        lo[axis] = max(0, int(np.floor(held[0] - pad)))
        hi[axis] = min(ct.shape[axis], int(np.ceil(held[-1] + pad)) + 1)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    meta["tight_crop"].update(margin_mm=[round(float(m), 3) for m in margins])
    return ct[box].copy(), labels[box].copy(), geometry.cropped(lo, hi)


def mask_centres(canvas: Canvas, names: list[str], body_centres: np.ndarray) -> np.ndarray:
    """(n, 3) array-order mm: each vertebra's centre of mass on the drawing grid (the part inside the scan); its
    body centre (``body_centres``, array-order mm) for a vertebra with no voxel drawn."""
    ids = [PHANTOM_MASK_ID[name] for name in names]
    flat = canvas.labels.ravel()
    size = max(ids) + 1
    counts = np.bincount(flat, minlength=size)
    sums = np.zeros((size, 3))
    for axis in range(3):  # per axis: the sum of each label's voxel indices, from the per-slice label counts
        moved = np.moveaxis(canvas.labels, axis, 0).reshape(canvas.shape[axis], -1)
        per_slice = np.stack([np.bincount(row, minlength=size) for row in moved])  # (n_axis, size)
        sums[:, axis] = np.arange(canvas.shape[axis]) @ per_slice
    out = np.array(body_centres, dtype=float)
    for k, label in enumerate(ids):
        if counts[label]:
            out[k] = canvas.origin_mm + canvas.spacing_mm * (sums[label] / counts[label])
    return np.round(out, 6)


def visible_centroids(names: list[str], points: np.ndarray, geometry: Geometry, meta: dict,
                      inside: np.ndarray | None = None) -> Centroids:
    """The annotated points (``points``, array-order mm: body centres or mask centres, LPS mm out) of the vertebrae
    whose point ``inside`` (default: ``points`` themselves) lies inside the volume, and which they are in the
    metadata."""
    origin = np.asarray(geometry.origin_mm, float)[::-1]  # array order (s, p, l)
    deciding = points if inside is None else inside
    vox = (deciding - origin) / np.asarray(geometry.spacing_mm, float)  # spacing is in array order already
    keep = np.all((vox >= 0) & (vox <= np.asarray(geometry.shape) - 1), axis=1)
    visible = [i for i in range(len(names)) if keep[i]]
    meta["visible_vertebrae"] = [names[i] for i in visible]
    meta["first_visible"] = meta["visible_vertebrae"][0] if visible else None
    meta["last_visible"] = meta["visible_vertebrae"][-1] if visible else None
    return Centroids((names[i], points[i][::-1]) for i in visible)
