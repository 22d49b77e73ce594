"""Training/evaluation samples from cached cases: whole volumes or random crops, augmentation, collate.

Every sample is a dict following the batch contract in ``methods/base.py`` (before collation):
    image (1, D, H, W) float32 | centroids_vox (K, 3) float32, 0 where absent | present (K,) bool
    spacing_mm (3,) float32 | case_id str | crop_origin_vox (3,) int64 (crops) | heatmaps (K, D, H, W) (volume
    mode with a sigma).
Volumes are padded at the high end of each axis (so voxel coordinates do not move) with the normalised air
value. Crops may hang over the volume border (origin negative or beyond), the overhang filled with air.
Random draws use torch's global RNG, which Lightning's ``seed_everything`` and DataLoader workers seed per
worker and epoch, so crops differ across epochs and workers yet repeat for a fixed seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset, DistributedSampler

from spinebench.datamodules.preprocess import AIR_VALUE, CacheEntry
from spinebench.datamodules.targets import gaussian_heatmaps


@dataclass(frozen=True)
class Augmentation:
    """Random spatial + intensity augmentation; zero ranges switch a part off."""

    rotation_deg: float = 10.0  # max absolute rotation about each axis
    scale_range: float = 0.1  # isotropic scale drawn from [1 - r, 1 + r]
    intensity_scale: float = 0.1  # z' = z * (1 + u) + v, u, v ~ U(-s, s) and U(-shift, shift)
    intensity_shift: float = 0.1

    def draw_matrix(self, rng: np.random.Generator) -> np.ndarray:
        """(3, 3) output->input voxel map: rotation about the three axes and an isotropic scale."""
        a = np.deg2rad(rng.uniform(-self.rotation_deg, self.rotation_deg, size=3))
        m = np.eye(3)
        for axis, angle in enumerate(a):
            i, j = [k for k in range(3) if k != axis]
            r = np.eye(3)
            r[i, i] = r[j, j] = np.cos(angle)
            r[i, j], r[j, i] = -np.sin(angle), np.sin(angle)
            m = r @ m
        return m * rng.uniform(1 - self.scale_range, 1 + self.scale_range)


def torch_rng() -> np.random.Generator:
    """A numpy Generator seeded from torch's RNG (per-worker / per-epoch seeded by the DataLoader)."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))


