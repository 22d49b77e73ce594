"""The Gaussian shape model: covariance from partial shapes at arbitrary positions, a position-free likelihood."""

from __future__ import annotations

import numpy as np

from spinebench.methods.shape_gaussian import fit_shape_gaussian, log_likelihood
from spinebench.methods.shape_statistics import impute_missing_levels, mean_neighbour_offsets


def _shapes(rng, n=400, k=6):
    """Spines of random size (one correlated mode) + independent 1-unit noise, each at a random position."""
    base = np.arange(k)[:, None] * np.array([-10.0, 1.0, 0.0])  # (K, 3), going down axis 0
    size = rng.normal(1.0, 0.1, n)
    shapes = size[:, None, None] * base[None] + rng.normal(0.0, 1.0, (n, k, 3))
    return shapes + rng.uniform(-200.0, 200.0, (n, 1, 3)), base


def test_covariance_of_partial_shapes_at_random_positions_is_recovered():
    rng = np.random.default_rng(0)
    shapes, base = _shapes(rng)
    partial = shapes.copy()
    partial[:200, :2] = np.nan  # half the shapes lack the two top levels
    mean, cov = fit_shape_gaussian(partial, impute_missing_levels(partial, mean_neighbour_offsets(partial)))
    assert mean.shape == (6, 3) and cov.shape == (18, 18)
    assert np.allclose(np.diff(mean, axis=0), np.diff(base, axis=0), atol=0.5)  # the mean offsets, position free
    # axis-0 coordinates of the two end levels: spine size anti-correlates them after the position is removed
    top, bottom = 3 * 0, 3 * 5
    correlation = cov[top, bottom] / np.sqrt(cov[top, top] * cov[bottom, bottom])
    assert correlation < -0.5
    assert np.all(np.linalg.eigvalsh(cov) > 0)


def test_likelihood_ignores_position_and_punishes_a_displaced_neighbour_more_than_a_bigger_spine():
    rng = np.random.default_rng(1)
    shapes, base = _shapes(rng)
    mean, cov = fit_shape_gaussian(shapes, shapes)
    levels = np.arange(6)
    spine = base.copy()
    assert np.isclose(log_likelihood(spine, levels, mean, cov), log_likelihood(spine + 123.0, levels, mean, cov))
    bigger = 1.2 * base  # two standard deviations of size: the last level 10 units lower
    displaced = base.copy()
    displaced[5, 0] -= 10.0  # the same 10 units, for one level alone
    assert log_likelihood(bigger, levels, mean, cov) > log_likelihood(displaced, levels, mean, cov) + 5.0


def test_a_level_no_training_shape_annotates_takes_its_mean_from_the_imputed_shapes_without_a_warning():
    import warnings

    rng = np.random.default_rng(2)
    shapes, base = _shapes(rng, n=50)
    partial = shapes.copy()
    partial[:, 5] = np.nan  # nobody annotates the last level (e.g. S2 in a phantom of short spines)
    imputed = impute_missing_levels(partial, mean_neighbour_offsets(partial))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Mean of empty slice" would fail here
        mean, cov = fit_shape_gaussian(partial, imputed)
    assert np.all(np.isfinite(mean)) and np.all(np.linalg.eigvalsh(cov) > 0)
    assert np.allclose(mean[5] - mean[4], imputed[:, 5].mean(0) - imputed[:, 4].mean(0), atol=1.0)


def test_likelihood_of_two_points_is_the_density_of_their_offset():
    """A normalised density: for two levels the contrast is the offset / sqrt(2) per axis, so the log-density is
    the offset's Gaussian log-density plus 3/2 log 2 (the Jacobian); set sizes can then be compared."""
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(3)
    shapes, _ = _shapes(rng, n=100, k=4)
    mean, cov = fit_shape_gaussian(shapes, shapes)
    points = shapes[7]
    i, j = 1, 3
    offset_mean = mean[j] - mean[i]
    block = lambda a, b: cov[3 * a:3 * a + 3, 3 * b:3 * b + 3]  # noqa: E731
    offset_cov = block(j, j) + block(i, i) - block(i, j) - block(j, i)
    expected = multivariate_normal(offset_mean, offset_cov).logpdf(points[j] - points[i]) + 1.5 * np.log(2.0)
    assert np.isclose(log_likelihood(points, np.array([i, j]), mean, cov), expected)
