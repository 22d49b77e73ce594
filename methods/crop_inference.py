"""Whole-CT inference for crop-trained networks: tile, predict per crop, cluster the per-crop coordinates.

Rule (Qin et al., test phase; parameters are fields of the method's config):

1. **Tiling.** Crops of ``crop_size_vox`` are laid over the volume so that neighbours overlap by at least
   ``overlap`` (fraction of the crop size) along each axis; the first crop starts at 0, the last ends at
   the volume's edge, the others are evenly spaced in between. A volume smaller than a crop along an axis
   is padded at its far end with the volume's minimum (air after clipping and z-scoring); padding never
   shifts voxel coordinates.
2. **Votes.** A crop votes for vertebra k with its regressed coordinate (crop-local + crop origin) when its
   classifier score is at least ``presence_threshold``; without a classifier (``resml_loc``, the paper's
   "localization network" row) when the coordinate lies inside the crop by at least ``border_margin_vox``
   on every side. Soft-argmax coordinates always lie inside the crop and the localization loss never
   supervises absent vertebrae, so this rule accepts many false votes: that is why the paper's
   localization-only row identifies far fewer vertebrae. Votes that land in padding are dropped.
3. **Clustering.** The votes of vertebra k are clustered with scikit-learn K-means into
   ``min(n_clusters, distinct votes)`` clusters. The dominant cluster is the one with most votes (ties: the
   higher summed score). Clusters whose centres lie within ``merge_radius_vox`` of the dominant centre are
   merged into it (K-means splits an agreeing group when asked for more clusters than there are modes).
   The centroid is the mean of the merged members. A single vote is its own cluster, and votes that all lie
   within ``merge_radius_vox`` of their mean form one cluster without running K-means.
4. **Presence and score.** The *agreement* of k is the share of the crops containing its centroid that are
   members of its dominant cluster. k is present when the cluster has at least ``min_support`` votes and an
   agreement of at least ``min_agreement``: a vertebra at the edge seen by a single crop (agreement 1) is
   kept, a false positive of one crop among the eight that overlap there (agreement 1/8) is not. Score with a
   classifier: the mean classifier score over the crops containing the centroid; without a classifier: the
   agreement. A vertebra without votes keeps a best guess: the coordinate and score of its highest-scoring
   crop (score 0 without a classifier).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from spinebench.methods.base import VolumePrediction

# crops (n, 1, d, h, w) -> (coordinates (n, K, 3) crop-local voxels, classifier scores (n, K) or None)
CropPredictor = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def tile_origins(volume_shape, crop_size_vox, overlap: float = 0.5) -> np.ndarray:
    """Crop origins ``(N, 3)`` int64 covering ``volume_shape`` (axes shorter than the crop get origin 0)."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    per_axis = []
    for size, crop in zip(volume_shape, crop_size_vox, strict=True):
        if size <= crop:
            per_axis.append(np.zeros(1, dtype=np.int64))
            continue
        stride = max(1, int(math.floor(crop * (1.0 - overlap))))
        n = math.ceil((size - crop) / stride) + 1
        per_axis.append(np.unique(np.round(np.linspace(0, size - crop, n)).astype(np.int64)))
    grid = np.meshgrid(*per_axis, indexing="ij")
    return np.stack([g.ravel() for g in grid], axis=1)


def pad_to_crop(image: torch.Tensor, crop_size_vox) -> torch.Tensor:
    """Pad a ``(1, 1, D, H, W)`` image at the far end of each axis up to at least ``crop_size_vox``."""
    pads = [max(0, c - s) for s, c in zip(image.shape[-3:], crop_size_vox, strict=True)]
    if not any(pads):
        return image
    # F.pad takes (w_lo, w_hi, h_lo, h_hi, d_lo, d_hi)
    return torch.nn.functional.pad(image, (0, pads[2], 0, pads[1], 0, pads[0]), value=float(image.min()))


@dataclass
class CropOutputs:
    """Per-crop network answers of one volume."""

    origins_vox: np.ndarray  # (N, 3) int64, crop origins in the (padded) volume
    coords_vox: np.ndarray  # (N, K, 3) float64, crop-local regressed coordinates
    scores: np.ndarray | None  # (N, K) classifier probabilities, None without a classifier


def run_crops(
    image: torch.Tensor, predictor: CropPredictor, crop_size_vox, overlap: float = 0.5, batch_size: int = 4
) -> CropOutputs:
    """Tile ``image`` ``(1, 1, D, H, W)`` and run ``predictor`` on batches of ``batch_size`` crops."""
    if image.dim() != 5 or image.shape[:2] != (1, 1):
        raise ValueError(f"expected a (1, 1, D, H, W) image, got shape {tuple(image.shape)}")
    padded = pad_to_crop(image, crop_size_vox)
    origins = tile_origins(padded.shape[-3:], crop_size_vox, overlap)
    cd, ch, cw = crop_size_vox
    coords, scores = [], []
    with torch.no_grad():
        for start in range(0, len(origins), batch_size):
            crops = torch.cat(
                [padded[..., d : d + cd, h : h + ch, w : w + cw] for d, h, w in origins[start : start + batch_size]]
            )
            c, s = predictor(crops)
            coords.append(c.detach().double().cpu().numpy())
            if s is not None:
                scores.append(s.detach().double().cpu().numpy())
    return CropOutputs(origins, np.concatenate(coords), np.concatenate(scores) if scores else None)


