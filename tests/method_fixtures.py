"""Tiny cases and batches for method tests, built to honour each method's ``data_requirements()``.

``tiny_case`` gives one small volume with a few vertebra-like blobs along axis 0 (the vertical axis, index
growing toward superior, so lower levels sit at smaller indices). ``tiny_batch`` turns cases into a training
batch following the contract in ``methods/base.py``: whole volumes padded to ``pad_multiple`` (+ Gaussian
``heatmaps`` when asked) in volume mode, or crops of ``crop_size_vox`` with ``crop_origin_vox`` and
crop-local centroids in crop mode. ``tiny_method`` builds a registered method with its ``tiny_overrides``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from datamodules.targets import gaussian_heatmaps
from methods import create_method, get_method_spec

TINY_SHAPE = (45, 37, 35)  # deliberately not a multiple of 2, 4, 8 or 16
NUM_VERTEBRAE = 26


def tiny_method(name: str, **overrides):
    spec = get_method_spec(name)
    torch.manual_seed(0)
    return create_method(name, **{**getattr(spec.module_cls, "tiny_overrides", {}), **overrides})


def tiny_case(seed: int = 0, shape: tuple[int, int, int] = TINY_SHAPE, first_level: int = 18, num_levels: int = 4):
    """``(image (1, 1, D, H, W) float32, centroids_vox (K, 3) float32 (0 where absent), present (K,) bool)``.

    Levels ``first_level …`` descend along axis 0 about 9 voxels apart (18 mm at 2 mm), with a little
    left-right/posterior jitter; each is a bright ellipsoidal blob on a noisy background, z-scored.
    """
    rng = np.random.default_rng(seed)
    d, h, w = shape
    centroids = np.zeros((NUM_VERTEBRAE, 3), dtype=np.float32)
    present = np.zeros(NUM_VERTEBRAE, dtype=bool)
    top = d - 6 - rng.uniform(0, 3)
    for n in range(num_levels):
        level = first_level + n
        centroids[level] = (top - 9.0 * n, h / 2 + rng.normal(0, 1.0), w / 2 + rng.normal(0, 1.0))
        present[level] = True
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).astype(np.float32)
    image = rng.normal(0.0, 0.3, size=shape).astype(np.float32)
    for c in centroids[present]:
        r2 = (((grid - c) / np.array([3.0, 4.0, 4.0])) ** 2).sum(-1)
        image += 2.0 * np.exp(-r2)
    image = (image - image.mean()) / image.std()
    return torch.from_numpy(image)[None, None], torch.from_numpy(centroids), torch.from_numpy(present)


def train_centroids(num_cases: int = 6) -> np.ndarray:
    """``(N, K, 3)`` training centroids, NaN where absent, from ``tiny_case`` seeds (for fit_shape_prior)."""
    out = np.full((num_cases, NUM_VERTEBRAE, 3), np.nan)
    for seed in range(num_cases):
        _, c, p = tiny_case(seed=100 + seed, first_level=16 + seed % 4)
        out[seed, p.numpy()] = c.numpy()[p.numpy()]
    return out


def _crop(image, centroids, present, crop_size, rng):
    """A crop of ``crop_size`` (volume padded with its minimum when smaller) around a random present level."""
    size = np.asarray(crop_size)
    pad = np.maximum(size - np.asarray(image.shape[-3:]), 0)
    if pad.any():
        image = F.pad(image, (0, int(pad[2]), 0, int(pad[1]), 0, int(pad[0])), value=float(image.min()))
    shape = np.asarray(image.shape[-3:])
    centre = centroids[rng.choice(np.flatnonzero(present.numpy()))].numpy()
    origin = np.clip(np.round(centre - size / 2).astype(np.int64), 0, shape - size)
    sl = tuple(slice(int(o), int(o + s)) for o, s in zip(origin, size))
    local = centroids - torch.from_numpy(origin).float()
    inside = present & ((local >= 0) & (local <= torch.from_numpy(size - 1).float())).all(dim=1)
    return image[(..., *sl)], torch.where(inside[:, None], local, 0.0), inside, torch.from_numpy(origin)


def tiny_batch(method, seeds: tuple[int, ...] = (0,)) -> dict:
    """A training batch for ``method`` honouring its ``data_requirements()``."""
    req = method.data_requirements()
    rng = np.random.default_rng(sum(seeds))
    images, cents, pres, origins = [], [], [], []
    for seed in seeds:
        image, centroids, present = tiny_case(seed)
        if req.sample_mode == "crop":
            image, centroids, present, origin = _crop(image, centroids, present, req.crop_size_vox, rng)
            origins.append(origin)
        else:
            extra = [(-s) % req.pad_multiple for s in image.shape[-3:]]
            image = F.pad(image, (0, extra[2], 0, extra[1], 0, extra[0]), value=float(image.min()))
        images.append(image[0])
        cents.append(centroids)
        pres.append(present)
    batch = {
        "image": torch.stack(images),
        "centroids_vox": torch.stack(cents),
        "present": torch.stack(pres),
        "spacing_mm": torch.full((len(seeds), 3), 2.0),
        "case_id": [f"tiny{seed}" for seed in seeds],
    }
    if req.sample_mode == "crop":
        batch["crop_origin_vox"] = torch.stack(origins)
    elif req.heatmap_sigma_vox is not None:
        batch["heatmaps"] = gaussian_heatmaps(
            batch["centroids_vox"], batch["present"], tuple(batch["image"].shape[-3:]), req.heatmap_sigma_vox
        )
    return batch
