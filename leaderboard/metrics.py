"""The one definition of the benchmark's metric conventions, in numpy (no torch).

Arrays are per vertebra of a label set, in its channel order: ``true_mm (..., K, 3)`` with NaN rows for
vertebrae that are not annotated, ``pred_mm (..., K, 3)`` and ``pred_present (..., K)``.

Conventions (Glocker et al. 2013, used by both papers; the defaults come first):

- **Localization error**: Euclidean distance (mm) between predicted and true centroid, for vertebrae both
  annotated and predicted ("matched"); mean, std (population, ddof=0) and median.
- **Identification**: a matched vertebra is identified when its distance is within 20 mm and the true centroid
  closest to its prediction is its own (ties resolved in its favour). ``search``: ``"glocker"`` (the papers) looks
  over all annotated centroids of the scan and takes the threshold *strictly* ("less than 20mm": exactly 20.0 mm
  is a failure); ``"verse"`` reproduces the VerSe challenge code: it looks only over labels both annotated and
  predicted and takes the threshold *inclusively* (``<= 20``), which differs on quantised coordinates.
- **Denominator**: ``"annotated"`` (all annotated vertebrae; misses count as failures) or ``"matched"``.
- **Misses**: annotated but not predicted. **False positives**: predicted but not annotated.
- **Average**: ``"micro"`` pools every vertebra of the test set; ``"macro"`` computes each statistic per scan
  and averages over the scans where it is defined (counts become per-scan means).
- **Regions**: all, cervical (C1-C7), thoracic (T1-T12, T13), lumbar (L1-L5, L6), sacral (S1-S2).
- **mAP**: mean over labels with at least one annotated case of the average precision of the presence scores
  (``sklearn.metrics.average_precision_score``); undefined (NaN) when any score is missing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spinebench.datamodules.labels import REGION_OF, REGIONS

IDENTIFICATION_THRESHOLD_MM = 20.0
SEARCH_RULES: tuple[str, ...] = ("glocker", "verse")
DENOMINATORS: tuple[str, ...] = ("annotated", "matched")
AVERAGES: tuple[str, ...] = ("micro", "macro")
REGION_COLUMNS: tuple[str, ...] = ("all",) + REGIONS
# Statistics ``aggregate`` returns, in table order.
STATISTICS: tuple[str, ...] = ("mean_mm", "std_mm", "id_rate", "misses", "false_positives", "n_annotated", "n_matched")


def _check_choice(value: str, valid: tuple[str, ...], what: str) -> None:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def region_masks(names: tuple[str, ...] | list[str]) -> np.ndarray:
    """``(R, K)`` bool: row ``r`` selects the vertebrae of ``REGION_COLUMNS[r]`` among ``names``."""
    regions = np.array([REGION_OF[n] for n in names])
    rows = [np.ones(len(names), bool)] + [regions == r for r in REGIONS]
    return np.stack(rows)


def localization_distances_mm(true_mm: np.ndarray, pred_mm: np.ndarray, pred_present: np.ndarray) -> np.ndarray:
    """``(..., K)`` distance in mm for matched vertebrae, NaN elsewhere."""
    true_mm, pred_mm = np.asarray(true_mm, float), np.asarray(pred_mm, float)
    matched = np.isfinite(true_mm).all(-1) & np.asarray(pred_present, bool) & np.isfinite(pred_mm).all(-1)
    dist = np.linalg.norm(pred_mm - true_mm, axis=-1)
    return np.where(matched, dist, np.nan)


def identified(
    true_mm: np.ndarray,
    pred_mm: np.ndarray,
    pred_present: np.ndarray,
    *,
    search: str = "glocker",
    threshold_mm: float = IDENTIFICATION_THRESHOLD_MM,
) -> np.ndarray:
    """``(..., K)`` bool: vertebra ``k`` is matched, within ``threshold_mm`` (``<``; ``<=`` for ``search="verse"``)
    and closest to its own true centroid."""
    _check_choice(search, SEARCH_RULES, "closest-centroid search")
    true_mm, pred_mm = np.asarray(true_mm, float), np.asarray(pred_mm, float)
    annotated = np.isfinite(true_mm).all(-1)
    predicted = np.asarray(pred_present, bool) & np.isfinite(pred_mm).all(-1)
    candidates = annotated & predicted if search == "verse" else annotated  # (..., K) over true centroids j
    # pairwise[..., k, j] = |pred_k - true_j|; non-candidates are pushed to +inf.
    pairwise = np.linalg.norm(pred_mm[..., :, None, :] - true_mm[..., None, :, :], axis=-1)
    pairwise = np.where(candidates[..., None, :], pairwise, np.inf)
    own = np.diagonal(pairwise, axis1=-2, axis2=-1)
    closest_is_own = own <= pairwise.min(-1)
    within = own <= threshold_mm if search == "verse" else own < threshold_mm
    return annotated & predicted & within & closest_is_own


@dataclass(frozen=True)
class CaseStats:
    """Per-scan, per-region sufficient statistics: every field is ``(N, R)`` over ``REGION_COLUMNS``.

    ``distances_mm`` keeps the ``(N, K)`` distances (NaN = not matched) for medians.
    """

    n_annotated: np.ndarray
    n_matched: np.ndarray
    n_identified: np.ndarray
    misses: np.ndarray
    false_positives: np.ndarray
    sum_mm: np.ndarray
    sumsq_mm: np.ndarray
    distances_mm: np.ndarray
    masks: np.ndarray  # (R, K)

    @classmethod
    def from_arrays(
        cls,
        true_mm: np.ndarray,
        pred_mm: np.ndarray,
        pred_present: np.ndarray,
        names: tuple[str, ...] | list[str],
        *,
        search: str = "glocker",
        threshold_mm: float = IDENTIFICATION_THRESHOLD_MM,
    ) -> CaseStats:
        """From ``true_mm, pred_mm (N, K, 3)`` and ``pred_present (N, K)`` of N scans."""
        true_mm = np.asarray(true_mm, float).reshape(-1, len(names), 3)
        pred_mm = np.asarray(pred_mm, float).reshape(-1, len(names), 3)
        pred_present = np.asarray(pred_present, bool).reshape(-1, len(names)) & np.isfinite(pred_mm).all(-1)
        annotated = np.isfinite(true_mm).all(-1)
        dist = localization_distances_mm(true_mm, pred_mm, pred_present)
        hit = identified(true_mm, pred_mm, pred_present, search=search, threshold_mm=threshold_mm)
        masks = region_masks(names)
        matched = np.isfinite(dist)
        d0 = np.where(matched, dist, 0.0)

        def per_region(values: np.ndarray) -> np.ndarray:
            return np.einsum("nk,rk->nr", values.astype(float), masks.astype(float))  # (N, K) -> (N, R)

        return cls(
            n_annotated=per_region(annotated),
            n_matched=per_region(matched),
            n_identified=per_region(hit),
            misses=per_region(annotated & ~pred_present),
            false_positives=per_region(~annotated & pred_present),
            sum_mm=per_region(d0),
            sumsq_mm=per_region(d0**2),
            distances_mm=dist,
            masks=masks,
        )


def safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def weighted_sums(weights: np.ndarray, *columns: np.ndarray) -> list[np.ndarray]:
    """``weights (..., N)`` times each ``(N, R)`` column -> ``(..., R)``, in one pass.

    One stacked ``einsum`` (no BLAS): a few matrix products instead of many, and no thread-count dependent
    rounding, so the tables stay byte-identical across machines.
    """
    r = columns[0].shape[1]
    stacked = np.einsum("...n,nc->...c", weights, np.concatenate(columns, axis=1))
    return [stacked[..., i * r : (i + 1) * r] for i in range(len(columns))]


def nanmean_weighted(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``values (N, R)``, ``weights (..., N)`` -> ``(..., R)`` mean over scans where the value is defined."""
    defined = np.isfinite(values)
    num, den = weighted_sums(weights, np.where(defined, values, 0.0), defined.astype(float))
    return safe_divide(num, den)


