"""Statistics of training spine shapes for the shape prior: neighbour offsets, imputed levels, pair tolerances
(offsets and distances).

Shapes are ``(N, K, 3)`` centroid arrays (levels C1 -> S2, any coordinate unit), NaN where a level is not annotated.
``ShapeDictionary`` (``shape_sparsity``) builds its dictionary from the imputed shapes and tests predicted centroids
against the pair statistics; ``shape_gaussian`` fits its covariance from both.
"""

from __future__ import annotations

import numpy as np

# A pair of predicted levels is consistent when its offset deviates from the training mean by at most this
# percentile of the training spines' deviations (plus half the residual threshold; ``ShapeDictionary``): 90-99
# measured alike on the real tables (perf/bench_sparsity.py)
PAIR_PERCENTILE = 95.0


def mean_neighbour_offsets(centroids: np.ndarray) -> np.ndarray:
    """``(K-1, 3)`` mean of ``c[i+1] - c[i]`` over shapes where both levels are annotated (NaN = absent).

    Pairs never seen together get the mean over the pairs that were seen (or zero when none were).
    """
    diffs = centroids[:, 1:, :] - centroids[:, :-1, :]
    seen = ~np.isnan(diffs).any(axis=2)  # (N, K-1)
    counts = seen.sum(axis=0)
    sums = np.where(seen[..., None], diffs, 0.0).sum(axis=0)
    offsets = np.zeros_like(sums)
    ok = counts > 0
    offsets[ok] = sums[ok] / counts[ok, None]
    offsets[~ok] = offsets[ok].mean(axis=0) if ok.any() else 0.0
    return offsets


def impute_missing_levels(centroids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Fill NaN levels of each ``(N, K, 3)`` shape from its nearest annotated level along the chain.

    A level ``i`` is reached from the closest annotated level ``j`` by adding the mean offsets between
    them. Shapes with no annotated level stay NaN.
    """
    out = np.array(centroids, dtype=np.float64, copy=True)
    k = out.shape[1]
    cumulative = np.concatenate([np.zeros((1, 3)), np.cumsum(offsets, axis=0)])  # position of level i from level 0
    for shape in out:
        have = np.nonzero(~np.isnan(shape).any(axis=1))[0]
        if have.size == 0 or have.size == k:
            continue
        missing = np.setdiff1d(np.arange(k), have)
        nearest = have[np.argmin(np.abs(missing[:, None] - have[None, :]), axis=1)]
        shape[missing] = shape[nearest] + cumulative[missing] - cumulative[nearest]
    return out


def pair_statistics(centroids: np.ndarray, percentile: float = PAIR_PERCENTILE) -> tuple[np.ndarray, np.ndarray]:
    """``(K, K, 3)`` mean offset ``c_j - c_i`` and ``(K, K)`` ``percentile`` of ``‖c_j - c_i - mean‖`` over the
    ``(N, K, 3)`` shapes that have both levels (NaN = absent). Pairs never seen together get NaN."""
    c = np.asarray(centroids, dtype=np.float64)
    offsets = c[:, None, :, :] - c[:, :, None, :]  # (N, i, j, 3): c_j - c_i
    seen = ~np.isnan(offsets).any(axis=-1)  # (N, K, K)
    counts = seen.sum(axis=0)
    mean = np.full(offsets.shape[1:], np.nan)
    ok = counts > 0
    mean[ok] = np.where(seen[..., None], offsets, 0.0).sum(axis=0)[ok] / counts[ok, None]
    deviation = np.linalg.norm(offsets - mean[None], axis=-1)  # NaN where unseen
    tolerance = np.full(counts.shape, np.nan)
    if ok.any():
        tolerance[ok] = np.nanpercentile(deviation[:, ok], percentile, axis=0)
    return mean, tolerance


def pair_distance_statistics(centroids: np.ndarray,
                             percentile: float = PAIR_PERCENTILE) -> tuple[np.ndarray, np.ndarray]:
    """``(K, K)`` mean distance ``‖c_j - c_i‖`` and ``(K, K)`` ``percentile`` of ``|‖c_j - c_i‖ - mean|`` over the
    ``(N, K, 3)`` shapes that have both levels (NaN = absent). Pairs never seen together get NaN.

    The offsets' tolerance (``pair_statistics``) is wide where spines bend: lordosis, kyphosis and scoliosis turn an
    offset by tens of mm. Their length varies by a few mm, so a level predicted on its neighbour's place (two
    labels on one vertebra, or two levels' distance where one is expected) breaks it.
    """
    c = np.asarray(centroids, dtype=np.float64)
    distance = np.linalg.norm(c[:, None, :, :] - c[:, :, None, :], axis=-1)  # (N, i, j); NaN where unseen
    ok = (~np.isnan(distance)).sum(axis=0) > 0
    mean, tolerance = np.full(ok.shape, np.nan), np.full(ok.shape, np.nan)
    if ok.any():
        mean[ok] = np.nanmean(distance[:, ok], axis=0)
        tolerance[ok] = np.nanpercentile(np.abs(distance[:, ok] - mean[ok]), percentile, axis=0)
    return mean, tolerance
