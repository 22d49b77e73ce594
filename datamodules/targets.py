"""Training targets computed from centroids: Gaussian heatmaps (volume mode)."""

from __future__ import annotations

import torch


def gaussian_heatmaps(
    centroids_vox: torch.Tensor, present: torch.Tensor, shape: tuple[int, int, int], sigma_vox: float
) -> torch.Tensor:
    """One unnormalised Gaussian (peak 1) per present vertebra.

    centroids_vox: (B, K, 3) voxel coordinates; present: (B, K) bool; returns (B, K, D, H, W) float32,
    all-zero channels for absent vertebrae. Separable: the 3D Gaussian is the outer product of three 1D ones.
    """
    if sigma_vox <= 0:
        raise ValueError(f"sigma_vox must be positive, got {sigma_vox}")
    device = centroids_vox.device
    axes = [torch.arange(n, device=device, dtype=torch.float32) for n in shape]
    c = centroids_vox.to(torch.float32)
    g = [torch.exp(-((axes[a][None, None, :] - c[..., a, None]) ** 2) / (2.0 * sigma_vox**2)) for a in range(3)]
    heat = g[0][..., :, None, None] * g[1][..., None, :, None] * g[2][..., None, None, :]
    return heat * present.to(torch.float32)[..., None, None, None]