def crop_votes(
    outputs: CropOutputs,
    crop_size_vox,
    volume_shape,
    presence_threshold: float = 0.5,
    border_margin_vox: float = 2.0,
) -> np.ndarray:
    """``(N, K)`` bool: which crops vote for which vertebra (rule step 2)."""
    world = outputs.coords_vox + outputs.origins_vox[:, None, :]
    in_volume = np.all((world >= -0.5) & (world <= np.asarray(volume_shape) - 0.5), axis=-1)
    if outputs.scores is not None:
        return (outputs.scores >= presence_threshold) & in_volume
    size = np.asarray(crop_size_vox, dtype=np.float64)
    local = outputs.coords_vox
    inside = np.all((local >= border_margin_vox) & (local <= size - 1.0 - border_margin_vox), axis=-1)
    return inside & in_volume


def dominant_cluster(
    points_vox: np.ndarray, weights: np.ndarray, n_clusters: int = 3, merge_radius_vox: float = 5.0, seed: int = 0
) -> np.ndarray:
    """Bool mask over ``points_vox`` ``(m, 3)``: the members of the dominant (merged) K-means cluster."""
    m = len(points_vox)
    if m == 0:
        return np.zeros(0, dtype=bool)
    k = min(n_clusters, len(np.unique(np.round(points_vox, 6), axis=0)))
    if k <= 1 or np.linalg.norm(points_vox - points_vox.mean(0), axis=1).max() <= merge_radius_vox:
        return np.ones(m, dtype=bool)  # one vote, or all votes agree: a single cluster
    km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(points_vox)
    labels, centres = km.labels_, km.cluster_centers_
    counts = np.bincount(labels, minlength=k)
    mass = np.bincount(labels, weights=weights, minlength=k)
    best = max(range(k), key=lambda c: (counts[c], mass[c], -c))
    near = np.linalg.norm(centres - centres[best], axis=1) <= merge_radius_vox
    return near[labels]


def aggregate_crops(
    outputs: CropOutputs,
    votes: np.ndarray,
    crop_size_vox,
    n_clusters: int = 3,
    merge_radius_vox: float = 5.0,
    min_support: int = 1,
    min_agreement: float = 0.25,
) -> VolumePrediction:
    """Cluster the votes of every vertebra into one ``VolumePrediction`` (rule steps 3 and 4)."""
    world = outputs.coords_vox + outputs.origins_vox[:, None, :]
    n_crops, k = votes.shape
    scores = outputs.scores if outputs.scores is not None else votes.astype(np.float64)
    centroids = np.zeros((k, 3))
    present = np.zeros(k, dtype=bool)
    out_scores = np.zeros(k)
    size = np.asarray(crop_size_vox)
    # K-means on a few dozen points: OpenMP threads cost far more than they save (10x slower on a busy
    # 2-core CPU); the limit is set once, entering it costs ~20 ms
    with threadpool_limits(limits=1, user_api="openmp"):
        members_of = [
            np.flatnonzero(votes[:, j])[
                dominant_cluster(world[votes[:, j], j], scores[votes[:, j], j], n_clusters, merge_radius_vox)
            ]
            for j in range(k)
        ]
    for j in range(k):
        members = members_of[j]
        if len(members) == 0:
            best = int(np.argmax(scores[:, j])) if n_crops else 0
            centroids[j] = world[best, j]
            out_scores[j] = float(scores[best, j]) if outputs.scores is not None else 0.0
            continue
        centroids[j] = world[members, j].mean(axis=0)
        covering = np.all(
            (outputs.origins_vox <= centroids[j] + 0.5) & (centroids[j] - 0.5 <= outputs.origins_vox + size - 1),
            axis=1,
        )
        agreement = min(1.0, len(members) / max(1, int(covering.sum())))
        present[j] = len(members) >= min_support and agreement >= min_agreement
        covering[members] = True  # a member's crop counts even if the cluster mean falls just outside it
        out_scores[j] = float(scores[covering, j].mean()) if outputs.scores is not None else agreement
    return VolumePrediction(centroids, present, out_scores)


def predict_volume_tiled(
    image: torch.Tensor,
    predictor: CropPredictor,
    crop_size_vox,
    *,
    overlap: float = 0.5,
    batch_size: int = 4,
    presence_threshold: float = 0.5,
    border_margin_vox: float = 2.0,
    n_clusters: int = 3,
    merge_radius_vox: float = 5.0,
    min_support: int = 1,
    min_agreement: float = 0.25,
) -> VolumePrediction:
    """The whole rule on one ``(1, 1, D, H, W)`` volume; coordinates in voxels of that (unpadded) volume."""
    outputs = run_crops(image, predictor, crop_size_vox, overlap, batch_size)
    votes = crop_votes(outputs, crop_size_vox, image.shape[-3:], presence_threshold, border_margin_vox)
    return aggregate_crops(outputs, votes, crop_size_vox, n_clusters, merge_radius_vox, min_support, min_agreement)
