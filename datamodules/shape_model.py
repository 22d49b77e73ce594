"""The statistical spine-shape model behind the phantom: sample realistic centroid curves C1..S2 (LPS mm).

The model (``datamodules/data/spine_shape_model.npz``, fitted by ``tools/fit_shape_model.py`` from CSI-2014 and
VerSe centroid tables; attribution in ``datamodules/data/SHAPE_MODEL.md``) holds the mean of the 25 offset
vectors between consecutive vertebrae, a rank-r PCA over the offset sequences, and the residual spread per offset.
A sample is ``mean + sum_i z_i * std_i * component_i + residual``, accumulated from C1 downwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from spinebench.datamodules.labels import DEFAULT_NAMES

MODEL_PATH = Path(__file__).resolve().parent / "data" / "spine_shape_model.npz"


@dataclass(frozen=True, eq=False)
class SpineShapeModel:
    level_names: tuple[str, ...]  # C1..S2 (26)
    mean_offsets_mm: np.ndarray  # (25, 3) LPS mm, offset from level k to level k+1 (goes down: z < 0)
    components: np.ndarray  # (r, 25, 3) orthonormal over the flattened 75 entries
    component_std_mm: np.ndarray  # (r,)
    residual_std_mm: np.ndarray  # (25, 3)
    transitional_mean_mm: dict[str, np.ndarray]  # "T12_to_T13", "T13_to_L1", "L5_to_L6" -> (3,)
    transitional_std_mm: dict[str, np.ndarray]

    @property
    def rank(self) -> int:
        return len(self.component_std_mm)

    def sample_offsets(self, rng: np.random.Generator, mode_scale: float = 1.0, residual_scale: float = 1.0) -> np.ndarray:
        """(25, 3) offsets between consecutive levels C1->C2 ... S1->S2, LPS mm."""
        z = rng.standard_normal(self.rank)
        z = np.clip(z, -2.5, 2.5)  # no extreme postures from the Gaussian tails
        eps = np.clip(rng.standard_normal(self.mean_offsets_mm.shape), -2.5, 2.5)
        coeff = z * self.component_std_mm * mode_scale
        # An explicit sum rather than a BLAS product: element-wise IEEE arithmetic is identical on every machine.
        offsets = self.mean_offsets_mm.copy()
        for c, comp in zip(coeff, self.components):
            offsets = offsets + c * comp
        offsets = offsets + eps * self.residual_std_mm * residual_scale
        # Keep every step going down the body by at least half the mean drop.
        offsets[:, 2] = np.minimum(offsets[:, 2], 0.5 * self.mean_offsets_mm[:, 2])
        return offsets

    def sample_centroids(
        self,
        rng: np.random.Generator,
        transitional: str | None = None,
        mode_scale: float = 1.0,
        residual_scale: float = 1.0,
    ) -> dict[str, np.ndarray]:
        """Centroids {name: (3,) LPS mm} of a whole spine, C1 at the origin, in anatomical order.

        ``transitional``: None, "T13" (an extra thoracic level between T12 and L1) or "L6" (an extra lumbar
        level between L5 and S1).
        """
        offsets = list(self.sample_offsets(rng, mode_scale, residual_scale))
        names = list(self.level_names)
        if transitional is not None:
            if transitional not in ("T13", "L6"):
                raise ValueError(f"transitional must be None, 'T13' or 'L6', got {transitional!r}")
            key, after = ("T12_to_T13", "T12") if transitional == "T13" else ("L5_to_L6", "L5")
            extra = self.transitional_mean_mm[key] + np.clip(rng.standard_normal(3), -2, 2) * np.minimum(
                self.transitional_std_mm[key], 3.0
            )
            extra[2] = min(extra[2], -15.0)
            k = names.index(after)
            # The extra level inherits the next step's offset (T12->L1 or L5->S1) below it.
            offsets.insert(k, extra)
            names.insert(k + 1, transitional)
        points = np.concatenate([np.zeros((1, 3)), np.cumsum(np.asarray(offsets), axis=0)])
        return {n: p for n, p in zip(names, points)}


@lru_cache(maxsize=1)
def load_shape_model(path: str | None = None) -> SpineShapeModel:
    with np.load(path or MODEL_PATH) as data:
        names = tuple(str(n) for n in data["level_names"])
        if names != DEFAULT_NAMES:
            raise ValueError(f"{path or MODEL_PATH}: level names {names} are not C1..S2")
        keys = ("T12_to_T13", "T13_to_L1", "L5_to_L6")
        return SpineShapeModel(
            level_names=names,
            mean_offsets_mm=data["mean_offsets_mm"].astype(np.float64),
            components=data["components"].astype(np.float64),
            component_std_mm=data["component_std_mm"].astype(np.float64),
            residual_std_mm=data["residual_std_mm"].astype(np.float64),
            transitional_mean_mm={k: data[f"transitional_{k}_mean_mm"].astype(np.float64) for k in keys},
            transitional_std_mm={k: data[f"transitional_{k}_std_mm"].astype(np.float64) for k in keys},
        )
