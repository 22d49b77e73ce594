"""ℓ1 shape-dictionary refinement of predicted centroids (Yang et al. 2017, Algorithm 1).

The dictionary holds one column per training spine: its K centroid coordinates per axis, in voxels.
Training spines are mostly partial (the CSI-2014 table has a median of 11 of 26 levels), so missing levels
of a training shape are filled by walking from its nearest annotated level with the mean neighbour offset
(``impute_missing_levels``); shapes with fewer than two annotated levels are dropped.

A test spine sits at an unknown position in its volume. We model that translation as an unpenalised
intercept per axis (sklearn ``Lasso(fit_intercept=True)`` centres the trusted rows of ``D`` and ``v``), so
the refined coordinates are ``v̂ = D a + t``. The paper's ``½‖v_S − D_S a‖² + λ‖a‖₁`` equals sklearn's
objective times ``|S|`` with ``alpha = λ / |S|``.

Trusted subset: the longest subsequence of the present vertebrae (in C1 → S2 order) whose vertical
coordinate strictly decreases. Array axis 0 grows toward superior, so going down the chain the axis-0
coordinate must decrease. That chain only catches outliers that break the vertical order; ``refine`` with
``max_residual`` also drops trusted points that a smoother sparse fit cannot explain (any direction) and keeps
the consistent ones where they were predicted (``ShapeDictionary.refine``; measured in perf/bench_sparsity.py).
λ is given for coordinates in 2 mm units and rescaled to the dictionary's own unit (``unit_scale``).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso
from torch import nn

VERTICAL_AXIS = 0
# Median distance between neighbouring centroids in 2 mm units (CSI-2014 training spines: 11.9, VerSe'20: 12.9);
# λ is given for coordinates in 2 mm units (``ShapeDictionary.unit_scale``).
REFERENCE_NEIGHBOUR_DISTANCE = 12.0


def longest_decreasing_subsequence(values: np.ndarray) -> np.ndarray:
    """Indices of a longest strictly decreasing subsequence of ``values`` (1D), by O(n²) dynamic programming.

    Ties are not decreasing, so of equal values at most one is kept. Among equally long answers the one
    whose elements come earliest is returned (deterministic). Empty input gives an empty array.
    """
    v = np.asarray(values, dtype=np.float64)
    n = v.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    length = np.ones(n, dtype=np.int64)
    parent = np.full(n, -1, dtype=np.int64)
    for i in range(1, n):
        earlier = np.nonzero(v[:i] > v[i])[0]
        if earlier.size:
            best = earlier[np.argmax(length[earlier])]  # argmax picks the earliest of equal lengths
            length[i] = length[best] + 1
            parent[i] = best
    end = int(np.argmax(length))
    chain = []
    while end >= 0:
        chain.append(end)
        end = int(parent[end])
    return np.asarray(chain[::-1], dtype=np.int64)


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


class ShapeDictionary(nn.Module):
    """The dictionary ``D`` as a buffer ``(3, K, N)`` (per axis, level, training shape) + the ℓ1 refinement."""

    def __init__(
        self, num_vertebrae: int, lam: float = 1.0, positive: bool = False, min_trusted: int = 3, max_iter: int = 2000,
        held_out_check: bool = True,
    ) -> None:
        super().__init__()
        self.held_out_check = held_out_check  # verify each rejection with the fit of the points that agree
        if lam <= 0:
            raise ValueError(f"sparsity lambda must be positive, got {lam}")
        self.num_vertebrae = num_vertebrae
        self.lam = lam
        self.positive = positive
        self.min_trusted = min_trusted
        self.max_iter = max_iter
        # Outlier detection fits with a 100x stronger penalty: the weak one (a few of N atoms suffice) fits any
        # handful of points, outliers included, so only a smoother fit leaves them a visible residual. Measured
        # on real spine tables (perf/bench_sparsity.py; 30x and 300x detected fewer outliers).
        self.detect_lam = 100.0 * lam
        self.register_buffer("atoms", torch.zeros(3, num_vertebrae, 0, dtype=torch.float64))

    @property
    def fitted(self) -> bool:
        return self.atoms.shape[2] > 0

    def fit(self, centroids_vox: np.ndarray, min_levels: int = 2) -> None:
        """Build the dictionary from training centroids ``(N, K, 3)``, NaN = absent."""
        c = np.asarray(centroids_vox, dtype=np.float64)
        if c.ndim != 3 or c.shape[1:] != (self.num_vertebrae, 3):
            raise ValueError(f"training centroids must be (N, {self.num_vertebrae}, 3), got {c.shape}")
        levels = (~np.isnan(c).any(axis=2)).sum(axis=1)
        c = c[levels >= min_levels]
        if c.shape[0] == 0:
            raise ValueError(f"no training shape has {min_levels} or more annotated levels")
        full = impute_missing_levels(c, mean_neighbour_offsets(c))
        self.atoms = torch.from_numpy(np.ascontiguousarray(full.transpose(2, 1, 0)))

    @property
    def unit_scale(self) -> float:
        """The coordinate unit relative to 2 mm voxels, from the dictionary's median neighbour distance (12 units
        at 2 mm on the CSI-2014 and VerSe tables, 3 at 8 mm). λ is defined for 2 mm units: the objective's
        quadratic term scales with the unit squared, so λ is scaled by ``unit_scale²`` to mean the same thing at
        any spacing."""
        atoms = self.atoms.cpu().numpy()
        steps = np.linalg.norm(np.diff(atoms, axis=1), axis=0)  # (K-1, N)
        return float(np.median(steps)) / REFERENCE_NEIGHBOUR_DISTANCE

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The number of atoms is only known after fitting: take the checkpoint's size.
        key = prefix + "atoms"
        if key in state_dict:
            self.atoms = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _fit(self, v: np.ndarray, trusted: np.ndarray, lam: float) -> np.ndarray:
        """``D a + t`` for all K levels, with ``a, t`` fitted per axis on the ``trusted`` rows of ``v``; ``lam`` is
        in the dictionary's own units (already scaled by ``unit_scale²``)."""
        atoms = self.atoms.cpu().numpy()
        out = np.empty_like(v)
        # Paper: ½‖v_S − D_S a‖² + λ‖a‖₁; sklearn minimises (1/2n)‖·‖² + α‖a‖₁, so α = λ / n.
        lasso = Lasso(alpha=lam / trusted.size, fit_intercept=True, positive=self.positive,
                      max_iter=self.max_iter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for axis in range(3):
                lasso.fit(atoms[axis, trusted], v[trusted, axis])
                out[:, axis] = atoms[axis] @ lasso.coef_ + lasso.intercept_
        return out

    def _next_outlier(self, v: np.ndarray, trusted: np.ndarray, lam: float, detect_lam: float,
                      max_residual: float) -> int | None:
        """Position in ``trusted`` of the next point to reject, or None.

        Candidates are the points the smooth fit (``detect_lam``) leaves more than ``max_residual`` away. With
        ``held_out_check`` a candidate is rejected only when the points the smooth fit *does* explain (the core,
        fitted at ``lam``) do not predict it within ``max_residual`` either: a good vertebra that the smooth fit
        cannot bend to, or that nearby outliers pulled the fit away from, is kept. The worst rejected candidate
        goes first. When the core has fewer than ``min_trusted`` points, each candidate (worst first) is tested
        against the fit of all the other trusted points instead.
        """
        residual = np.linalg.norm(v[trusted] - self._fit(v, trusted, detect_lam)[trusted], axis=1)
        candidates = residual > max_residual
        if not candidates.any():
            return None
        if not self.held_out_check:
            return int(np.argmax(residual))
        core = trusted[~candidates]
        if core.size >= self.min_trusted:
            off = np.linalg.norm(v[trusted] - self._fit(v, core, lam)[trusted], axis=1)
            rejected = candidates & (off > max_residual)
            return int(np.argmax(np.where(rejected, residual, -np.inf))) if rejected.any() else None
        for i in np.argsort(-residual, kind="stable"):
            if not candidates[i]:
                return None
            held_out = self._fit(v, np.delete(trusted, i), lam)[trusted[i]]
            if np.linalg.norm(v[trusted[i]] - held_out) > max_residual:
                return int(i)
        return None

    def refine(
        self, centroids_vox: np.ndarray, present: np.ndarray, max_residual: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Refined ``(K, 3)`` coordinates for all levels and the indices kept as inliers.

        1. Trusted: the longest chain of present vertebrae that is monotone along the vertical axis.
        2. With ``max_residual`` (coordinate units): the trusted point that a strongly penalised fit
           (``detect_lam``) explains worst is dropped while its residual ``‖v_i − v̂_i‖`` exceeds ``max_residual``
           and the points that fit does explain do not predict it within ``max_residual`` either
           (``_next_outlier``; one at a time, refitting after each); then a present point the chain had rejected
           is an inlier again when it lies within ``max_residual`` of the final fit (at ``lam``). Inliers keep the
           network's coordinates; all other levels (outliers in any direction, absent levels) take the
           reconstruction ``D a + t`` of the final fit.
        3. Without ``max_residual`` (the paper's Algorithm 1 as written): every level takes ``D a + t``.

        When fewer than ``min_trusted`` present vertebrae form a monotone chain, or (with ``max_residual``) no
        ``min_trusted`` of them agree with each other, the input is returned unchanged (a shape cannot be placed
        from one or two points) with no inliers.
        """
        if not self.fitted:
            raise RuntimeError("shape dictionary is empty: call fit_shape_prior(train_centroids_vox) first")
        v = np.asarray(centroids_vox, dtype=np.float64)
        present = np.asarray(present, dtype=bool)
        idx_present = np.nonzero(present)[0]
        trusted = idx_present[longest_decreasing_subsequence(v[idx_present, VERTICAL_AXIS])]
        if trusted.size < self.min_trusted:
            return v.copy(), trusted
        scale2 = self.unit_scale**2
        lam, detect_lam = self.lam * scale2, self.detect_lam * scale2
        if max_residual is None:
            return self._fit(v, trusted, lam), trusted
        while True:
            drop = self._next_outlier(v, trusted, lam, detect_lam, max_residual)
            if drop is None:
                break
            if trusted.size == self.min_trusted:
                return v.copy(), np.zeros(0, dtype=np.int64)  # no consistent subset: nothing can be vouched for
            trusted = np.delete(trusted, drop)
        fit = self._fit(v, trusted, lam)
        others = np.setdiff1d(idx_present, trusted)
        inliers = np.union1d(trusted, others[np.linalg.norm(v[others] - fit[others], axis=1) <= max_residual])
        out = fit.copy()
        out[inliers] = v[inliers]
        return out, inliers
