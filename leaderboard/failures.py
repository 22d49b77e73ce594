"""How a prediction fails, per annotated vertebra, from records alone (numpy; no torch).

Classes of an annotated vertebra ``k`` of a scan (``classify_vertebrae``), in this order of precedence:

- ``identified``: the identification rule of ``leaderboard.metrics`` holds (< 20 mm, closest true centroid).
- ``missed``: not predicted at all.
- ``shift_1``: predicted, and the annotated true centroid closest to the prediction is that of level
  ``k - 1`` or ``k + 1``, less than the threshold away (a one-level labelling shift).
- ``shift_more``: likewise, but the closest annotated centroid belongs to a level two or more away.
- ``other``: predicted, but no annotated centroid lies within the threshold (mislocalised, or between levels).
"""

from __future__ import annotations

import numpy as np

from leaderboard.metrics import IDENTIFICATION_THRESHOLD_MM, identified

CLASSES: tuple[str, ...] = ("identified", "shift_1", "shift_more", "other", "missed")


def classify_vertebrae(
    true_mm: np.ndarray, pred_mm: np.ndarray, pred_present: np.ndarray, threshold_mm: float = IDENTIFICATION_THRESHOLD_MM
) -> np.ndarray:
    """``(N, K)`` index into ``CLASSES`` for annotated vertebrae, -1 for the others (not annotated)."""
    true_mm, pred_mm = np.asarray(true_mm, float), np.asarray(pred_mm, float)
    present = np.asarray(pred_present, bool) & np.isfinite(pred_mm).all(-1)
    annotated = np.isfinite(true_mm).all(-1)
    out = np.full(annotated.shape, -1, dtype=np.int64)
    ok = identified(true_mm, pred_mm, present, threshold_mm=threshold_mm)
    pairwise = np.linalg.norm(pred_mm[..., :, None, :] - true_mm[..., None, :, :], axis=-1)
    pairwise = np.where(annotated[..., None, :], pairwise, np.inf)
    closest = np.argmin(pairwise, axis=-1)
    near = np.take_along_axis(pairwise, closest[..., None], axis=-1)[..., 0] < threshold_mm
    gap = np.abs(closest - np.arange(annotated.shape[-1]))
    out[annotated & present & near & (gap >= 2)] = CLASSES.index("shift_more")
    out[annotated & present & near & (gap == 1)] = CLASSES.index("shift_1")
    out[annotated & present & ~near] = CLASSES.index("other")
    out[annotated & ~present] = CLASSES.index("missed")
    out[ok] = CLASSES.index("identified")
    return out


def class_counts(classes: np.ndarray) -> dict[str, int]:
    """Counts of each class over annotated vertebrae (entries of ``classify_vertebrae``)."""
    return {name: int((classes == i).sum()) for i, name in enumerate(CLASSES)}
