"""Message passing between vertebra heatmaps along the chain C1–C2–…–S2 (Yang et al. 2017, eq. 2).

    P_{t+1}(v_i) = (1/Z) · ( α · mean_{j∈∂i} P_t(v_j) ∗ k(v_i|v_j) + P_t(v_i) )

``k(v_i|v_j)`` is the distribution of the offset ``c_i − c_j`` between neighbouring centroids, fitted from
the training centroids as a 3D Gaussian (mean and full covariance, in voxels) and discretised on a grid, so
convolving ``P_j`` with it moves ``P_j``'s mass to where vertebra ``i`` is expected. Our heatmaps are
peak-1 Gaussians, not probability maps: kernels are scaled so a confident neighbour sends a peak-1 message
(``peak_preserving``), and ``Z = 1 + α``, so a map that agrees with its messages is a fixed point and
keeps its height, and a removed channel grows towards the mean of its neighbours' messages (about 0.7 of
it after 3 iterations at α = 0.5; a level beyond the end of the visible chain gets half of that).

Message passing runs on a grid ``stride`` times coarser than the heatmaps (max-pooled): at 2 mm and stride
4 a 160×112×112 case becomes 40×28×28, which keeps it far below 0.1 s per case on a CPU. The kernels are
one tensor ``(2, K-1, kd, kh, kw)`` (``[0]`` = message from the level above, ``[1]`` = from the level below);
a buffer for post-processing, or a ``Parameter`` when the layer is unrolled into the network and fine-tuned.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.fft import next_fast_len
from torch import nn

from spinebench.datamodules.targets import gaussian_heatmaps

# Kernels with at most this many taps are applied as a direct grouped convolution, larger ones via FFT.
_DIRECT_MAX_TAPS = 125


def fit_offset_gaussians(centroids_vox: np.ndarray, min_sigma_vox: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(K-1, 3)`` and covariance ``(K-1, 3, 3)`` of ``c[i+1] − c[i]`` over training shapes (NaN = absent).

    ``min_sigma_vox²`` is added to every covariance (one annotation's uncertainty; keeps a pair seen once
    usable). Pairs never seen together get the average mean and covariance of the pairs that were seen.
    """
    c = np.asarray(centroids_vox, dtype=np.float64)
    diffs = c[:, 1:, :] - c[:, :-1, :]
    k1 = diffs.shape[1]
    means, covs, seen = np.zeros((k1, 3)), np.zeros((k1, 3, 3)), np.zeros(k1, dtype=bool)
    for i in range(k1):
        d = diffs[:, i][~np.isnan(diffs[:, i]).any(axis=1)]
        if len(d) == 0:
            continue
        seen[i] = True
        means[i] = d.mean(axis=0)
        covs[i] = np.cov(d, rowvar=False, bias=True) if len(d) > 1 else 0.0
    if not seen.any():
        raise ValueError("no pair of neighbouring vertebrae is annotated in the training centroids")
    means[~seen] = means[seen].mean(axis=0)
    covs[~seen] = covs[seen].mean(axis=0)
    covs = covs + (min_sigma_vox**2) * np.eye(3)
    return means, covs


def gaussian_kernels(means: np.ndarray, covs: np.ndarray, stride: int) -> torch.Tensor:
    """Discretised offset kernels ``(2, K-1, kd, kh, kw)`` on a grid ``stride`` voxels apart, each summing to 1.

    ``[0, i]`` = k(v_{i+1} | v_i) (offset +mean: a message from level i to i+1), ``[1, i]`` = k(v_i | v_{i+1})
    (offset −mean). All kernels share one odd size centred on offset 0, large enough for |mean| + 3σ.
    """
    m = means / stride
    cv = covs / stride**2
    sigma = np.sqrt(np.einsum("kaa->ka", cv))
    radius = np.ceil(np.abs(m) + 3.0 * sigma).max(axis=0).astype(int)  # (3,)
    grids = np.meshgrid(*[np.arange(-r, r + 1) for r in radius], indexing="ij")
    offsets = np.stack(grids, axis=-1).reshape(-1, 3).astype(np.float64)  # (T, 3)
    kernels = np.empty((2, len(m), offsets.shape[0]))
    for direction, sign in enumerate((1.0, -1.0)):
        delta = offsets[None, :, :] - sign * m[:, None, :]  # (K-1, T, 3)
        mahal = np.einsum("kta,kab,ktb->kt", delta, np.linalg.inv(cv), delta)
        kernels[direction] = np.exp(-0.5 * mahal)
    kernels /= kernels.sum(axis=2, keepdims=True)
    return torch.from_numpy(kernels.reshape(2, len(m), *(2 * radius + 1))).float()


def peak_preserving(kernels: torch.Tensor, stride: int, source_sigma_vox: float) -> torch.Tensor:
    """Scale kernels so that a confident response sends a message of peak 1.

    The paper passes probability maps, which a sum-1 kernel keeps normalised. Our maps are peak-1 heatmaps
    whose height is the confidence, so we keep the peak instead: each kernel is divided by the peak of its
    message from a peak-1 Gaussian of σ = ``source_sigma_vox`` (the training target) max-pooled by
    ``stride``, exactly as ``DI2IN`` presents heatmaps to message passing.
    """
    ksize = kernels.shape[2:]
    size = tuple((k + 2) * stride for k in ksize)
    centre = torch.tensor([[[s // 2 for s in size]]], dtype=torch.float32)
    source = gaussian_heatmaps(centre, torch.ones(1, 1, dtype=torch.bool), size, source_sigma_vox)
    if stride > 1:
        source = F.max_pool3d(source, stride)
    flat = kernels.reshape(-1, *ksize)
    peaks = _convolve(source[0].expand(flat.shape[0], *source.shape[2:]).contiguous(), flat).amax(dim=(1, 2, 3))
    return kernels / peaks.clamp_min(1e-12).reshape(kernels.shape[:2])[..., None, None, None]


def _wrapped_spectra(kernels: torch.Tensor, full: list[int]) -> torch.Tensor:
    """rfftn of odd, centred kernels ``(C, kd, kh, kw)`` placed with their centre at index 0 of a ``full`` grid."""
    r = [k // 2 for k in kernels.shape[1:]]
    padded = F.pad(kernels, (0, full[2] - kernels.shape[3], 0, full[1] - kernels.shape[2], 0, full[0] - kernels.shape[1]))
    return torch.fft.rfftn(torch.roll(padded, shifts=[-x for x in r], dims=(1, 2, 3)), dim=(1, 2, 3))


def _fft_size(shape, ksize) -> list[int]:
    # A reach of ±r needs only r voxels of zero padding for a circular convolution to equal the linear one
    # on the volume: what wraps around lands in the padding. Sizes rounded up to 2·3·5-smooth lengths.
    return [next_fast_len(s + k // 2, real=True) for s, k in zip(shape, ksize)]


def _convolve(maps: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """``maps (C, D, H, W)`` each convolved with ``kernels (C, kd, kh, kw)`` (odd, centred); same size out.

    Up to ``_DIRECT_MAX_TAPS`` taps a grouped direct convolution, larger kernels by FFT.
    """
    ksize = tuple(kernels.shape[1:])
    if math.prod(ksize) <= _DIRECT_MAX_TAPS:
        weight = kernels.flip(1, 2, 3)[:, None]  # conv3d correlates: flip for a true convolution
        return F.conv3d(maps[None], weight, padding=tuple(k // 2 for k in ksize), groups=maps.shape[0])[0]
    d, h, w = maps.shape[1:]
    full = _fft_size(maps.shape[1:], ksize)
    spec = torch.fft.rfftn(maps, s=full, dim=(1, 2, 3)) * _wrapped_spectra(kernels, full)
    return torch.fft.irfftn(spec, s=full, dim=(1, 2, 3))[:, :d, :h, :w]


class _ChainMessages:
    """Sum of the incoming messages of every level, ``(K, D, H, W)`` from maps ``(K, D, H, W)``.

    With FFT kernels, one forward and one inverse transform per call serve both directions (the neighbour
    shift is a channel shift of the same spectrum); kernel spectra are computed once per volume shape.
    """

    def __init__(self, kernels: torch.Tensor, shape: tuple[int, int, int]) -> None:
        self.kernels = kernels
        self.shape = tuple(shape)
        self.direct = math.prod(kernels.shape[2:]) <= _DIRECT_MAX_TAPS
        if not self.direct:
            self.full = _fft_size(self.shape, kernels.shape[2:])
            self.above = _wrapped_spectra(kernels[0], self.full)  # level i -> i+1
            self.below = _wrapped_spectra(kernels[1], self.full)  # level i+1 -> i

    def __call__(self, maps: torch.Tensor) -> torch.Tensor:
        if self.direct:
            zero = torch.zeros_like(maps[:1])
            from_above = _convolve(maps[:-1], self.kernels[0])
            from_below = _convolve(maps[1:], self.kernels[1])
            return torch.cat([zero, from_above]) + torch.cat([from_below, zero])
        spec = torch.fft.rfftn(maps, s=self.full, dim=(1, 2, 3))
        total = torch.zeros_like(spec)
        total[1:] = spec[:-1] * self.above
        total[:-1] += spec[1:] * self.below
        d, h, w = self.shape
        return torch.fft.irfftn(total, s=self.full, dim=(1, 2, 3))[:, :d, :h, :w]


class ChainMessagePassing(nn.Module):
    """``iterations`` rounds of eq. 2 on ``(B, K, D, H, W)`` maps already at the message-passing grid."""

    def __init__(self, num_vertebrae: int, alpha: float = 0.5, iterations: int = 3, trainable: bool = False) -> None:
        super().__init__()
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"message passing alpha must lie in (0, 1), got {alpha}")
        if iterations < 1:
            raise ValueError(f"message passing iterations must be >= 1, got {iterations}")
        if num_vertebrae < 2:
            raise ValueError(f"message passing needs at least 2 vertebrae, got {num_vertebrae}")
        self.num_vertebrae = num_vertebrae
        self.alpha = alpha
        self.iterations = iterations
        self.trainable = trainable
        self._set_kernels(torch.zeros(2, num_vertebrae - 1, 0, 0, 0))
        # 1 / |∂i|: the chain ends have one neighbour.
        degree = torch.full((num_vertebrae,), 2.0)
        degree[0] = degree[-1] = 1.0
        self.register_buffer("inv_degree", 1.0 / degree, persistent=False)

    def _set_kernels(self, kernels: torch.Tensor) -> None:
        if "kernels" in self._parameters:
            del self._parameters["kernels"]
        if "kernels" in self._buffers:
            del self._buffers["kernels"]
        if self.trainable:
            self.kernels = nn.Parameter(kernels)
        else:
            self.register_buffer("kernels", kernels)

    @property
    def fitted(self) -> bool:
        return self.kernels.numel() > 0

    def fit(self, centroids_vox: np.ndarray, stride: int, min_sigma_vox: float, source_sigma_vox: float) -> None:
        """Learn the kernels from training centroids ``(N, K, 3)`` in heatmap voxels (NaN = absent).

        ``source_sigma_vox``: σ of the heatmaps' peaks (the training target), in heatmap voxels.
        """
        c = np.asarray(centroids_vox, dtype=np.float64)
        if c.ndim != 3 or c.shape[1:] != (self.num_vertebrae, 3):
            raise ValueError(f"training centroids must be (N, {self.num_vertebrae}, 3), got {c.shape}")
        means, covs = fit_offset_gaussians(c, min_sigma_vox)
        device = self.kernels.device
        kernels = peak_preserving(gaussian_kernels(means, covs, stride), stride, source_sigma_vox)
        self._set_kernels(kernels.to(device))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Kernel size is only known after fitting: take the checkpoint's.
        key = prefix + "kernels"
        if key in state_dict and state_dict[key].shape != self.kernels.shape:
            self._set_kernels(torch.empty_like(state_dict[key], device=self.kernels.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _messages(self, shape: tuple[int, int, int], dtype: torch.dtype) -> _ChainMessages:
        # Kernel spectra depend on the volume shape only: reuse them across cases of one shape, unless the
        # kernels are being trained (autograd needs the graph; an optimizer step bumps ``_version``).
        if torch.is_grad_enabled() and self.kernels.requires_grad:
            return _ChainMessages(self.kernels.to(dtype), shape)
        key = (shape, dtype, self.kernels.device, self.kernels.data_ptr(), self.kernels._version)
        if getattr(self, "_cache_key", None) != key:
            self._cache_key, self._cache = key, _ChainMessages(self.kernels.detach().to(dtype), shape)
        return self._cache

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            raise RuntimeError("message-passing kernels are not fitted: call fit_shape_prior(train_centroids_vox) first")
        if maps.ndim != 5 or maps.shape[1] != self.num_vertebrae:
            raise ValueError(f"expected maps (B, {self.num_vertebrae}, D, H, W), got {tuple(maps.shape)}")
        messages = self._messages(tuple(maps.shape[2:]), maps.dtype)
        inv_degree = self.inv_degree.to(maps.dtype)[:, None, None, None]  # mean over the neighbours
        out = []
        for p in maps:
            for _ in range(self.iterations):
                p = (self.alpha * inv_degree * messages(p) + p) / (1.0 + self.alpha)
            out.append(p)
        return torch.stack(out)
