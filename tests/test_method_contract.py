"""Contract tests that run for every registered method (built-ins and installed plugins) automatically."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spinebench.methods import DataRequirements, VertebraMethod, VolumePrediction, list_methods
from tests.method_fixtures import (
    NUM_VERTEBRAE, SMALL_SEEDS, adam_losses, tiny_batch, tiny_case, tiny_method, train_centroids,
)

METHODS = list_methods()


def test_registry_is_not_empty():
    assert {"di2in", "di2in_mp", "di2in_mp_sparsity"} <= set(METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_data_requirements_are_consistent(name):
    req = tiny_method(name).data_requirements()
    assert isinstance(req, DataRequirements)
    if req.sample_mode == "crop":
        assert req.crop_size_vox is not None and len(req.crop_size_vox) == 3
    else:
        assert req.sample_mode == "volume" and req.pad_multiple >= 1


@pytest.mark.parametrize("name", METHODS)
def test_loss_is_finite_and_a_step_changes_parameters(name):
    method = tiny_method(name)
    method.fit_shape_prior(train_centroids())
    batch = tiny_batch(method, seeds=SMALL_SEEDS[:2])
    terms = method.training_loss(batch)
    assert "loss" in terms and terms["loss"].ndim == 0
    assert all(torch.isfinite(v).all() for v in terms.values())
    before = [p.detach().clone() for p in method.parameters() if p.requires_grad]
    assert before, "a method must have trainable parameters"
    optimizer = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=1e-2)
    optimizer.zero_grad()
    terms["loss"].backward()
    optimizer.step()
    after = [p.detach() for p in method.parameters() if p.requires_grad]
    changed = sum(not torch.equal(a, b) for a, b in zip(before, after))
    assert changed > 0
    assert torch.isfinite(method.training_loss(batch)["loss"])


@pytest.mark.parametrize("name", METHODS)
def test_predict_volume_contract_on_unpadded_volume(name):
    method = tiny_method(name)
    method.fit_shape_prior(train_centroids())
    method.eval()
    image, _, _ = tiny_case(seed=SMALL_SEEDS[2])
    assert all(s % 2 for s in image.shape[-3:])  # not a multiple of any pad
    pred = method.predict_volume(image)
    assert isinstance(pred, VolumePrediction)
    assert pred.centroids_vox.shape == (NUM_VERTEBRAE, 3) and np.isfinite(pred.centroids_vox).all()
    assert pred.present.dtype == bool and pred.present.shape == (NUM_VERTEBRAE,)
    assert pred.scores.shape == (NUM_VERTEBRAE,) and ((pred.scores >= 0) & (pred.scores <= 1)).all()
    scan = method.predict_step({"image": image, "case_id": ["tiny"]}, 0)["predictions"][0]
    assert np.array_equal(scan.centroids_vox, pred.centroids_vox) and np.array_equal(scan.scores, pred.scores)
    assert not (scan.present & ~pred.present).any()  # the scan's presence only ever removes vertebrae
    shown = scan.centroids_vox[scan.present]
    assert ((shown >= -0.5) & (shown <= np.array(image.shape[-3:]) - 0.5)).all()


class _FixedAnswer(VertebraMethod):
    """A method whose answer is given: what the base class does with it is under test."""

    answer = np.zeros((0, 3))

    def __init__(self) -> None:
        super().__init__(config=DataRequirements("volume"))

    def predict_volume(self, image):
        k = len(self.answer)
        return VolumePrediction(self.answer, np.ones(k, bool), np.linspace(0.6, 0.9, k))


def test_a_centroid_outside_the_volume_is_not_reported_present():
    """The scan's extent is its voxel centres +- half a voxel, per axis; beyond it a vertebra is absent in every
    prediction the benchmark makes (validation, test, predict), its coordinates and score kept."""
    image = torch.zeros(1, 1, 10, 6, 8)
    answer = np.array([[-0.5, 0.0, 0.0], [-0.51, 3.0, 3.0], [9.5, 5.5, 7.5], [9.0, 5.51, 4.0], [4.0, 3.0, -7.0],
                       [5.0, 2.0, 7.49]])
    method = _FixedAnswer()
    method.answer = answer
    for step in (method.validation_step, method.test_step, method.predict_step):
        pred = step({"image": image, "case_id": ["c"]}, 0)["predictions"][0]
        assert pred.present.tolist() == [True, False, True, False, False, True]
        assert np.array_equal(pred.centroids_vox, answer) and np.allclose(pred.scores, np.linspace(0.6, 0.9, 6))
    assert method.predict_volume(image).present.all()  # predict_volume itself is the method's own answer


@pytest.mark.parametrize("name", METHODS)
def test_training_lowers_the_loss(name):
    """Twenty Adam steps on one fixed tiny batch: every method's loss must fall clearly below where it started."""
    torch.manual_seed(0)
    method = tiny_method(name)
    method.fit_shape_prior(train_centroids())
    batch = tiny_batch(method, seeds=SMALL_SEEDS[:2])
    losses = adam_losses(method, batch)
    assert np.mean(losses[-3:]) < 0.9 * losses[0], losses
