"""Integral regression (soft-argmax): sub-voxel peak recovery, also at a border, and gradients to the heatmap."""

from __future__ import annotations

import pytest
import torch

from spinebench.datamodules.targets import gaussian_heatmaps
from spinebench.methods.integral import expected_coordinates, soft_argmax_3d, softmax_3d

SHAPE = (20, 24, 28)


def _gaussian_logits(centres: list[tuple[float, float, float]], sigma_vox: float = 1.5, scale: float = 30.0):
    c = torch.tensor([centres], dtype=torch.float32)  # (1, K, 3)
    present = torch.ones(c.shape[:2], dtype=torch.bool)
    return scale * gaussian_heatmaps(c, present, SHAPE, sigma_vox), c


@pytest.mark.parametrize(
    "centre",
    [(9.3, 11.6, 14.2), (0.7, 12.0, 13.4), (19.0, 0.4, 27.2), (18.6, 23.3, 0.0)],
    ids=["interior", "near-low-face", "corner-ish", "on-faces"],
)
def test_recovers_gaussian_peak_to_subvoxel_accuracy(centre):
    logits, c = _gaussian_logits([centre])
    coords = soft_argmax_3d(logits)
    assert coords.shape == (1, 1, 3)
    error = (coords - c).abs().max().item()
    assert error < 0.35, f"peak {centre} regressed to {coords.tolist()}"


def test_axis_order_and_several_channels():
    centres = [(2.0, 20.0, 5.5), (15.5, 3.0, 22.0)]
    logits, c = _gaussian_logits(centres)
    coords = soft_argmax_3d(logits)
    assert torch.allclose(coords, c, atol=0.2)


def test_uniform_heatmap_gives_the_centre_and_probabilities_sum_to_one():
    heat = torch.zeros(2, 3, *SHAPE)
    probs = softmax_3d(heat)
    assert torch.allclose(probs.sum(dim=(-3, -2, -1)), torch.ones(2, 3))
    coords = expected_coordinates(probs)
    assert torch.allclose(coords, torch.tensor([(s - 1) / 2 for s in SHAPE]).expand(2, 3, 3), atol=1e-4)


def test_gradients_reach_the_heatmap_and_move_the_coordinate_towards_the_target():
    logits, _ = _gaussian_logits([(6.0, 8.0, 10.0)], scale=15.0)
    logits = logits.clone().requires_grad_(True)
    target = torch.tensor([[[8.0, 8.0, 10.0]]])
    loss = torch.nn.functional.smooth_l1_loss(soft_argmax_3d(logits), target)
    loss.backward()
    grad = logits.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # the gradient must favour voxels on the target side of the peak (larger d index)
    assert grad[0, 0, 7, 8, 10] < 0 < grad[0, 0, 5, 8, 10]
    with torch.no_grad():
        stepped = soft_argmax_3d(logits - 20.0 * grad)
    assert (stepped - target).abs().sum() < (soft_argmax_3d(logits.detach()) - target).abs().sum()


def test_mixed_precision_keeps_float32_coordinates():
    """Under autocast (bf16 AMP, as on a GPU with precision "bf16-mixed") the expectation stays float32: a bf16
    matmul would round a coordinate near 100 voxels to steps of 0.5."""
    shape = (8, 8, 128)
    c = torch.tensor([[[3.3, 4.1, 101.3], [2.0, 5.0, 77.7]]])
    logits = 30.0 * gaussian_heatmaps(c, torch.ones(1, 2, dtype=torch.bool), shape, 1.5)
    plain = soft_argmax_3d(logits)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = soft_argmax_3d(logits)
    assert mixed.dtype == torch.float32
    assert (mixed - plain).abs().max().item() < 1e-4
