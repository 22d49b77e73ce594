"""Whole-CT crop inference: tiling coverage, padding, the K-means voting rule, end-to-end with an oracle network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spinebench.methods.crop_inference import (
    CropOutputs,
    aggregate_crops,
    crop_votes,
    dominant_cluster,
    pad_to_crop,
    predict_volume_tiled,
    tile_origins,
)


@pytest.mark.parametrize(
    "shape, crop, overlap",
    [((160, 112, 112), (104, 80, 80), 0.5), ((37, 50, 9), (16, 16, 16), 0.25), ((16, 17, 33), (16, 16, 16), 0.0)],
)
def test_tiles_cover_a_volume_that_is_not_a_multiple_of_the_crop(shape, crop, overlap):
    origins = tile_origins(shape, crop, overlap)
    covered = np.zeros(shape, dtype=int)
    for d, h, w in origins:
        covered[d : d + crop[0], h : h + crop[1], w : w + crop[2]] += 1
    assert covered.min() >= 1
    for axis, (size, c) in enumerate(zip(shape, crop)):
        starts = np.unique(origins[:, axis])
        assert starts[0] == 0
        assert starts[-1] == max(0, size - c)  # the last crop ends at the volume's edge (or 0 when smaller)
        if len(starts) > 1:  # neighbours overlap by at least the requested fraction
            assert np.diff(starts).max() <= c * (1 - overlap)


def test_paper_crops_over_the_typical_case():
    origins = tile_origins((160, 112, 112), (104, 80, 80), 0.5)
    assert len(origins) == 3 * 2 * 2
    assert sorted(set(origins[:, 0])) == [0, 28, 56]


def test_small_volume_is_padded_with_its_minimum_at_the_far_end():
    image = torch.arange(5 * 6 * 7, dtype=torch.float32).reshape(1, 1, 5, 6, 7) + 3.0
    padded = pad_to_crop(image, (8, 6, 9))
    assert padded.shape == (1, 1, 8, 6, 9)
    assert torch.equal(padded[..., :5, :, :7], image)
    assert torch.all(padded[..., 5:, :, :] == 3.0) and torch.all(padded[..., :, :, 7:] == 3.0)


def test_clustering_rejects_an_outlier_crop_and_is_not_biased_by_the_split():
    rng = np.random.default_rng(0)
    agreeing = np.array([40.0, 30.0, 20.0]) + rng.normal(scale=0.8, size=(6, 3))
    outlier = np.array([[70.0, 31.0, 20.0]])
    points = np.concatenate([agreeing, outlier])
    members = dominant_cluster(points, np.ones(7), n_clusters=3, merge_radius_vox=5.0)
    assert members.tolist() == [True] * 6 + [False]
    assert np.allclose(points[members].mean(0), agreeing.mean(0))
    assert dominant_cluster(agreeing, np.ones(6), n_clusters=3, merge_radius_vox=5.0).all()
    # a two-vote tie is broken by the summed score
    pair = np.array([[10.0, 10.0, 10.0], [40.0, 10.0, 10.0]])
    assert dominant_cluster(pair, np.array([0.6, 0.9])).tolist() == [False, True]


def _outputs(origins, local, scores=None):
    return CropOutputs(np.asarray(origins, dtype=np.int64), np.asarray(local, dtype=float), scores)


def test_a_vertebra_seen_by_a_single_crop_is_present_at_that_crop_coordinate():
    # vertebra 0 voted by one crop only, vertebra 1 by none
    outputs = _outputs([[0, 0, 0], [20, 0, 0]], [[[5, 6, 7], [1, 1, 1]], [[9, 9, 9], [3, 3, 3]]],
                       scores=np.array([[0.9, 0.2], [0.1, 0.3]]))
    votes = crop_votes(outputs, (32, 16, 16), (52, 16, 16))
    assert votes.tolist() == [[True, False], [False, False]]
    pred = aggregate_crops(outputs, votes, (32, 16, 16), min_support=1)
    assert pred.present.tolist() == [True, False]
    assert np.allclose(pred.centroids_vox[0], [5, 6, 7])
    assert pred.scores[0] == pytest.approx(0.9) and pred.scores[1] == pytest.approx(0.3)
    assert np.allclose(pred.centroids_vox[1], [23, 3, 3])  # best guess: the highest-scoring crop's coordinate
    assert not aggregate_crops(outputs, votes, (32, 16, 16), min_support=2).present[0]


def test_a_false_positive_of_one_crop_among_many_covering_crops_is_not_present():
    # eight crops overlap at (20, 20, 20); only one says vertebra 0 is there
    origins = [[d, h, w] for d in (0, 8) for h in (0, 8) for w in (0, 8)]
    local = np.array([[[20.0 - d, 20.0 - h, 20.0 - w]] for d, h, w in origins])
    scores = np.full((8, 1), 0.1)
    scores[3, 0] = 0.8
    outputs = _outputs(origins, local, scores)
    votes = crop_votes(outputs, (24, 24, 24), (32, 32, 32))
    assert votes.sum() == 1
    pred = aggregate_crops(outputs, votes, (24, 24, 24), min_agreement=0.5)
    assert not pred.present[0] and pred.scores[0] == pytest.approx((0.8 + 7 * 0.1) / 8)
    assert aggregate_crops(outputs, votes, (24, 24, 24), min_agreement=0.0).present[0]
    scores[:5, 0] = 0.9  # five of eight agree
    pred = aggregate_crops(outputs, crop_votes(outputs, (24, 24, 24), (32, 32, 32)), (24, 24, 24))
    assert pred.present[0] and np.allclose(pred.centroids_vox[0], [20, 20, 20])


def test_votes_in_padding_and_near_the_crop_faces_without_classifier_are_dropped():
    outputs = _outputs([[0, 0, 0]], [[[5, 6, 7], [0.5, 6, 7], [5, 6, 14.0]]])
    # volume is 12 voxels deep along axis 2: the third coordinate (14) lands in padding
    votes = crop_votes(outputs, (16, 16, 16), (16, 16, 12), border_margin_vox=2.0)
    assert votes.tolist() == [[True, False, False]]


def test_end_to_end_with_an_oracle_network_and_one_lying_crop():
    """A 'network' that reports the true crop-local centroid of vertebrae inside each crop; one crop lies."""
    volume_shape, crop = (70, 30, 20), (32, 16, 16)
    truth = np.array([[8.0, 14.0, 9.0], [30.0, 15.0, 10.0], [55.0, 16.0, 11.0], [-40.0, 15.0, 10.0]])
    calls = []

    def oracle(crops: torch.Tensor):
        # recover each crop's origin from the encoded image: voxel value = flat index in the volume
        flat = crops[:, 0, 0, 0, 0].long()
        origins = torch.stack([flat // (30 * 20), (flat // 20) % 30, flat % 20], dim=1).double()
        local = torch.as_tensor(truth)[None] - origins[:, None, :]
        inside = ((local >= 0) & (local <= torch.tensor(crop) - 1)).all(-1)
        scores = inside.double() * 0.9 + 0.05
        local = local.clamp(min=torch.zeros(3), max=torch.tensor(crop, dtype=torch.float64) - 1)
        if not calls:  # the first crop claims vertebra 2 at a wrong place
            local[0, 2] = torch.tensor([20.0, 3.0, 3.0])
            scores[0, 2] = 0.99
        calls.append(len(crops))
        return local, scores

    image = torch.arange(np.prod(volume_shape), dtype=torch.float32).reshape(1, 1, *volume_shape)
    pred = predict_volume_tiled(image, oracle, crop, overlap=0.5, batch_size=3)
    assert sum(calls) == len(tile_origins(volume_shape, crop, 0.5)) and max(calls) <= 3
    assert pred.present.tolist() == [True, True, True, False]
    assert np.allclose(pred.centroids_vox[:3], truth[:3], atol=1e-6)
    assert pred.scores[:3].min() > 0.9 and pred.scores[3] < 0.5
