"""Patient-level bootstrap confidence intervals, paired bootstrap tests and Holm's correction (numpy only).

A bootstrap draw resamples *patients* with replacement; every scan (and every seed's prediction of it) of a drawn
patient enters with the patient's multiplicity, as a weight. Draws come from ``numpy.random.default_rng(seed)``,
so the same inputs and seed give the same intervals and p-values.
"""

from __future__ import annotations

import numpy as np

DEFAULT_BOOTSTRAP_SAMPLES = 1000
DEFAULT_BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


def patient_weights(patient_of_scan: np.ndarray, patients: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, N_scans)`` weights: how often each scan's patient was drawn, over the sorted ``patients``.

    Drawing from the same ``patients`` list with the same seed gives the same draws for two methods, which is what
    pairs them.
    """
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(patients), size=(n_boot, len(patients)))
    counts = np.zeros((n_boot, len(patients)))
    np.add.at(counts, (np.arange(n_boot)[:, None], draws), 1.0)
    index = np.searchsorted(patients, patient_of_scan)
    if np.any(index >= len(patients)) or np.any(patients[np.minimum(index, len(patients) - 1)] != patient_of_scan):
        raise ValueError("every scan's patient must be in the patient list")
    return counts[:, index]


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0 of ``samples (B, ...)``, ignoring draws where the statistic is undefined."""
    alpha = (1.0 - confidence) / 2.0
    samples = np.asarray(samples, float)
    lo = np.full(samples.shape[1:], np.nan)
    hi = np.full(samples.shape[1:], np.nan)
    finite = np.isfinite(samples)
    # columns without undefined draws in one vectorised np.quantile (nanquantile loops over columns in Python)
    for columns, quantile in ((finite.all(0), np.quantile), (finite.any(0) & ~finite.all(0), np.nanquantile)):
        if columns.any():
            lo[columns], hi[columns] = quantile(samples[:, columns], [alpha, 1.0 - alpha], axis=0)
    return lo, hi


def paired_bootstrap_p(differences: np.ndarray) -> np.ndarray:
    """Two-sided p-value that the paired difference is zero, from its bootstrap draws ``(B, ...)``.

    ``p = (1 + 2 * min(#{d <= 0}, #{d >= 0})) / (B + 1)``, capped at 1; NaN where no draw is defined.
    """
    d = np.asarray(differences, float)
    defined = np.isfinite(d)
    n = defined.sum(0)
    below = (defined & (d <= 0)).sum(0)
    above = (defined & (d >= 0)).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.minimum(1.0, (1.0 + 2.0 * np.minimum(below, above)) / (n + 1.0))
    return np.where(n > 0, p, np.nan)


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaNs stay NaN and are not counted."""
    p = np.asarray(pvalues, float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = idx.size
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="mergesort")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def weighted_median(values: np.ndarray, group: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Median of ``values (M,)`` when value ``i`` is repeated ``weights[b, group[i]]`` times, per row of
    ``weights (B, G)`` — equal to ``np.median`` of the repeated values (mean of the two middle ones when even).
    """
    values = np.asarray(values, float)
    out = np.full(weights.shape[0], np.nan)
    if values.size == 0:
        return out
    order = np.argsort(values, kind="mergesort")
    v, w = values[order], np.asarray(weights, float)[:, np.asarray(group)[order]]
    cum = np.cumsum(w, axis=1)  # (B, M)
    total = cum[:, -1]
    ok = total > 0
    lower_pos = np.floor((total - 1) / 2.0)
    upper_pos = np.floor(total / 2.0)
    lower = v[np.minimum((cum > lower_pos[:, None]).argmax(1), v.size - 1)]
    upper = v[np.minimum((cum > upper_pos[:, None]).argmax(1), v.size - 1)]
    out[ok] = ((lower + upper) / 2.0)[ok]
    return out
