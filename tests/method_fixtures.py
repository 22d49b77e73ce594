"""Tiny cases and batches for method tests, built to honour each method's ``data_requirements()``.

``tiny_case`` gives one small real phantom case (3-4 vertebrae at 4 mm, odd sizes on every axis). ``tiny_batch`` turns cases into a training
batch following the contract in ``methods/base.py``: whole volumes padded to ``pad_multiple`` (+ Gaussian
``heatmaps`` when asked) in volume mode, or crops of ``crop_size_vox`` with ``crop_origin_vox`` and
crop-local centroids in crop mode. ``tiny_method`` builds a registered method with its ``tiny_overrides``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from spinebench.datamodules.labels import get_label_set
from spinebench.datamodules.phantom import PhantomConfig, generate_case
from spinebench.datamodules.targets import gaussian_heatmaps
from spinebench.methods import create_method, get_method_spec

NUM_VERTEBRAE = 26
SMALL_SEEDS = (2, 4, 7)  # phantom seeds whose volumes are small (cervical), for fast tests
# Three vertebrae at 4 mm, no metal or thick slices: real phantom cases; SMALL_SEEDS are about 13 x 36 x 34.
TINY_PHANTOM = PhantomConfig(
    spacing_mm=4.0, fov_vertebrae=(3, 3), with_mask=False, metal_rate=0.0, anisotropic_rate=0.0
)


def tiny_method(name: str, **overrides):
    spec = get_method_spec(name)
    torch.manual_seed(0)
    return create_method(name, **{**getattr(spec.module_cls, "tiny_overrides", {}), **overrides})


@lru_cache(maxsize=32)
def _phantom(seed: int):
    case = generate_case(seed, 0, TINY_PHANTOM)
    world = case.centroids_mm.to_array(get_label_set("default"))
    present = ~np.isnan(world).any(axis=1)
    vox = np.zeros_like(world)
    vox[present] = case.geometry.world_to_vox(world[present])
    image = np.maximum(case.ct_hu.astype(np.float32), -1000.0)  # clip at air, then z-score
    image = (image - image.mean()) / image.std()
    # Odd sizes on every axis, so no volume is a multiple of any pad (the contract must hold anyway).
    image = image[tuple(slice(0, n - 1 + n % 2) for n in image.shape)]
    present &= (vox <= np.array(image.shape) - 1).all(axis=1)
    return image, np.where(present[:, None], vox, 0.0).astype(np.float32), present


def tiny_case(seed: int = 0):
    """``(image (1, 1, D, H, W) float32, centroids_vox (K, 3) float32 (0 where absent), present (K,) bool)``.

    A phantom case (``datamodules.phantom``) with 3 vertebrae at 4 mm, clipped at air and z-scored, every
    spatial size odd.
    """
    image, vox, present = _phantom(seed)
    return torch.from_numpy(image.copy())[None, None], torch.from_numpy(vox.copy()), torch.from_numpy(present.copy())


def train_centroids(num_cases: int = 6) -> np.ndarray:
    """``(N, K, 3)`` training centroids, NaN where absent, from phantom cases (for fit_shape_prior)."""
    out = np.full((num_cases, NUM_VERTEBRAE, 3), np.nan)
    for n in range(num_cases):
        _, c, p = tiny_case(seed=100 + n)
        out[n, p.numpy()] = c.numpy()[p.numpy()]
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


def tiny_batch(method, seeds: tuple[int, ...] = SMALL_SEEDS[:2]) -> dict:
    """A training batch for ``method`` honouring its ``data_requirements()``."""
    req = method.data_requirements()
    rng = np.random.default_rng(sum(seeds))
    cases = [tiny_case(seed) for seed in seeds]
    # volume mode: every image padded (high end, with its minimum) to the largest size, rounded up to pad_multiple
    target = np.max([c[0].shape[-3:] for c in cases], axis=0)
    target = target + (-target) % req.pad_multiple
    images, cents, pres, origins = [], [], [], []
    for image, centroids, present in cases:
        if req.sample_mode == "crop":
            image, centroids, present, origin = _crop(image, centroids, present, req.crop_size_vox, rng)
            origins.append(origin)
        else:
            extra = [int(t - s) for t, s in zip(target, image.shape[-3:])]
            image = F.pad(image, (0, extra[2], 0, extra[1], 0, extra[0]), value=float(image.min()))
        images.append(image[0])
        cents.append(centroids)
        pres.append(present)
    batch = {
        "image": torch.stack(images),
        "centroids_vox": torch.stack(cents),
        "present": torch.stack(pres),
        "spacing_mm": torch.full((len(seeds), 3), TINY_PHANTOM.spacing_mm),
        "case_id": [f"tiny{seed}" for seed in seeds],
    }
    if req.sample_mode == "crop":
        batch["crop_origin_vox"] = torch.stack(origins)
    elif req.heatmap_sigma_vox is not None:
        batch["heatmaps"] = gaussian_heatmaps(
            batch["centroids_vox"], batch["present"], tuple(batch["image"].shape[-3:]), req.heatmap_sigma_vox
        )
    return batch


def adam_losses(method, batch: dict, steps: int = 20, lr: float = 3e-3) -> list[float]:
    """The training loss of ``method`` over ``steps`` Adam steps on one fixed ``batch`` (its trainable parameters)."""
    optimizer = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = method.training_loss(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses
