"""DI2IN network, presets, heatmap decoding, tiled inference and checkpoint round trip of the shape priors."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from spinebench.datamodules.errors import InputError
from spinebench.datamodules.targets import gaussian_heatmaps
from spinebench.methods import create_method, method_config
from spinebench.methods.blocks import argmax_subvoxel
from spinebench.methods.di2in import DI2IN
from spinebench.methods.di2in_net import DI2INNet
from spinebench.methods.registry import MethodRegistryError
from spinebench.methods.sliding_window import sliding_window_inference, tile_shape
from tests.method_fixtures import SMALL_SEEDS, adam_losses, tiny_batch, tiny_case, tiny_method, train_centroids


def test_presets_and_explicit_sizes():
    assert (method_config("di2in").base_width, method_config("di2in").depth) == (8, 3)
    paper = method_config("di2in", preset="paper")
    assert (paper.base_width, paper.depth, paper.convs_per_level) == (32, 4, 2)
    assert method_config("di2in", preset="paper", base_width=16).base_width == 16
    assert create_method("di2in", depth=2).data_requirements().pad_multiple == 4
    with pytest.raises(InputError, match="preset"):
        method_config("di2in", preset="huge")
    with pytest.raises(InputError, match="mp_alpha"):
        method_config("di2in_mp", mp_alpha=1.0)
    with pytest.raises(MethodRegistryError, match="valid options: .*mp_iterations"):
        method_config("di2in", mp_iteration=3)


def test_training_on_crops_asks_for_crops_of_its_size_and_lowers_the_loss():
    """``train_crop_vox`` turns DI2IN's whole-volume training into crop sampling; inference stays whole-volume."""
    for bad in ([30, 16, 16], [16, 16], [4, 8, 8]):
        with pytest.raises(InputError, match="train_crop_vox"):
            method_config("di2in", depth=3, train_crop_vox=bad)
    assert create_method("di2in").data_requirements().sample_mode == "volume"
    method = tiny_method("di2in", train_crop_vox=[16, 16, 16])
    req = method.data_requirements()
    assert (req.sample_mode, req.crop_size_vox) == ("crop", (16, 16, 16))
    method.fit_shape_prior(train_centroids())
    batch = tiny_batch(method, seeds=SMALL_SEEDS[:2])
    assert tuple(batch["image"].shape[-3:]) == (16, 16, 16) and batch["present"].any()
    losses = adam_losses(method, batch)
    assert np.mean(losses[-3:]) < 0.9 * losses[0], losses
    image = tiny_case(SMALL_SEEDS[0])[0]  # a whole, odd-sized volume: predicted in one pass, not in crops
    assert method.predict_volume(image).centroids_vox.shape == (method.config.num_vertebrae, 3)


def test_variants_differ_only_by_flags():
    a, b, c = (method_config(n) for n in ("di2in", "di2in_mp", "di2in_mp_sparsity"))
    assert (a.message_passing, a.sparsity) == (False, False)
    assert (b.message_passing, b.sparsity) == (True, False)
    assert (c.message_passing, c.sparsity) == (True, True)
    assert {type(create_method(n)) for n in ("di2in", "di2in_mp", "di2in_mp_sparsity")} == {DI2IN}


def test_network_shapes_and_fused_output_equals_conv_over_concatenated_branches():
    torch.manual_seed(0)
    net = DI2INNet(1, 5, base_width=4, depth=2, convs_per_level=1)
    with torch.no_grad():
        net.fuse.weight.normal_()  # a non-trivial fusion
        out = net(torch.randn(1, 1, 8, 12, 16))
    assert out["final"].shape == (1, 5, 8, 12, 16) and len(out["branches"]) == 2
    assert all(b.shape == (1, 5, 8, 12, 16) for b in out["branches"])
    reference = torch.relu(net.fuse(torch.cat(out["branches"][::-1], dim=1)))  # branch order: shallowest last
    torch.testing.assert_close(out["final"], reference, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="multiple of 2\\*\\*depth"):
        net(torch.randn(1, 1, 9, 12, 16))


def test_untrained_fusion_is_the_mean_of_the_branches():
    net = DI2INNet(1, 3, base_width=2, depth=2, convs_per_level=1)
    with torch.no_grad():
        out = net(torch.randn(1, 1, 8, 8, 8))
    torch.testing.assert_close(out["final"], torch.relu(sum(out["branches"]) / 2), atol=1e-6, rtol=1e-5)


def test_argmax_subvoxel_recovers_gaussian_centres():
    centres = torch.tensor([[[5.3, 7.8, 4.5], [10.0, 3.2, 9.9]]])
    heat = gaussian_heatmaps(centres, torch.ones(1, 2, dtype=torch.bool), (16, 12, 14), sigma_vox=1.5)[0]
    coords, peak = argmax_subvoxel(heat)
    assert np.abs(coords.numpy() - centres[0].numpy()).max() < 0.12
    assert (peak > 0.85).all()
    coarse, _ = argmax_subvoxel(heat, subvoxel=False)
    assert torch.equal(coarse, coords.round())


def test_tiled_inference_equals_single_pass_for_a_pointwise_function():
    image = torch.randn(1, 1, 21, 18, 13)
    double = lambda x: torch.cat([2 * x, x + 1], dim=1)  # noqa: E731
    single = sliding_window_inference(double, image, pad_multiple=4, max_voxels=10**9)
    tiled = sliding_window_inference(double, image, pad_multiple=4, max_voxels=8 * 8 * 8)
    assert single.shape == tiled.shape == (1, 2, 21, 18, 13)
    torch.testing.assert_close(tiled, single, atol=1e-5, rtol=1e-5)
    tile = tile_shape((24, 20, 16), 4, 512)
    assert all(t % 4 == 0 for t in tile) and np.prod(tile) <= 512


def test_predict_volume_uses_tiles_beyond_max_voxels():
    image, _, _ = tiny_case(SMALL_SEEDS[2])
    small = tiny_method("di2in", max_window_voxels=10_000).eval()  # 16×36×36 padded: several tiles
    pred = small.predict_volume(image)
    assert pred.centroids_vox.shape == (26, 3)
    assert small.predict_heatmaps(image).shape[1:] == image.shape[-3:]


def test_unrolled_message_passing_trains_its_kernels():
    method = tiny_method("di2in_mp", mp_mode="unrolled")
    method.fit_shape_prior(train_centroids())
    assert isinstance(method.mp.kernels, torch.nn.Parameter)
    terms = method.training_loss(tiny_batch(method))
    assert "mp" in terms and torch.isfinite(terms["mp"])
    terms["loss"].backward()
    assert method.mp.kernels.grad is not None and method.mp.kernels.grad.abs().sum() > 0
    post = tiny_method("di2in_mp")
    post.fit_shape_prior(train_centroids())
    assert "mp" not in post.training_loss(tiny_batch(post)) and not post.mp.kernels.requires_grad


class _TinyData(L.LightningDataModule):
    def __init__(self, method):
        super().__init__()
        self.batch = tiny_batch(method)

    def train_centroids_vox(self):
        return train_centroids()

    def train_dataloader(self):
        return DataLoader([self.batch], batch_size=None)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["post", "unrolled"])
def test_checkpoint_round_trip_keeps_kernels_and_dictionary(tmp_path, mode):
    method = tiny_method("di2in_mp_sparsity", mp_mode=mode)
    assert not method.mp.fitted and not method.shape_dictionary.fitted
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")  # fmt: skip
    trainer.fit(method, datamodule=_TinyData(method))  # on_fit_start fits the priors from the datamodule
    assert method.mp.fitted and method.shape_dictionary.fitted
    path = tmp_path / "di2in.ckpt"
    trainer.save_checkpoint(path)
    loaded = DI2IN.load_from_checkpoint(path, map_location="cpu")
    assert loaded.config == method.config
    torch.testing.assert_close(loaded.mp.kernels, method.mp.kernels)
    torch.testing.assert_close(loaded.shape_dictionary.atoms, method.shape_dictionary.atoms)
    image, _, _ = tiny_case(SMALL_SEEDS[2])
    a, b = method.eval().predict_volume(image), loaded.eval().predict_volume(image)
    np.testing.assert_allclose(a.centroids_vox, b.centroids_vox)
    np.testing.assert_array_equal(a.present, b.present)


def test_foreground_weight_one_is_the_papers_plain_squared_loss_and_more_weights_the_targets():
    torch.manual_seed(0)
    image = torch.randn(1, 1, 16, 8, 8)
    centroids = torch.tensor([[[5.0, 4.0, 4.0], [11.0, 4.0, 4.0]]])
    present = torch.tensor([[True, True]])
    batch = {"image": image, "centroids_vox": centroids, "present": present}
    plain = create_method("di2in", num_vertebrae=2, base_width=2, depth=1, channels_last=False)
    weighted = create_method("di2in", num_vertebrae=2, base_width=2, depth=1, channels_last=False,
                             foreground_weight=20.0)
    weighted.load_state_dict(plain.state_dict())
    target = gaussian_heatmaps(centroids, present, (16, 8, 8), plain.config.sigma_vox)
    final = plain(image)["final"]
    assert torch.allclose(plain.training_loss(batch)["final"], torch.nn.functional.mse_loss(final, target))
    expected = ((1.0 + 19.0 * target) * (final - target) ** 2).mean()
    assert torch.allclose(weighted.training_loss(batch)["final"], expected)
    with pytest.raises(InputError, match="foreground_weight"):
        method_config("di2in", foreground_weight=0.5)


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("foreground_weight", [1.0, 30.0])
def test_fast_network_and_loss_equal_the_plain_ones_outputs_loss_and_gradients(channels_last, foreground_weight):
    torch.manual_seed(0)
    method = create_method("di2in", num_vertebrae=5, base_width=4, depth=3, channels_last=channels_last,
                           foreground_weight=foreground_weight, sigma_vox=1.5)
    with torch.no_grad():
        method.net.fuse.weight.normal_(0.0, 0.3)
        for head in method.net.heads:
            head.bias.normal_(0.0, 0.1)
    shape = (24, 16, 32)
    batch = {"image": torch.randn(2, 1, *shape), "centroids_vox": torch.rand(2, 5, 3) * torch.tensor(shape),
             "present": torch.tensor([[True, True, False, True, True], [False, True, True, True, False]])}
    final, branches = method.net.literal_forward(batch["image"])
    torch.testing.assert_close(method(batch["image"])["final"], final, rtol=1e-5, atol=1e-5)
    target = gaussian_heatmaps(batch["centroids_vox"], batch["present"], shape, 1.5)
    weight = 1.0 + (foreground_weight - 1.0) * target
    plain = sum((weight * (b - target) ** 2).mean() for b in [final, *branches])
    fast = method.training_loss(batch)["loss"]
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=0)
    params = [p for p in method.parameters() if p.requires_grad]
    for g_fast, g_plain in zip(torch.autograd.grad(fast, params), torch.autograd.grad(plain, params)):
        torch.testing.assert_close(g_fast, g_plain, rtol=1e-4, atol=1e-4 * float(g_plain.abs().max()) + 1e-8)


def test_whole_volume_inference_of_an_odd_size_volume_equals_the_plain_network():
    torch.manual_seed(1)
    method = create_method("di2in", num_vertebrae=3, base_width=4, depth=2).eval()
    image = torch.randn(1, 1, 13, 10, 9)
    padded = torch.nn.functional.pad(image, (0, 3, 0, 2, 0, 3), value=float(image.min()))
    expected = method.net.literal_forward(padded)[0][0, :, :13, :10, :9]
    torch.testing.assert_close(method.predict_heatmaps(image), expected, rtol=1e-5, atol=1e-5)