def aggregate(
    stats: CaseStats,
    *,
    average: str = "micro",
    denominator: str = "annotated",
    weights: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Test-set statistics per region: ``{name: (..., R)}`` for ``STATISTICS``.

    ``weights (N,)`` or ``(B, N)`` count each scan (bootstrap resamples); default: each scan once.
    """
    _check_choice(average, AVERAGES, "average")
    _check_choice(denominator, DENOMINATORS, "identification denominator")
    n_scans = stats.n_annotated.shape[0]
    w = np.ones(n_scans) if weights is None else np.asarray(weights, float)
    den = stats.n_annotated if denominator == "annotated" else stats.n_matched
    if average == "micro":
        n, total_mm, total_sq, hits, den_sum, misses, fps, annotated = weighted_sums(
            w, stats.n_matched, stats.sum_mm, stats.sumsq_mm, stats.n_identified, den, stats.misses,
            stats.false_positives, stats.n_annotated,
        )
        mean = safe_divide(total_mm, n)
        var = safe_divide(total_sq, n) - mean**2
        return {
            "mean_mm": mean,
            "std_mm": np.sqrt(np.clip(var, 0.0, None)),
            "id_rate": safe_divide(hits, den_sum),
            "misses": misses,
            "false_positives": fps,
            "n_annotated": annotated,
            "n_matched": n,
        }
    per_mean = safe_divide(stats.sum_mm, stats.n_matched)
    per_std = np.sqrt(np.clip(safe_divide(stats.sumsq_mm, stats.n_matched) - per_mean**2, 0.0, None))
    per_id = safe_divide(stats.n_identified, den)
    total = w.sum(-1)[..., None]
    defined = [np.isfinite(v) for v in (per_mean, per_std, per_id)]
    sums = weighted_sums(
        w, *(np.where(d, v, 0.0) for d, v in zip(defined, (per_mean, per_std, per_id))),
        *(d.astype(float) for d in defined), stats.misses, stats.false_positives, stats.n_annotated, stats.n_matched,
    )
    return {
        "mean_mm": safe_divide(sums[0], sums[3]),
        "std_mm": safe_divide(sums[1], sums[4]),
        "id_rate": safe_divide(sums[2], sums[5]),
        "misses": sums[6] / total,
        "false_positives": sums[7] / total,
        "n_annotated": sums[8] / total,
        "n_matched": sums[9] / total,
    }


def median_error_mm(stats: CaseStats, *, average: str = "micro", scan_index: np.ndarray | None = None) -> np.ndarray:
    """``(R,)`` median localization error; ``scan_index`` picks (and repeats) scans, e.g. a bootstrap draw."""
    _check_choice(average, AVERAGES, "average")
    dist = stats.distances_mm if scan_index is None else stats.distances_mm[scan_index]
    out = np.full(stats.masks.shape[0], np.nan)
    for r, mask in enumerate(stats.masks):
        d = dist[:, mask]
        if average == "micro":
            d = d[np.isfinite(d)]
            out[r] = np.median(d) if d.size else np.nan
        else:
            per_scan = [np.median(row[np.isfinite(row)]) for row in d if np.isfinite(row).any()]
            out[r] = np.mean(per_scan) if per_scan else np.nan
    return out


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """scikit-learn's ``average_precision_score`` (step-wise ``sum_n (R_n - R_{n-1}) P_n``); NaN when there is no
    positive or a score is missing (NaN)."""
    from sklearn.metrics import average_precision_score

    y_true = np.asarray(y_true, bool).ravel()
    scores = np.asarray(scores, float).ravel()
    if not y_true.any() or not np.isfinite(scores).all():
        return float("nan")
    return float(average_precision_score(y_true, scores))


def mean_average_precision(true_present: np.ndarray, scores: np.ndarray) -> float:
    """mAP over labels: ``true_present, scores (N, K)``; labels never annotated are left out. NaN when any score
    is missing: a method that does not score every label of every scan has no mAP (a missing score read as 0 would
    rank those labels last and make up a number)."""
    from sklearn.metrics import average_precision_score

    true_present = np.asarray(true_present, bool)
    scores = np.asarray(scores, float)
    if not np.isfinite(scores).all():
        return float("nan")
    labels = np.flatnonzero(true_present.any(axis=0))
    if labels.size == 0:
        return float("nan")
    if labels.size == 1:  # one column is a binary problem to scikit-learn, not a multilabel one
        return average_precision(true_present[:, labels[0]], scores[:, labels[0]])
    # one call for every label (average=None: one AP per column, as per-label calls give); per-label calls paid
    # scikit-learn's argument checks 26 times per summary (about 1 s of the default run's leaderboard)
    ap = average_precision_score(true_present[:, labels], scores[:, labels], average=None)
    return float(np.mean(ap))
