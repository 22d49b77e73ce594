"""Integral regression (soft-argmax): heatmap logits -> expected voxel coordinate, differentiable.

Sun et al., "Integral Human Pose Regression" (ECCV 2018), as used by Qin et al. for vertebrae: each
heatmap is normalised with a softmax over all its voxels, P_j = exp(Y_j) / sum(exp(Y_j)), and the
centroid is the expectation of the voxel coordinate under P_j, C_j = sum_v v * P_j(v). Voxel ``i``
along an axis sits at coordinate ``i`` (voxel centres), so the result is in the same voxel frame as
``centroids_vox`` of the batch that produced the heatmaps. The expectation is computed from the three
marginals of P_j, so memory stays O(D*H*W) per channel and no (D, H, W, 3) coordinate grid is built.
"""

from __future__ import annotations

import torch


def softmax_3d(heatmaps: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Probability maps: softmax of ``beta * heatmaps`` over the last three axes; same shape, sums to 1."""
    if heatmaps.dim() < 3:
        raise ValueError(f"heatmaps need at least 3 spatial axes, got shape {tuple(heatmaps.shape)}")
    spatial = heatmaps.shape[-3:]
    scaled = heatmaps if beta == 1.0 else beta * heatmaps  # a full-size pass saved at the paper's beta
    flat = scaled.reshape(*heatmaps.shape[:-3], -1)
    flat = flat.to(torch.promote_types(flat.dtype, torch.float32))  # half precision (AMP) -> float32
    return torch.softmax(flat, dim=-1).reshape(*heatmaps.shape[:-3], *spatial)


def expected_coordinates(probabilities: torch.Tensor) -> torch.Tensor:
    """Expected voxel coordinate of each ``(..., D, H, W)`` probability map -> ``(..., 3)`` in (d, h, w) order."""
    d, h, w = probabilities.shape[-3:]
    dev, dt = probabilities.device, probabilities.dtype
    # two passes over the full maps: the (D, H) plane (summed over W) gives the D and H marginals
    plane = probabilities.sum(dim=-1)  # (..., D, H)
    marg_w = probabilities.sum(dim=(-3, -2))  # (..., W)
    # outside autocast: it would round these products to bf16 (0.5-voxel steps at 100 voxels)
    with torch.autocast(dev.type, enabled=False):
        coords = [
            plane.sum(-1) @ torch.arange(d, device=dev, dtype=dt),
            plane.sum(-2) @ torch.arange(h, device=dev, dtype=dt),
            marg_w @ torch.arange(w, device=dev, dtype=dt),
        ]
    return torch.stack(coords, dim=-1)


def soft_argmax_3d(heatmaps: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Integral regression of ``(B, K, D, H, W)`` heatmap logits -> ``(B, K, 3)`` voxel coordinates, float32 (float64
    for float64 heatmaps).

    ``beta`` is an inverse temperature applied before the softmax (1.0 = the paper's plain softmax; the
    network learns the sharpness of its logits). Every coordinate lies inside ``[0, size - 1]``.
    """
    return expected_coordinates(softmax_3d(heatmaps, beta))
