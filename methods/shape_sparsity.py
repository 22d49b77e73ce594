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
``max_residual`` then keeps the largest part of the chain whose pairwise offsets and distances the training spines
allow (a distance catches a level predicted on its neighbour's place, which a bent spine's offset tolerance lets pass),
drops trusted points that a smoother sparse fit cannot explain (any direction), lets wrongly dropped points back
in or exchanges them for a neighbour, and keeps the consistent ones where they were predicted; between equally large
candidate sets a Gaussian shape model decides, and it lets in the left-out points it finds likelier inliers than
outliers (``shape_gaussian``; ``ShapeDictionary.refine``; measured in perf/bench_sparsity.py).
λ is given for coordinates in 2 mm units and rescaled to the dictionary's own unit (``unit_scale``).
"""

from __future__ import annotations

import warnings

import networkx as nx
import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso
from torch import nn

from spinebench.methods.monotone_chain import longest_decreasing_subsequence
from spinebench.methods.shape_gaussian import fit_shape_gaussian, log_likelihood
from spinebench.methods.shape_statistics import (
    impute_missing_levels,
    mean_neighbour_offsets,
    pair_distance_statistics,
    pair_statistics,
)

VERTICAL_AXIS = 0
# Median distance between neighbouring centroids in 2 mm units (CSI-2014 training spines: 11.9, VerSe'20: 12.9);
# λ is given for coordinates in 2 mm units (``ShapeDictionary.unit_scale``).
REFERENCE_NEIGHBOUR_DISTANCE = 12.0
# A left-out present point joins the inliers when the shape model's density of it, given the trusted points, exceeds
# that of an outlier spread evenly over a ball of this radius around its place (``ShapeDictionary._grow``). Measured
# with 30 / 40 / 60 / 100 mm on perf/bench_sparsity.py (CSI-2014 with dropped levels, 1620 spines): 99.20 / 99.26 /
# 99.26 / 99.26 % of spines with no good centroid moved > 20 mm (99.07 % without the step), outlier error -81.1 /
# -80.6 / -79.6 / -77.9 %: a wider ball lets more 20 mm outliers in as inliers
OUTLIER_RADIUS_MM = 40.0
# Pair distances are checked between levels at most this many apart: a level on its neighbour's place breaks them
# there. Farther apart, spines' sizes make distances as variable as offsets, and a small training set's percentile of
# them too tight: on VerSe'20 (84 training spines, perf/bench_sparsity.py) checking all pairs cost 26 more spines a
# good level among 870 (99.8 -> 96.8 %), 1 / 2 / 3 / 4 levels none (2 failed, as without the check); 3 kept nearly all
# of the all-pairs gain on shifted levels (error 25.6 -> 11.2 mm; 10.5 with all pairs, 18.1 with 1, 19.6 without)
DISTANCE_MAX_LEVELS = 3


class ShapeDictionary(nn.Module):
    """The dictionary ``D`` as a buffer ``(3, K, N)`` (per axis, level, training shape) + the ℓ1 refinement."""

    def __init__(
        self, num_vertebrae: int, lam: float = 1.0, positive: bool = False, min_trusted: int = 3, max_iter: int = 2000,
        held_out_check: bool = True, consensus: bool = True, exchange: bool = True,
        outlier_radius_mm: float | None = OUTLIER_RADIUS_MM, pair_distances: bool = True,
    ) -> None:
        super().__init__()
        # with consensus: a pair of levels at most DISTANCE_MAX_LEVELS apart is consistent only when its distance is
        # also the training spines' (not only its offset), and a left-out point comes back only where those hold
        self.pair_distances = pair_distances
        # with consensus: let a left-out point in when the shape model finds it likelier an inlier than an outlier
        # spread over a ball of this radius (None: no such step)
        self.outlier_radius_mm = outlier_radius_mm
        # with consensus: exchange a trusted point for a left-out one when the shape model finds the set more likely
        self.exchange = exchange
        self.held_out_check = held_out_check  # verify each rejection with the fit of the points that agree
        # start the rejection from the chain's largest pairwise-consistent subset, let wrongly dropped points back in
        self.consensus = consensus
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
        # training statistics of the offset between two levels (``pair_statistics``): mean and tolerance
        self.register_buffer("pair_mean", torch.zeros(num_vertebrae, num_vertebrae, 3, dtype=torch.float64))
        self.register_buffer("pair_tolerance", torch.zeros(num_vertebrae, num_vertebrae, dtype=torch.float64))
        self.register_buffer("distance_mean", torch.zeros(num_vertebrae, num_vertebrae, dtype=torch.float64))
        self.register_buffer("distance_tolerance", torch.zeros(num_vertebrae, num_vertebrae, dtype=torch.float64))
        # the Gaussian shape model (``shape_gaussian``): mean (K, 3) and covariance (3K, 3K)
        self.register_buffer("shape_mean", torch.zeros(num_vertebrae, 3, dtype=torch.float64))
        self.register_buffer("shape_cov", torch.eye(3 * num_vertebrae, dtype=torch.float64))

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
        self._set_pairs(*pair_statistics(c), *pair_distance_statistics(c))
        self._set_shape_model(*fit_shape_gaussian(c, full))

    def _set_shape_model(self, mean: np.ndarray, cov: np.ndarray) -> None:
        self.shape_mean = torch.from_numpy(np.ascontiguousarray(mean))
        self.shape_cov = torch.from_numpy(np.ascontiguousarray(cov))

    def _set_pairs(self, mean: np.ndarray, tolerance: np.ndarray, distance: np.ndarray,
                   distance_tolerance: np.ndarray) -> None:
        """Store pair statistics; pairs the training shapes never showed together take the imputed shapes'."""
        unseen = np.isnan(tolerance)
        if unseen.any():
            imputed = self.atoms.cpu().numpy().transpose(2, 1, 0)
            imputed_mean, imputed_tolerance = pair_statistics(imputed)
            mean[unseen], tolerance[unseen] = imputed_mean[unseen], imputed_tolerance[unseen]
            imputed_distance, imputed_distance_tolerance = pair_distance_statistics(imputed)
            distance[unseen], distance_tolerance[unseen] = imputed_distance[unseen], imputed_distance_tolerance[unseen]
        self.pair_mean = torch.from_numpy(mean)
        self.pair_tolerance = torch.from_numpy(tolerance)
        self.distance_mean = torch.from_numpy(distance)
        self.distance_tolerance = torch.from_numpy(distance_tolerance)

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
            k, shapes = self.num_vertebrae, state_dict[key].cpu().numpy().transpose(2, 1, 0)
            # a checkpoint written before the pair offsets or distances: take them from its (imputed) dictionary
            missing = ((("pair_mean", "pair_tolerance"), pair_statistics, (k, k, 3)),
                       (("distance_mean", "distance_tolerance"), pair_distance_statistics, (k, k)))
            for names, statistics, empty in missing:
                if prefix + names[1] not in state_dict:
                    values = statistics(shapes) if shapes.shape[0] > 0 else (np.zeros(empty), np.zeros((k, k)))
                    for name, value in zip(names, values, strict=True):
                        state_dict[prefix + name] = torch.from_numpy(value)
            if prefix + "shape_cov" not in state_dict:
                # a checkpoint written before the shape model: fit it to the (imputed) dictionary
                mean, cov = np.zeros((k, 3)), np.eye(3 * k)
                if shapes.shape[0] > 0:
                    mean, cov = fit_shape_gaussian(shapes, shapes)
                state_dict[prefix + "shape_mean"] = torch.from_numpy(np.ascontiguousarray(mean))
                state_dict[prefix + "shape_cov"] = torch.from_numpy(np.ascontiguousarray(cov))
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

    def _consistent_pairs(self, v: np.ndarray, points: np.ndarray, slack: float, offsets: bool = True) -> np.ndarray:
        """``(n, n)`` bool: which pairs of ``points`` are consistent: the offset ``v_j - v_i`` lies within the pair's
        training tolerance + ``slack`` of its training mean (unless ``offsets`` is False), and with ``pair_distances``
        its length within the distance tolerance + ``slack`` of the training distance, for levels at most
        ``DISTANCE_MAX_LEVELS`` apart."""
        pair = np.ix_(points, points)
        diff = v[points][None, :, :] - v[points][:, None, :]
        ok = np.ones((points.size, points.size), dtype=bool)
        if offsets:
            ok &= np.linalg.norm(diff - self.pair_mean.cpu().numpy()[pair], axis=-1) <= (
                self.pair_tolerance.cpu().numpy()[pair] + slack)
        if self.pair_distances:
            deviation = np.abs(np.linalg.norm(diff, axis=-1) - self.distance_mean.cpu().numpy()[pair])
            near = np.abs(points[:, None] - points[None, :]) <= DISTANCE_MAX_LEVELS
            ok &= ~near | (deviation <= self.distance_tolerance.cpu().numpy()[pair] + slack)
        return ok

    def _consistent_subset(self, v: np.ndarray, points: np.ndarray, slack: float) -> np.ndarray:
        """The largest subset of ``points`` whose every pair is consistent (``_consistent_pairs``; a maximum clique
        of the consistency graph, networkx). Of equally large subsets, the one the shape model finds most likely
        wins (``_log_likelihood``)."""
        graph = nx.Graph()
        graph.add_nodes_from(range(points.size))
        graph.add_edges_from(zip(*np.nonzero(np.triu(self._consistent_pairs(v, points, slack), k=1)), strict=True))
        cliques = [points[np.sort(c)] for c in nx.find_cliques(graph)]
        largest = max(c.size for c in cliques)
        return max((c for c in cliques if c.size == largest), key=lambda c: (self._log_likelihood(v, c), (-c).tolist()))

    def _reject(self, v: np.ndarray, trusted: np.ndarray, lam: float, detect_lam: float,
                max_residual: float) -> np.ndarray | None:
        """``trusted`` less the outliers ``_next_outlier`` finds one at a time; None when no ``min_trusted`` agree."""
        while (drop := self._next_outlier(v, trusted, lam, detect_lam, max_residual)) is not None:
            if trusted.size == self.min_trusted:
                return None
            trusted = np.delete(trusted, drop)
        return trusted

    def _readmit(self, v: np.ndarray, trusted: np.ndarray, present: np.ndarray, lam: float, detect_lam: float,
                 max_residual: float) -> np.ndarray:
        """Let present points outside ``trusted`` back in, nearest to the fit first: a point joins when the
        rejection of ``trusted`` + it keeps it and ends with more points, or as many with a smaller summed
        residual (it may then push out the outlier that had displaced it); with ``pair_distances`` only when the
        result's pairs keep their training distances (``_consistent_pairs``; a fit bends to a level on its
        neighbour's place within ``max_residual``; the offsets are not asked again: a bent spine's good levels can
        fail them). Repeats until nothing changes."""
        cost = lambda t: float(np.linalg.norm(v[t] - self._fit(v, t, lam)[t], axis=1).sum())  # noqa: E731
        changed = True
        while changed:
            changed = False
            fit = self._fit(v, trusted, lam)
            current = float(np.linalg.norm(v[trusted] - fit[trusted], axis=1).sum())
            others = np.setdiff1d(present, trusted)
            for p in others[np.argsort(np.linalg.norm(v[others] - fit[others], axis=1), kind="stable")]:
                grown = self._reject(v, np.union1d(trusted, [p]), lam, detect_lam, max_residual)
                if grown is None or p not in grown or grown.size < trusted.size:
                    continue
                if self.pair_distances and not self._consistent_pairs(v, grown, max_residual / 2.0,
                                                                      offsets=False).all():
                    continue
                if grown.size > trusted.size or cost(grown) < current:
                    trusted, changed = grown, True
                    break
        return trusted

    def _log_likelihood(self, v: np.ndarray, points: np.ndarray) -> float:
        """Log-density of ``v[points]`` under the Gaussian shape model, position free (``shape_gaussian``): comparable
        between sets of as many points. Unlike a fit's residual, it knows how far each level may be from each other
        (a displaced neighbour is unlikely even where a fit bends to it), and spine size as a correlated mode."""
        return log_likelihood(v, points, self.shape_mean.cpu().numpy(), self.shape_cov.cpu().numpy())

    def _grow(self, v: np.ndarray, trusted: np.ndarray, present: np.ndarray) -> np.ndarray:
        """Add left-out present points, the likeliest first, while the shape model's log-density of the point given
        the trusted ones (position free: ``_log_likelihood`` of the set with it less that of the set without, which
        adds ``3/2 log((m + 1) / m)`` for ``m`` trusted points) exceeds the log-density of an outlier spread evenly
        over a ball of ``outlier_radius_mm``: a test between "inlier" and "outlier" for each point, where the earlier
        steps only compare sets of as many points. It gives back a group of good levels that a displaced point had
        cost its place: an unusual spine's levels that the sparse fit cannot bend to, but that lie where the others
        make them likely."""
        unit_mm = 2.0 / self.unit_scale  # the dictionary's coordinate unit in mm (``unit_scale``: 2 mm units)
        log_outlier = -np.log(4.0 / 3.0 * np.pi * (self.outlier_radius_mm / unit_mm) ** 3)
        while (others := np.setdiff1d(present, trusted)).size:
            current = self._log_likelihood(v, trusted)
            gains = [self._log_likelihood(v, np.union1d(trusted, [p])) - current for p in others]
            best = int(np.argmax(gains))
            if gains[best] <= log_outlier:
                break
            trusted = np.union1d(trusted, [others[best]])
        return trusted

    def _exchange(self, v: np.ndarray, trusted: np.ndarray, present: np.ndarray, lam: float, detect_lam: float,
                  max_residual: float) -> np.ndarray:
        """Exchange one trusted point for a left-out present point when the shape model finds the new set more likely
        (``_log_likelihood``) and the rejection keeps all of it; repeat until no exchange helps. Two points compete
        for one place when a displaced one happens to agree with the fit as well as a good one does (often
        neighbours); the one that makes a more likely spine with the others wins. Any two levels may be exchanged:
        limiting exchanges to levels at most 2 apart left 1.1 % of the CSI-2014 spines with a good centroid moved
        instead of 1.0 % (perf/bench_sparsity.py, 3 x 540 corrupted spines)."""
        if np.setdiff1d(present, trusted).size == 0:
            return trusted
        current = self._log_likelihood(v, trusted)
        improved = True
        while improved:
            improved = False
            for p in np.setdiff1d(present, trusted):
                for q in trusted:
                    swapped = np.union1d(np.setdiff1d(trusted, [q]), [p])
                    likelihood = self._log_likelihood(v, swapped)  # cheap: checked before the rejection's fits
                    if likelihood <= current:
                        continue
                    kept = self._reject(v, swapped, lam, detect_lam, max_residual)
                    if kept is not None and kept.size == swapped.size:
                        trusted, current, improved = swapped, likelihood, True
                        break
                if improved:
                    break
        return trusted

    def refine(
        self, centroids_vox: np.ndarray, present: np.ndarray, max_residual: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Refined ``(K, 3)`` coordinates for all levels and the indices kept as inliers.

        1. Trusted: the longest chain of present vertebrae that is monotone along the vertical axis.
        2. With ``max_residual`` (coordinate units):
           a. with ``consensus``, trusted becomes the chain's largest subset whose pairwise offsets (and, with
              ``pair_distances``, their lengths) all lie within the training spines' tolerance
              (``_consistent_subset``, slack ``max_residual / 2``; of equally large ones the most likely under the
              Gaussian shape model);
           b. the trusted point that a strongly penalised fit (``detect_lam``) explains worst is dropped while its
              residual ``‖v_i − v̂_i‖`` exceeds ``max_residual`` and the points that fit does explain do not predict
              it within ``max_residual`` either (``_next_outlier``; one at a time, refitting after each);
           c. with ``consensus``, present points left out may come back (``_readmit``), and with ``exchange`` take
              the place of a trusted neighbour when that makes a more likely spine (``_exchange``), and with
              ``outlier_radius_mm`` join when the shape model finds them likelier inliers than outliers (``_grow``);
              any present point within ``max_residual`` of the final fit (at ``lam``) is an inlier. Inliers keep the
              network's coordinates; all other levels (outliers in any direction, absent levels) take the reconstruction
              ``D a + t``.
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
        if self.consensus:
            trusted = self._consistent_subset(v, trusted, max_residual / 2.0)
        if trusted.size >= self.min_trusted:
            trusted = self._reject(v, trusted, lam, detect_lam, max_residual)
        if trusted is None or trusted.size < self.min_trusted:
            return v.copy(), np.zeros(0, dtype=np.int64)  # no consistent subset: nothing can be vouched for
        if self.consensus:
            trusted = self._readmit(v, trusted, idx_present, lam, detect_lam, max_residual)
            if self.exchange:
                trusted = self._exchange(v, trusted, idx_present, lam, detect_lam, max_residual)
            if self.outlier_radius_mm is not None:
                trusted = self._grow(v, trusted, idx_present)
        fit = self._fit(v, trusted, lam)
        others = np.setdiff1d(idx_present, trusted)
        inliers = np.union1d(trusted, others[np.linalg.norm(v[others] - fit[others], axis=1) <= max_residual])
        out = fit.copy()
        out[inliers] = v[inliers]
        return out, inliers
