"""Failure classes of annotated vertebrae on constructed spines: each class, and its precedence."""

from __future__ import annotations

import numpy as np

from leaderboard.failures import CLASSES, class_counts, classify_vertebrae


def _spine(levels: int = 6, step: float = 30.0) -> np.ndarray:
    true = np.full((1, 8, 3), np.nan)
    true[0, :levels] = np.stack([np.zeros(levels), np.zeros(levels), -step * np.arange(levels)], 1)
    return true


def test_each_class_on_a_constructed_spine():
    true = _spine()
    pred = true.copy()
    present = np.isfinite(true).all(-1)
    pred[0, 1] = true[0, 2] + [0, 0, 3.0]  # lands on the level below: one-level shift
    pred[0, 2] = true[0, 4] + [0, 2.0, 0]  # two levels down
    pred[0, 3] = true[0, 3] + [0, 0, 16.0]  # past halfway to level 2 (14 mm from it, 16 from its own)
    pred[0, 4] = true[0, 4] + [50.0, 0, 0]  # nowhere near any vertebra
    present[0, 5] = False  # not predicted
    names = [CLASSES[c] if c >= 0 else "-" for c in classify_vertebrae(true, pred, present)[0]]
    assert names == ["identified", "shift_1", "shift_more", "shift_1", "other", "missed", "-", "-"]
    counts = class_counts(classify_vertebrae(true, pred, present))
    assert counts == {"identified": 1, "shift_1": 2, "shift_more": 1, "other": 1, "missed": 1}


def test_a_whole_spine_shifted_by_one_level_and_predictions_of_absent_levels():
    true = _spine()
    pred = np.roll(true, -1, axis=1)  # every label one level up: prediction of k is the centroid of k + 1
    present = np.isfinite(pred).all(-1)
    classes = classify_vertebrae(true, pred, present)[0]
    assert [CLASSES[c] for c in classes[:5]] == ["shift_1"] * 5 and CLASSES[classes[5]] == "missed"
    # a prediction of a level that is not annotated is no class at all (false positives are counted elsewhere)
    pred2 = true.copy()
    pred2[0, 7] = [0, 0, 0]
    assert classify_vertebrae(true, pred2, np.isfinite(pred2).all(-1))[0, 7] == -1
