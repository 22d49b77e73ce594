"""Message passing along the vertebra chain: kernels from training offsets, restoring a missing response."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spinebench.datamodules.targets import gaussian_heatmaps
from spinebench.methods import create_method
from spinebench.methods.message_passing import (
    ChainMessagePassing,
    _convolve,
    fit_offset_gaussians,
    gaussian_kernels,
    peak_preserving,
)

K = 26
LEVELS = range(8, 15)  # T1..T7 in the hand-built case
STEP = np.array([-8.0, 1.0, 0.0])  # offset c[i+1] - c[i] in voxels: one level down is 8 voxels lower


def chain_centroids(top=(58.0, 4.0, 7.0)) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.zeros(K, 3)
    present = torch.zeros(K, dtype=torch.bool)
    for n, level in enumerate(LEVELS):
        c[level] = torch.tensor(top) + n * torch.from_numpy(STEP).float()
        present[level] = True
    return c, present


def training_centroids(n=20, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.cumsum(np.tile(STEP, (K, 1)), axis=0) + np.array([220.0, 0.0, 7.0])
    return base[None] + rng.normal(0, 0.3, size=(n, K, 3))


def test_fitted_offsets_match_training_distribution():
    c = training_centroids()
    c[0, 5] = np.nan  # a missing level is skipped, not propagated
    means, covs = fit_offset_gaussians(c, min_sigma_vox=0.5)
    assert means.shape == (K - 1, 3) and covs.shape == (K - 1, 3, 3)
    np.testing.assert_allclose(means, np.tile(STEP, (K - 1, 1)), atol=0.3)
    assert (np.linalg.eigvalsh(covs) >= 0.25 - 1e-9).all()


def test_kernels_peak_at_the_offset_and_preserve_a_confident_peak():
    means, covs = fit_offset_gaussians(training_centroids(), min_sigma_vox=0.5)
    kernels = gaussian_kernels(means, covs, stride=2)
    assert kernels.shape[:2] == (2, K - 1) and (kernels >= 0).all()
    torch.testing.assert_close(kernels.sum(dim=(2, 3, 4)), torch.ones(2, K - 1))
    centre = torch.tensor(kernels.shape[2:]) // 2
    for direction, sign in ((0, 1), (1, -1)):
        peak = torch.tensor(np.unravel_index(int(kernels[direction, 3].argmax()), kernels.shape[2:]))
        offset = peak - centre  # mean offset / stride = (-4, 0.5, 0) going down, its negative going up
        assert offset[0] == -4 * sign and offset[2] == 0 and offset[1] in (0, sign)
    # a peak-1 source shaped like the training target sends a peak-1 message, centred at source + offset
    fine = peak_preserving(gaussian_kernels(means, covs, stride=1), stride=1, source_sigma_vox=1.5)
    source = gaussian_heatmaps(torch.tensor([[[30.0, 10.0, 10.0]]]), torch.ones(1, 1, dtype=torch.bool),
                               (48, 20, 20), sigma_vox=1.5)[0]  # fmt: skip
    message = _convolve(source, fine[0, 3:4])[0]
    assert abs(float(message.max()) - 1.0) < 0.02
    assert np.unravel_index(int(message.argmax()), message.shape) == (22, 11, 10)  # + (-8, 1, 0)


def test_fft_convolution_matches_direct_convolution():
    torch.manual_seed(0)
    maps, kernels = torch.rand(3, 12, 10, 9), torch.rand(3, 7, 5, 7)  # 245 taps: FFT path
    reference = F.conv3d(maps[None], kernels.flip(1, 2, 3)[:, None], padding=(3, 2, 3), groups=3)[0]
    torch.testing.assert_close(_convolve(maps, kernels), reference, atol=1e-4, rtol=1e-4)
    small = kernels[:, 2:5, 1:4, 2:5]  # 27 taps: direct path
    reference = F.conv3d(maps[None], small.flip(1, 2, 3)[:, None], padding=1, groups=3)[0]
    torch.testing.assert_close(_convolve(maps, small), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_restores_removed_channel_and_keeps_confident_ones(stride):
    c, present = chain_centroids()
    heat = gaussian_heatmaps(c[None], present[None], (64, 14, 14), sigma_vox=1.5)[0]
    missing = 11
    damaged = heat.clone()
    damaged[missing] = 0.0
    method = create_method("di2in_mp", mp_stride=stride, mp_min_sigma_vox=0.5, sigma_vox=1.5)
    method.fit_shape_prior(training_centroids())
    coords, scores = method.locate(damaged)
    present_pred = scores > method.config.presence_threshold
    # the removed level is found again, near its true position, from its two confident neighbours
    assert present_pred[missing]
    assert np.linalg.norm(coords[missing] - c[missing].numpy()) < 1.5 * stride
    # confident channels do not move (full-resolution peak kept)
    for level in LEVELS:
        if level != missing:
            assert np.linalg.norm(coords[level] - c[level].numpy()) < 0.3
    # the levels above and below the visible chain have a single neighbour: stay below the threshold
    assert not present_pred[LEVELS[0] - 1] and not present_pred[LEVELS[-1] + 1]
    # without message passing the removed channel is lost
    plain = create_method("di2in")
    _, plain_scores = plain.locate(damaged)
    assert plain_scores[missing] < plain.config.presence_threshold


def test_confident_channel_resists_disagreeing_neighbours():
    c, present = chain_centroids()
    heat = gaussian_heatmaps(c[None], present[None], (64, 14, 14), sigma_vox=1.5)[0]
    shifted = c.clone()
    shifted[10] += torch.tensor([0.0, 3.0, 0.0])
    shifted[12] += torch.tensor([0.0, 3.0, 0.0])  # both neighbours of level 11 shifted 3 voxels
    heat_shifted = gaussian_heatmaps(shifted[None], present[None], (64, 14, 14), sigma_vox=1.5)[0]
    heat[10], heat[12] = heat_shifted[10], heat_shifted[12]
    mp = ChainMessagePassing(K, alpha=0.5, iterations=3)
    mp.fit(training_centroids(), stride=1, min_sigma_vox=0.5, source_sigma_vox=1.5)
    out = mp(heat[None])[0]
    peak = np.unravel_index(int(out[11].argmax()), out.shape[1:])
    assert np.abs(np.array(peak) - c[11].numpy()).max() <= 1.0


def test_unfitted_and_bad_arguments_raise():
    mp = ChainMessagePassing(K)
    with pytest.raises(RuntimeError, match="fit_shape_prior"):
        mp(torch.zeros(1, K, 4, 4, 4))
    with pytest.raises(ValueError, match="alpha"):
        ChainMessagePassing(K, alpha=1.5)
    with pytest.raises(ValueError, match="iterations"):
        ChainMessagePassing(K, iterations=0)


@pytest.mark.parametrize("centre, tol", [((30.0, 7.0, 7.0), 0.3), ((0.4, 1.0, 12.6), 0.55)])  # inside, at borders
def test_isolated_confident_vertebra_is_kept(centre, tol):
    c = torch.zeros(K, 3)
    present = torch.zeros(K, dtype=torch.bool)
    c[12], present[12] = torch.tensor(centre), True
    heat = gaussian_heatmaps(c[None], present[None], (64, 14, 14), sigma_vox=1.5)[0]
    method = create_method("di2in_mp", mp_stride=2, mp_min_sigma_vox=0.5, sigma_vox=1.5)
    method.fit_shape_prior(training_centroids())
    coords, scores = method.locate(heat)
    assert scores[12] > 0.9 and np.linalg.norm(coords[12] - c[12].numpy()) < tol
    assert (np.delete(scores, 12) < method.config.presence_threshold).all()
