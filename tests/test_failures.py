"""Failure taxonomy on constructed spines: each vertebra class and its precedence, each per-scan class."""

from __future__ import annotations

import numpy as np
import pytest

from spinebench.datamodules.labels import ALL_NAMES, DEFAULT_NAMES
from spinebench.leaderboard.failures import CLASSES, class_counts, classify_vertebrae, scan_failures, summarize_failures


def _spine(levels: int = 6, step: float = 30.0, k: int = 8) -> np.ndarray:
    true = np.full((1, k, 3), np.nan)
    true[0, :levels] = np.stack([np.zeros(levels), np.zeros(levels), -step * np.arange(levels)], 1)
    return true


def _names(classes: np.ndarray) -> list[str]:
    return [CLASSES[c] if c >= 0 else "-" for c in classes]


def test_each_class_on_a_constructed_spine():
    true = _spine()
    pred = true.copy()
    present = np.isfinite(true).all(-1)
    pred[0, 1] = true[0, 2] + [0, 0, 3.0]  # lands on the level below: one-level shift (27 mm from its own)
    pred[0, 2] = true[0, 4] + [0, 2.0, 0]  # two levels down
    pred[0, 3] = true[0, 3] + [0, 0, 16.0]  # 16 mm from its own, 14 from level 2: between levels
    pred[0, 4] = true[0, 4] + [50.0, 0, 0]  # nowhere near any vertebra
    present[0, 5] = False  # not predicted
    assert _names(classify_vertebrae(true, pred, present)[0]) == [
        "identified", "shift_1", "shift_more", "ambiguous", "mislocalised", "missed", "-", "-"]
    counts = class_counts(classify_vertebrae(true, pred, present))
    assert counts == {"identified": 1, "shift_1": 1, "shift_more": 1, "ambiguous": 1, "mislocalised": 1,
                      "missed": 1}


def test_precedence_at_the_threshold_and_under_the_verse_search():
    true = _spine(levels=3)
    present = np.isfinite(true).all(-1)
    pred = true.copy()
    pred[0, 0] = true[0, 0] + [20.0, 0, 0]  # exactly 20 mm from its own: not identified, not near any centroid
    pred[0, 1] = true[0, 2] + [0, 0, 10.0]  # 20 mm from its own, 10 from level 2: a shift, not ambiguous
    classes = _names(classify_vertebrae(true, pred, present)[0][:3])
    assert classes == ["mislocalised", "shift_1", "identified"]
    # With the VerSe search only predicted labels compete: when level 2 is not predicted, level 1's prediction
    # near level 2's centroid is not identified under glocker, and is under verse only if within 20 mm of its own.
    pred2 = true.copy()
    pred2[0, 1] = true[0, 1] + [0, 0, -16.0]  # 16 mm from its own, 14 from level 2
    present2 = present.copy()
    present2[0, 2] = False
    assert _names(classify_vertebrae(true, pred2, present2)[0][:3]) == ["identified", "ambiguous", "missed"]
    assert _names(classify_vertebrae(true, pred2, present2, search="verse")[0][:3]) == [
        "identified", "identified", "missed"]


def test_a_whole_spine_shifted_by_one_level_and_predictions_of_absent_levels():
    true = _spine()
    pred = np.roll(true, -1, axis=1)  # every label one level up: prediction of k is the centroid of k + 1
    pred[0, -1] = np.nan  # (no wrap-around)
    present = np.isfinite(pred).all(-1)
    classes = classify_vertebrae(true, pred, present)[0]
    assert [CLASSES[c] for c in classes[:5]] == ["shift_1"] * 5 and CLASSES[classes[5]] == "missed"
    scans = scan_failures(true, pred, present, DEFAULT_NAMES[:8])
    assert scans.whole_shift.tolist() == [True] and scans.shift.tolist() == [1]
    assert scans.all_right.tolist() == [False] and scans.false_positives.tolist() == [0]
    # a prediction of a level that is not annotated is no class at all: it is a false positive of the scan
    pred2 = true.copy()
    pred2[0, 7] = [0, 0, 0]
    present2 = np.isfinite(pred2).all(-1)
    assert classify_vertebrae(true, pred2, present2)[0, 7] == -1
    scans2 = scan_failures(true, pred2, present2, DEFAULT_NAMES[:8])
    assert scans2.false_positives.tolist() == [1] and scans2.all_right.tolist() == [False]
    assert scans2.whole_shift.tolist() == [False]


def test_scan_classes_on_three_constructed_scans():
    true = np.concatenate([_spine(), _spine(), _spine()])
    pred = true.copy()
    present = np.isfinite(true).all(-1)
    # scan 1: shifted two levels down, the lowest two predictions fall past the field of view (off every centroid)
    pred[1] = np.roll(true[1], 2, axis=0)
    pred[1, :2] = true[1, 0] + [0, 0, 60.0]
    # scan 2: one vertebra off by one level and one right: not a consistent whole-spine shift
    pred[2, 3] = true[2, 4]
    scans = scan_failures(true, pred, present, DEFAULT_NAMES[:8])
    assert scans.all_right.tolist() == [True, False, False]
    assert scans.whole_shift.tolist() == [False, True, False]
    assert scans.shift.tolist() == [0, -2, 0]
    summary = summarize_failures("m", true, pred, present, DEFAULT_NAMES[:8])
    assert (summary.all_right, summary.whole_shift, summary.whole_shift_1) == (1, 1, 0)
    assert summary.n_annotated[0] == 18 and summary.false_positives_per_scan == 0.0
    total = sum(summary.shares[c][0] for c in CLASSES)
    assert total == pytest.approx(1.0)
    assert summary.shares["identified"][0] == pytest.approx((6 + 0 + 5) / 18)
    assert summary.shares["shift_more"][0] == pytest.approx(4 / 18)
    assert summary.shares["mislocalised"][0] == pytest.approx(2 / 18)
    assert summary.shares["shift_1"][0] == pytest.approx(1 / 18)
    assert not summary.has_transitional


def test_regions_and_transitional_vertebrae_missed_or_invented():
    names = ALL_NAMES  # C1..T12, T13, L1..L5, L6, S1, S2
    k = len(names)
    z = -25.0 * np.arange(k)
    true = np.stack([np.zeros(k), np.zeros(k), z], -1)[None].repeat(2, 0)
    t13, l6 = names.index("T13"), names.index("L6")
    true[0, l6] = np.nan  # scan 0: T13 annotated, no L6
    true[1, t13] = np.nan  # scan 1: L6 annotated, no T13
    pred = np.nan_to_num(true.copy(), nan=0.0)
    present = np.isfinite(true).all(-1)
    present[0, t13] = False  # T13 missed
    present[1, t13] = True  # T13 invented (predicted where none is annotated)
    pred[1, t13] = [0, 0, z[t13]]
    summary = summarize_failures("m", true, pred, present, names)
    assert summary.has_transitional
    assert (summary.transitional_annotated, summary.transitional_missed, summary.transitional_invented) == (2, 1, 1)
    thoracic = 2  # REGION_COLUMNS: all, cervical, thoracic, lumbar, sacral
    assert summary.n_annotated[thoracic] == 13 + 12  # T1..T13 in scan 0, T1..T12 in scan 1
    assert summary.shares["missed"][thoracic] == pytest.approx(1 / 25)
    assert summary.shares["identified"][1] == 1.0  # cervical all identified
