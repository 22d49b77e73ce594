"""How a prediction fails, from records alone (numpy; no torch): per annotated vertebra and per scan.

**Per annotated vertebra** ``k`` of a scan (``classify_vertebrae``). With ``d_j`` the distance from the
prediction of ``k`` to the annotated true centroid of level ``j``, and ``j*`` the annotated level nearest to the
prediction, the classes are, in this order of precedence (``T`` = the identification threshold, 20 mm):

- ``missed``: ``k`` is not predicted present.
- ``identified``: the leaderboard's identification rule holds (``d_k < T`` and no true centroid is nearer, over
  the centroids the chosen search looks at; ``leaderboard.metrics.identified``).
- ``mislocalised``: predicted, but no annotated centroid lies within ``T`` (``d_{j*} >= T``).
- ``shift_1``: the prediction sits on the neighbour's true centroid: ``j* = k +- 1``, ``d_{j*} < T`` and it is at
  least twice as close to that centroid as to its own (``d_{j*} <= d_k / 2``). Scale-free, so a one-level shift
  is a shift in the cervical spine too, where neighbouring centroids are closer than ``T``.
- ``shift_more``: likewise with ``|j* - k| >= 2``.
- ``ambiguous`` ("localised but ambiguous"): within ``T`` of a true centroid, but between levels: nearer another
  level's centroid than its own, by less than a factor of two (``d_k / 2 < d_{j*} < d_k``).

Levels are positions in the anatomical order of the label names (C1 ... T12, T13, L1 ... L6, S1, S2), so with
T13 in the label set the level after T12 is T13.

**Per scan** (``scan_failures``):

- ``all_right``: at least one vertebra annotated, every annotated vertebra identified, no false positive.
- ``whole_shift``: a consistent whole-spine shift: at least two predicted annotated vertebrae lie within ``T`` of
  an annotated centroid, none of them is identified, and every one of them is nearest to the centroid of the
  level the same number ``s != 0`` of places away (``shift`` holds ``s``; predictions far from every centroid,
  e.g. past the edge of the field of view, do not break the shift).
- ``false_positives``: vertebrae predicted present but not annotated.
- ``transitional_missed`` / ``transitional_invented``: of the transitional levels (T13, L6) in the label set,
  those annotated but not predicted present / predicted present but not annotated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spinebench.datamodules.labels import TRANSITIONAL
from spinebench.leaderboard.metrics import IDENTIFICATION_THRESHOLD_MM, identified, region_masks

CLASSES: tuple[str, ...] = ("identified", "shift_1", "shift_more", "ambiguous", "mislocalised", "missed")
SHIFT_RATIO = 0.5  # a shift sits at least 1 / SHIFT_RATIO times closer to the other level's centroid than to its own
CLASS_TITLES: dict[str, str] = {
    "identified": "Identified", "shift_1": "±1 level", "shift_more": "Shift > 1", "ambiguous": "Ambiguous",
    "mislocalised": "Mislocalised", "missed": "Missed",
}


@dataclass(frozen=True)
class _Geometry:
    """What every class is decided from, each ``(..., K)``: flags, the identification rule, and the distances to
    the own and to the nearest annotated centroid (and that centroid's level)."""

    present: np.ndarray
    annotated: np.ndarray
    ok: np.ndarray
    own: np.ndarray
    nearest: np.ndarray
    near_d: np.ndarray


def _geometry(true_mm, pred_mm, pred_present, threshold_mm: float, search: str) -> _Geometry:
    true_mm, pred_mm = np.asarray(true_mm, float), np.asarray(pred_mm, float)
    present = np.asarray(pred_present, bool) & np.isfinite(pred_mm).all(-1)
    annotated = np.isfinite(true_mm).all(-1)
    ok = identified(true_mm, pred_mm, present, search=search, threshold_mm=threshold_mm)
    shown = np.where(present[..., None], pred_mm, np.nan)
    pairwise = np.linalg.norm(shown[..., :, None, :] - true_mm[..., None, :, :], axis=-1)
    pairwise = np.where(annotated[..., None, :], pairwise, np.inf)
    own = np.diagonal(pairwise, axis1=-2, axis2=-1)
    nearest = np.argmin(np.where(np.isnan(pairwise), np.inf, pairwise), axis=-1)
    near_d = np.take_along_axis(pairwise, nearest[..., None], axis=-1)[..., 0]
    return _Geometry(present, annotated, ok, own, nearest, near_d)


def classify_vertebrae(
    true_mm: np.ndarray,
    pred_mm: np.ndarray,
    pred_present: np.ndarray,
    threshold_mm: float = IDENTIFICATION_THRESHOLD_MM,
    search: str = "glocker",
) -> np.ndarray:
    """``(N, K)`` index into ``CLASSES`` for annotated vertebrae, -1 for the others (not annotated)."""
    return _classify(_geometry(true_mm, pred_mm, pred_present, threshold_mm, search), threshold_mm)


def _classify(g: _Geometry, threshold_mm: float) -> np.ndarray:
    gap = np.abs(g.nearest - np.arange(g.annotated.shape[-1]))
    near = g.near_d < threshold_mm
    clear = near & (gap >= 1) & (g.near_d <= SHIFT_RATIO * g.own)
    out = np.full(g.annotated.shape, -1, dtype=np.int64)
    base = g.annotated & g.present & ~g.ok
    for name, mask in (("ambiguous", near), ("shift_more", clear & (gap >= 2)), ("shift_1", clear & (gap == 1)),
                       ("mislocalised", ~near)):
        out[base & mask] = CLASSES.index(name)
    out[g.annotated & ~g.present] = CLASSES.index("missed")
    out[g.ok] = CLASSES.index("identified")
    return out


def class_counts(classes: np.ndarray) -> dict[str, int]:
    """Counts of each class over annotated vertebrae (entries of ``classify_vertebrae``)."""
    return {name: int((classes == i).sum()) for i, name in enumerate(CLASSES)}


@dataclass(frozen=True)
class ScanFailures:
    """Per-scan failure facts, each ``(N,)``."""

    all_right: np.ndarray
    whole_shift: np.ndarray
    shift: np.ndarray  # the common level offset of a whole-spine shift, 0 elsewhere
    false_positives: np.ndarray
    transitional_annotated: np.ndarray
    transitional_missed: np.ndarray
    transitional_invented: np.ndarray


def scan_failures(
    true_mm: np.ndarray,
    pred_mm: np.ndarray,
    pred_present: np.ndarray,
    names: tuple[str, ...] | list[str],
    threshold_mm: float = IDENTIFICATION_THRESHOLD_MM,
    search: str = "glocker",
) -> ScanFailures:
    """The per-scan facts of the module docstring for ``(N, K)`` scans over label ``names``."""
    return _scan_failures(_geometry(true_mm, pred_mm, pred_present, threshold_mm, search), names, threshold_mm)


def _scan_failures(g: _Geometry, names: tuple[str, ...] | list[str], threshold_mm: float) -> ScanFailures:
    fps = (g.present & ~g.annotated).sum(-1)
    all_right = g.annotated.any(-1) & (g.ok == g.annotated).all(-1) & (fps == 0)
    offset = g.nearest - np.arange(g.annotated.shape[-1])
    placed = g.annotated & g.present & (g.near_d < threshold_mm)  # predictions that sit on an annotated centroid
    first = np.take_along_axis(offset, np.argmax(placed, axis=-1)[..., None], axis=-1)[..., 0]
    same = np.where(placed, offset == first[..., None], True).all(-1)
    whole = (placed.sum(-1) >= 2) & same & (first != 0) & ~(g.ok & placed).any(-1)
    transitional = np.array([n in TRANSITIONAL for n in names], bool)
    return ScanFailures(
        all_right=all_right,
        whole_shift=whole,
        shift=np.where(whole, first, 0),
        false_positives=fps,
        transitional_annotated=(g.annotated & transitional).sum(-1),
        transitional_missed=(g.annotated & ~g.present & transitional).sum(-1),
        transitional_invented=(g.present & ~g.annotated & transitional).sum(-1),
    )


@dataclass(frozen=True)
class FailureSummary:
    """One method's failure taxonomy on one dataset.

    ``shares[c]`` is ``(R,)`` over ``metrics.REGION_COLUMNS``: the fraction of annotated vertebrae of the region in
    class ``c`` (pooled over scans; NaN where nothing is annotated); ``n_annotated (R,)``; the rest per scan.
    """

    method: str
    n_scans: int
    n_annotated: np.ndarray
    shares: dict[str, np.ndarray]
    all_right: int
    whole_shift: int
    whole_shift_1: int
    false_positives_per_scan: float
    has_transitional: bool
    transitional_annotated: int
    transitional_missed: int
    transitional_invented: int


def summarize_failures(
    method: str,
    true_mm: np.ndarray,
    pred_mm: np.ndarray,
    pred_present: np.ndarray,
    names: tuple[str, ...] | list[str],
    threshold_mm: float = IDENTIFICATION_THRESHOLD_MM,
    search: str = "glocker",
) -> FailureSummary:
    """The taxonomy of ``(N, K)`` scans over label ``names`` (per region and per scan)."""
    geometry = _geometry(true_mm, pred_mm, pred_present, threshold_mm, search)  # once for both kinds of facts
    classes = _classify(geometry, threshold_mm)
    masks = region_masks(names)  # (R, K)
    counts = np.stack([np.einsum("nk,rk->r", (classes == i).astype(float), masks.astype(float))
                       for i in range(len(CLASSES))])  # (C, R)
    n_annotated = counts.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(n_annotated > 0, counts / np.where(n_annotated > 0, n_annotated, 1.0), np.nan)
    scans = _scan_failures(geometry, names, threshold_mm)
    n = len(scans.all_right)
    return FailureSummary(
        method=method,
        n_scans=n,
        n_annotated=n_annotated,
        shares={c: shares[i] for i, c in enumerate(CLASSES)},
        all_right=int(scans.all_right.sum()),
        whole_shift=int(scans.whole_shift.sum()),
        whole_shift_1=int((np.abs(scans.shift) == 1).sum()),
        false_positives_per_scan=float(scans.false_positives.mean()) if n else float("nan"),
        has_transitional=any(nm in TRANSITIONAL for nm in names),
        transitional_annotated=int(scans.transitional_annotated.sum()),
        transitional_missed=int(scans.transitional_missed.sum()),
        transitional_invented=int(scans.transitional_invented.sum()),
    )