def extract_crop(volume: np.ndarray, origin_vox: np.ndarray, size: tuple[int, int, int], fill: float) -> np.ndarray:
    """``volume[origin : origin + size]`` with the part outside the volume filled with ``fill``."""
    out = np.full(size, fill, dtype=np.float32)
    src, dst = [], []
    for a in range(3):
        lo, hi = int(origin_vox[a]), int(origin_vox[a]) + size[a]
        s0, s1 = max(lo, 0), min(hi, volume.shape[a])
        if s1 <= s0:
            return out
        src.append(slice(s0, s1))
        dst.append(slice(s0 - lo, s1 - lo))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def sample_crop_origin(
    shape, centroids_vox: np.ndarray, crop_size, rng: np.random.Generator, focus_prob: float = 0.9
) -> np.ndarray:
    """Crop origin (3,) int64. With probability ``focus_prob`` the crop contains a randomly chosen annotated
    vertebra at a random position at least a quarter crop from the crop border; otherwise it is uniform over
    all origins that keep the crop inside the volume (or centred when the volume is smaller)."""
    shape, size = np.asarray(shape), np.asarray(crop_size)
    valid = np.flatnonzero(np.all(np.isfinite(centroids_vox), axis=1))
    low = np.minimum(0, shape - size)  # volume smaller than the crop: origins may be negative
    high = np.maximum(0, shape - size)
    if valid.size and rng.random() < focus_prob:
        c = centroids_vox[rng.choice(valid)]
        margin = size // 4
        lo = np.ceil(c - (size - 1 - margin)).astype(int)
        hi = np.maximum(lo, np.floor(c - margin).astype(int))
        # prefer origins that also keep the crop inside the volume; else stay as close to it as possible
        a, b = np.maximum(lo, low), np.minimum(hi, high)
        empty = a > b
        a[empty] = np.where(hi < low, hi, lo)[empty]
        b[empty] = a[empty]
        return rng.integers(a, b + 1).astype(np.int64)
    small = shape < size
    origin = rng.integers(low, high + 1)
    origin[small] = ((shape - size) // 2)[small]
    return origin.astype(np.int64)


def apply_spatial(
    image: np.ndarray, centroids_vox: np.ndarray, matrix: np.ndarray, fill: float
) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``image`` by the output->input voxel map ``matrix`` about the image centre; move centroids
    (K, 3, NaN absent) with it. Centroids that leave the image become NaN."""
    centre = (np.asarray(image.shape, dtype=np.float64) - 1) / 2
    offset = centre - matrix @ centre
    out = ndimage.affine_transform(image, matrix, offset=offset, order=1, mode="constant", cval=fill)
    # input = M @ output + offset  =>  output = M^-1 (input - offset)
    moved = (np.linalg.inv(matrix) @ (centroids_vox - offset).T).T
    inside = np.all((moved >= -0.5) & (moved <= np.asarray(image.shape) - 0.5), axis=1)
    moved[~inside] = np.nan
    return out.astype(np.float32, copy=False), moved


def _to_sample(image, centroids_vox, entry: CacheEntry, **extra) -> dict:
    present = np.all(np.isfinite(centroids_vox), axis=1)
    sample = {
        "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None],
        "centroids_vox": torch.from_numpy(np.where(present[:, None], centroids_vox, 0.0).astype(np.float32)),
        "present": torch.from_numpy(present),
        "spacing_mm": torch.as_tensor(entry.geometry.spacing_mm, dtype=torch.float32),
        "case_id": entry.case_id,
    }
    sample.update(extra)
    return sample


def pad_to_multiple(image: np.ndarray, multiple: int, fill: float) -> np.ndarray:
    if multiple <= 1:
        return image
    target = [-(-n // multiple) * multiple for n in image.shape]
    return np.pad(image, [(0, t - n) for t, n in zip(target, image.shape)], constant_values=fill)


class VolumeDataset(Dataset):
    """Whole preprocessed volumes. Evaluation: ``pad_multiple=1``, no heatmaps, no augmentation."""

    def __init__(
        self,
        entries: list[CacheEntry],
        label_names: tuple[str, ...],
        pad_multiple: int = 1,
        heatmap_sigma_vox: float | None = None,
        augmentation: Augmentation | None = None,
    ) -> None:
        self.entries, self.label_names = list(entries), tuple(label_names)
        self.pad_multiple, self.heatmap_sigma_vox, self.augmentation = pad_multiple, heatmap_sigma_vox, augmentation

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        image = np.array(entry.load_array(), dtype=np.float32)  # a writable copy, not the memmap
        centroids = entry.centroids_vox(self.label_names)
        if self.augmentation is not None:
            image, centroids = _augment(image, centroids, self.augmentation, torch_rng())
        image = pad_to_multiple(image, self.pad_multiple, AIR_VALUE)
        sample = _to_sample(image, centroids, entry)
        if self.heatmap_sigma_vox:
            # absent channels stay zero: compute only the present ones (a volume shows ~5-20 of K)
            heatmaps = torch.zeros((len(self.label_names),) + image.shape, dtype=torch.float32)
            idx = torch.nonzero(sample["present"]).flatten()
            if idx.numel():
                heatmaps[idx] = gaussian_heatmaps(sample["centroids_vox"][idx][None],
                                                  torch.ones(1, idx.numel(), dtype=torch.bool),
                                                  image.shape, self.heatmap_sigma_vox)[0]
            sample["heatmaps"] = heatmaps
        return sample


class CropDataset(Dataset):
    """Random crops; ``crops_per_case`` crops per case and epoch (index i -> case i % n_cases)."""

    def __init__(
        self,
        entries: list[CacheEntry],
        label_names: tuple[str, ...],
        crop_size_vox: tuple[int, int, int] = (104, 80, 80),
        crops_per_case: int = 1,
        focus_prob: float = 0.9,
        augmentation: Augmentation | None = None,
    ) -> None:
        if len(crop_size_vox) != 3 or min(crop_size_vox) < 1:
            raise ValueError(f"crop_size_vox must be three positive sizes, got {crop_size_vox}")
        self.entries, self.label_names = list(entries), tuple(label_names)
        self.crop_size_vox = tuple(int(s) for s in crop_size_vox)
        self.crops_per_case, self.focus_prob, self.augmentation = crops_per_case, focus_prob, augmentation
        self._centroids = [e.centroids_vox(self.label_names) for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries) * self.crops_per_case

    def __getitem__(self, index: int) -> dict:
        case = index % len(self.entries)
        entry, centroids = self.entries[case], self._centroids[case]
        rng = torch_rng()
        volume = entry.load_array()  # memory-mapped: only the crop's slab is read
        origin = sample_crop_origin(volume.shape, centroids, self.crop_size_vox, rng, self.focus_prob)
        crop = extract_crop(volume, origin, self.crop_size_vox, AIR_VALUE)
        local = centroids - origin
        inside = np.all((local >= -0.5) & (local <= np.asarray(self.crop_size_vox) - 0.5), axis=1)
        local[~inside] = np.nan
        if self.augmentation is not None:
            crop, local = _augment(crop, local, self.augmentation, rng)
        return _to_sample(crop, local, entry, crop_origin_vox=torch.from_numpy(origin))


def _augment(image, centroids, aug: Augmentation, rng: np.random.Generator):
    if aug.rotation_deg > 0 or aug.scale_range > 0:
        image, centroids = apply_spatial(image, centroids, aug.draw_matrix(rng), AIR_VALUE)
    if aug.intensity_scale > 0 or aug.intensity_shift > 0:
        scale = 1 + rng.uniform(-aug.intensity_scale, aug.intensity_scale)
        shift = rng.uniform(-aug.intensity_shift, aug.intensity_shift)
        image = (image * scale + shift).astype(np.float32)
    return image, centroids


def pad_collate(samples: list[dict]) -> dict:
    """Stack samples, padding images (air) and heatmaps (0) at the high end to the batch's largest shape."""
    shape = np.max([s["image"].shape[1:] for s in samples], axis=0)
    batch: dict = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key == "case_id":
            batch[key] = values
        elif key in ("image", "heatmaps"):
            fill = AIR_VALUE if key == "image" else 0.0
            padded = [_pad_tensor(v, shape, fill) for v in values]
            batch[key] = padded[0][None] if len(padded) == 1 else torch.stack(padded)  # B = 1: a view, no copy
        else:
            batch[key] = torch.stack(values)
    return batch


def _pad_tensor(t: torch.Tensor, shape, fill: float) -> torch.Tensor:
    pad = []
    for a in (2, 1, 0):  # F.pad lists the last axis first
        pad += [0, int(shape[a]) - t.shape[-3 + a]]
    if not any(pad):
        return t
    return torch.nn.functional.pad(t, pad, value=fill)


class ShardedEvalSampler(DistributedSampler):
    """Every index on exactly one rank (``rank::num_replicas``), in order, without padding duplicates.

    With ``num_replicas=None`` the rank and world size are read from ``torch.distributed`` when iterated, so a
    loader built before the process group starts still shards correctly.
    """

    def __init__(self, dataset, num_replicas: int | None = None, rank: int | None = None) -> None:
        if num_replicas is not None and not 0 <= (rank or 0) < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        # not super().__init__: that requires an initialised process group
        self.dataset, self._replicas, self._rank = dataset, num_replicas, rank
        self.epoch, self.shuffle, self.seed, self.drop_last = 0, False, 0, False

    def _world(self) -> tuple[int, int]:
        if self._replicas is not None:
            return self._replicas, self._rank or 0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0

    @property
    def num_replicas(self) -> int:
        return self._world()[0]

    @property
    def rank(self) -> int:
        return self._world()[1]

    @property
    def num_samples(self) -> int:
        replicas, rank = self._world()
        return len(range(rank, len(self.dataset), replicas))

    @property
    def total_size(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        replicas, rank = self._world()
        return iter(range(rank, len(self.dataset), replicas))

    def __len__(self) -> int:
        return self.num_samples
