"""The contract every method implements: what it needs from the data and what it predicts.

Batches (dicts, see ``datamodules`` for the producer):
    image            (B, 1, D, H, W) float32, preprocessed (isotropic, z-scored)
    centroids_vox    (B, K, 3) float32, true centroids in voxel coords of ``image`` (0 where absent)
    present          (B, K) bool, which vertebrae are annotated (and, for crops, inside the crop)
    spacing_mm       (B, 3) float32
    case_id          list[str]
    crop_origin_vox  (B, 3) int64, voxel offset of a crop in its preprocessed volume (crop mode only)
    heatmaps         (B, K, D, H, W) float32 Gaussian targets (volume mode, when the data provides them)

Validation, test and predict batches are always whole, unpadded volumes with B = 1. A method's answer for
a volume is a ``VolumePrediction`` in voxel coordinates of that volume; the runner maps it to world mm.
Methods never see files, world coordinates or metrics. A vertebra is reported present only where its centroid
lies inside the scanned volume (``VertebraMethod.predict_scan``): every data source annotates only those.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar, Literal

import lightning as L
import numpy as np
import torch


@dataclass(frozen=True)
class DataRequirements:
    """What a method asks of the datamodule for training."""

    sample_mode: Literal["volume", "crop"]
    crop_size_vox: tuple[int, int, int] | None = None  # crop mode only, (D, H, W)
    pad_multiple: int = 1  # volume mode: spatial sizes padded up to a multiple of this
    heatmap_sigma_vox: float | None = None  # volume mode: include Gaussian ``heatmaps`` with this sigma


@dataclass
class VolumePrediction:
    """K centroids in voxel coordinates of the predicted volume, with presence flags and scores."""

    centroids_vox: np.ndarray  # (K, 3) float64; rows of absent vertebrae are still filled (best guess)
    present: np.ndarray  # (K,) bool
    scores: np.ndarray  # (K,) float64 in [0, 1]

    def __post_init__(self) -> None:
        self.centroids_vox = np.asarray(self.centroids_vox, dtype=np.float64)
        self.present = np.asarray(self.present, dtype=bool)
        self.scores = np.asarray(self.scores, dtype=np.float64)
        k = self.present.shape[0]
        if self.centroids_vox.shape != (k, 3) or self.scores.shape != (k,):
            raise ValueError(
                f"prediction shapes disagree: centroids {self.centroids_vox.shape}, "
                f"present {self.present.shape}, scores {self.scores.shape}"
            )

    def inside(self, shape: tuple[int, ...]) -> "VolumePrediction":
        """This prediction with vertebrae whose centroid lies outside a volume of ``shape`` (D, H, W) voxels, i.e.
        beyond its voxel centres ± half a voxel, marked absent (coordinates and scores kept)."""
        upper = np.asarray(shape[-3:], dtype=np.float64) - 0.5
        within = np.all((self.centroids_vox >= -0.5) & (self.centroids_vox <= upper), axis=1)
        return VolumePrediction(self.centroids_vox, self.present & within, self.scores)


class VertebraMethod(L.LightningModule):
    """Base LightningModule of every method family.

    Subclasses implement ``training_loss(batch)`` and ``predict_volume(image)`` and declare their
    ``data_requirements()``. Data-derived settings (shape priors, message-passing kernels) are computed
    once in ``fit_shape_prior`` from the training centroids and kept in buffers, so they are saved in
    the checkpoint.
    """

    family: ClassVar[str] = "base"
    # The config dataclass; ``register_method`` fills it in when a class leaves it unset. It lets
    # ``load_from_checkpoint`` rebuild the module from the flat hyperparameters saved in a checkpoint.
    config_cls: ClassVar[type | None] = None
    # Config overrides that make a tiny, fast instance, used by the registry-parametrized contract tests
    # (tests/test_method_contract.py); e.g. small widths and a small crop.
    tiny_overrides: ClassVar[dict] = {}

    def __init__(self, config=None, **params) -> None:
        super().__init__()
        if config is None:
            if self.config_cls is None:
                raise TypeError(f"{type(self).__name__} needs a config (or a config_cls to build one from {params})")
            config = self.config_cls(**params)
        elif params:
            raise TypeError(f"{type(self).__name__}: pass either a config or its fields, not both")
        self.config = config
        self.save_hyperparameters(asdict(config))

    @classmethod
    def inference_only_fields(cls, config) -> frozenset[str]:
        """Config fields that change only inference, never the trained weights.

        Cells whose configs differ only in these fields (same family, seed, data and trainer) share one
        training: the runner trains the first of them and evaluates every one on its checkpoint
        (``benchmark.schedule``). Buffers that such fields switch on must be refit by ``fit_shape_prior``.
        """
        return frozenset()

    # --- what subclasses provide -------------------------------------------------------------
    def data_requirements(self) -> DataRequirements:
        raise NotImplementedError

    def training_loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """Loss terms for a training batch; must contain ``"loss"``."""
        raise NotImplementedError

    def predict_volume(self, image: torch.Tensor) -> VolumePrediction:
        """Whole-volume inference on one ``(1, 1, D, H, W)`` image of any size."""
        raise NotImplementedError

    def fit_shape_prior(self, centroids_vox: np.ndarray) -> None:
        """Learn data-derived settings from training centroids, ``(N, K, 3)`` voxel coords, NaN = absent."""

    # --- shared Lightning plumbing -----------------------------------------------------------
    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "train_centroids_vox"):
            self.fit_shape_prior(datamodule.train_centroids_vox())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        terms = self.training_loss(batch)
        batch_size = batch["image"].shape[0]
        for key, value in terms.items():
            self.log(f"train/{key}", value.detach(), batch_size=batch_size, prog_bar=key == "loss")
        return terms["loss"]

    def predict_scan(self, image: torch.Tensor) -> VolumePrediction:
        """``predict_volume`` with presence limited to the scan: a centroid outside the volume (e.g. one that the
        shape refinement placed beyond a crop's border) is not reported, since no data source annotates one there."""
        return self.predict_volume(image).inside(tuple(image.shape))

    def _predict_batch(self, batch: dict) -> list[VolumePrediction]:
        return [self.predict_scan(batch["image"][i : i + 1]) for i in range(batch["image"].shape[0])]

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return {"predictions": self._predict_batch(batch)}

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        return {"predictions": self._predict_batch(batch)}

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return {"case_id": list(batch["case_id"]), "predictions": self._predict_batch(batch)}
