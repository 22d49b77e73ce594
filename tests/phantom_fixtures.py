"""Phantom settings shared by the phantom tests: a plain 4 mm case each test switches difficulties on in."""

from __future__ import annotations

import numpy as np

from spinebench.datamodules.phantom import PhantomConfig

# 4 mm and no random difficulties, uniform cancellous bone: each test switches on only what it checks.
PLAIN = dict(spacing_mm=4.0, limited_fov_rate=0.0, scoliosis_rate=0.0, kyphosis_rate=0.0, metal_rate=0.0,
             anisotropic_rate=0.0, noise_hu=(10.0, 10.0), texture=False)


def plain(**overrides) -> PhantomConfig:
    return PhantomConfig(**{**PLAIN, **overrides})


def xyz(case) -> np.ndarray:
    return np.stack([case.centroids_mm[n] for n in case.centroids_mm])
