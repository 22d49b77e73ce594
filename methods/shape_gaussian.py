"""A Gaussian model of spine shape: mean and covariance of the centroid coordinates of all levels, position free.

``ShapeDictionary`` uses it to choose between equally large sets of predicted centroids that could each be the
inliers (which of two neighbours is the displaced one): the set the training spines make more likely wins. Its
per-pair tolerances cannot do that: between levels several apart they are 50-90 mm wide on the CSI-2014 table,
because spines differ in size and curvature, which a covariance captures as correlated modes. Measured in
perf/bench_sparsity.py.

Training shapes are partial (NaN = absent level) and sit at arbitrary positions in their scanners: each shape is
moved onto the mean shape by the mean offset of its annotated levels (alternating with the mean a few times), and
the covariance of two coordinates is taken over the shapes that annotate both. Where fewer than
``MIN_SHAPES_PER_ENTRY`` shapes do, the imputed shapes (every level filled) give the entry. Eigenvalues are floored so
the matrix is positive definite. The spine's position in a test volume is unknown, so the likelihood only weighs the
points' offsets from one another.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import helmert

MIN_SHAPES_PER_ENTRY = 5
# eigenvalue floor, as a share of the median coordinate variance
EIGENVALUE_FLOOR = 0.05
ALIGN_ITERATIONS = 5


def fit_shape_gaussian(centroids: np.ndarray, imputed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(K, 3)`` mean shape and ``(3K, 3K)`` covariance (coordinate ``3 k + axis``) of ``(N, K, 3)`` training
    centroids (NaN = absent); ``imputed`` is the same shapes with every level filled (``impute_missing_levels``)."""
    c = np.asarray(centroids, dtype=np.float64)
    full = np.asarray(imputed, dtype=np.float64)
    n, k, _ = c.shape
    mean = (full - full.mean(axis=1, keepdims=True)).mean(axis=0)
    for _ in range(ALIGN_ITERATIONS):
        translation = _nanmean(c - mean[None], axis=1)  # (N, 3): each shape onto the mean shape
        observed_mean = _nanmean(c - translation[:, None, :], axis=0)  # NaN at levels no shape annotates
        mean = np.where(np.isnan(observed_mean), mean, observed_mean)
    residual = (c - translation[:, None, :] - mean[None]).reshape(n, 3 * k)
    seen = ~np.isnan(residual)
    counts = seen.T.astype(np.float64) @ seen.astype(np.float64)
    zeroed = np.where(seen, residual, 0.0)
    cov = zeroed.T @ zeroed / np.maximum(counts, 1.0)
    full_residual = (full - full.mean(axis=1, keepdims=True) - mean[None]).reshape(n, 3 * k)
    imputed_cov = full_residual.T @ full_residual / max(1, n - 1)
    cov = np.where(counts >= MIN_SHAPES_PER_ENTRY, cov, imputed_cov)
    values, vectors = np.linalg.eigh(0.5 * (cov + cov.T))
    floor = max(EIGENVALUE_FLOOR * float(np.median(np.diag(cov))), 1e-9)
    return mean, (vectors * np.maximum(values, floor)) @ vectors.T


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    """``np.nanmean`` without its warning where a slice is all NaN (NaN there too)."""
    seen = ~np.isnan(x)
    count = seen.sum(axis=axis)
    total = np.where(seen, x, 0.0).sum(axis=axis)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def log_likelihood(points: np.ndarray, levels: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> float:
    """Gaussian log-density of the ``(K, 3)`` ``points`` at ``levels`` (two or more), their common position left
    free: the offsets are projected onto the orthonormal contrasts of the points (a Helmert basis per axis), which no
    translation changes. A density over ``3 (m - 1)`` dimensions for ``m`` points, so the difference between a set
    with one point more and the set is that point's log-density given the others, plus ``3/2 log((m + 1) / m)`` (the
    scale of its contrast, the point less the others' mean; ``ShapeDictionary._grow``)."""
    levels = np.asarray(levels, dtype=np.int64)
    index = (3 * levels[:, None] + np.arange(3)).ravel()
    contrasts = np.kron(helmert(levels.size), np.eye(3))  # (3(m-1), 3m), rows orthonormal and sum-free per axis
    offsets = contrasts @ (points[levels] - mean[levels]).ravel()
    lower = np.linalg.cholesky(contrasts @ cov[np.ix_(index, index)] @ contrasts.T)
    z = np.linalg.solve(lower, offsets)
    return float(-0.5 * (z @ z) - np.log(np.diag(lower)).sum() - 0.5 * z.size * np.log(2.0 * np.pi))
