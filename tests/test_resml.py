"""Residual multi-label network: architecture per paper, variant contract, losses, optimizer, a short fit."""

from __future__ import annotations

import dataclasses

import lightning as L
import pytest
import torch

from spinebench.datamodules.errors import InputError
from spinebench.methods.base import VolumePrediction
from spinebench.methods.registry import MethodRegistryError, create_method, get_method_spec, method_config
from spinebench.methods.resml import RESML_PRESETS, ResidualModule, ResidualMultiLabel, ResMLConfig

TINY = dict(widths=(8, 8, 8, 16), cls_channels=4, lstm_hidden=8, crop_size_vox=(32, 16, 16), num_vertebrae=5)
VARIANTS = ["resml_loc", "resml_cls", "resml_cls_bilstm"]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny tensors: on a busy 2-core CPU, two intra-op threads were up to 10x slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch(b=2, k=5, crop=(32, 16, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(b, 1, *crop, generator=g),
        "centroids_vox": torch.rand(b, k, 3, generator=g) * (torch.tensor(crop) - 1),
        "present": torch.rand(b, k, generator=g) > 0.4,
        "spacing_mm": torch.full((b, 3), 2.0),
        "case_id": [f"c{i}" for i in range(b)],
        "crop_origin_vox": torch.zeros(b, 3, dtype=torch.int64),
    }


def test_variants_are_overrides_of_one_class_with_paper_defaults():
    specs = [get_method_spec(n) for n in VARIANTS]
    assert len({s.module_cls for s in specs}) == 1 and {s.family for s in specs} == {"resml"}
    cfg = method_config("resml_cls_bilstm")
    assert (cfg.num_vertebrae, cfg.crop_size_vox) == (26, (104, 80, 80))
    assert (cfg.localization_weight, cfg.pos_weight) == (0.4, 3.0)
    assert (cfg.lstm_layers, cfg.lstm_hidden, cfg.norm_groups, cfg.weight_decay) == (3, 128, 4, 1e-4)
    assert (cfg.plateau_factor, cfg.min_learning_rate) == (0.4, 1e-6)
    assert not method_config("resml_loc").use_classifier and not method_config("resml_cls").use_bilstm
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.pos_weight = 2.0
    with pytest.raises(MethodRegistryError, match="lstm_hiden"):
        create_method("resml_cls", lstm_hiden=3)


def test_paper_sized_bilstm_classifier_and_residual_module():
    m = create_method("resml_cls_bilstm")
    assert m.data_requirements().sample_mode == "crop" and m.data_requirements().crop_size_vox == (104, 80, 80)
    lstm = m.net.lstm
    assert lstm.bidirectional and lstm.num_layers == 3 and lstm.hidden_size == 128
    names = dict(m.net.named_parameters())
    assert names["lstm.weight_ih_l2_reverse"].shape == (4 * 128, 2 * 128)
    first = m.net.classifier[0][0]
    assert first.kernel_size == (5, 3, 3) and first.out_channels == 32
    assert m.net.fc.in_features == 6 * 2 * 128  # D' = 104 // 16 time steps along the vertical axis
    assert not any("lstm" in n for n, _ in create_method("resml_cls").named_parameters())
    assert create_method("resml_loc").net.classifier is None
    block = ResidualModule(8, 16)
    kinds = [type(layer).__name__ for layer in block.body]
    assert kinds == ["Conv3d", "GroupNorm", "ReLU"] * 3
    assert [c.kernel_size for c in block.body if isinstance(c, torch.nn.Conv3d)] == [(1, 1, 1), (3, 3, 3), (1, 1, 1)]
    assert block.body[1].num_groups == 4 and isinstance(block.skip, torch.nn.Conv3d)
    assert isinstance(ResidualModule(8, 8).skip, torch.nn.Identity)


def test_presets_build_small_is_much_smaller_and_explicit_fields_win():
    sizes = {p: sum(x.numel() for x in create_method("resml_cls_bilstm", preset=p).parameters()) for p in RESML_PRESETS}
    assert sizes["small"] * 10 < sizes["paper"]
    cfg = ResMLConfig(preset="small", widths=[8, 8, 16, 16], crop_size_vox=[32, 24, 24])  # YAML gives lists
    assert cfg.widths == (8, 8, 16, 16) and cfg.crop_size_vox == (32, 24, 24)
    assert cfg.lstm_hidden == RESML_PRESETS["small"]["lstm_hidden"]
    assert create_method("resml_cls", **TINY).data_requirements().crop_size_vox == (32, 16, 16)


@pytest.mark.parametrize(
    "bad",
    [dict(widths=(8, 8, 12, 16)), dict(crop_size_vox=(30, 16, 16)), dict(plateau_mode="up"), dict(preset="huge"),
     dict(use_classifier=False, use_bilstm=True)],
)
def test_bad_config_values_name_the_key(bad):
    key = list(bad)[-1]
    with pytest.raises(InputError, match=key):
        ResMLConfig(**{**TINY, **bad})


def test_bilstm_variant_has_the_same_output_contract_as_cls():
    torch.manual_seed(0)
    batch = _batch()
    outs = {}
    for name in ("resml_cls", "resml_cls_bilstm"):
        m = create_method(name, **TINY)
        out = m(batch["image"])
        outs[name] = {k: tuple(v.shape) for k, v in out.items()}
        pred = m.predict_volume(torch.randn(1, 1, 40, 20, 13))
        assert isinstance(pred, VolumePrediction) and pred.centroids_vox.shape == (5, 3)
        assert ((pred.scores >= 0) & (pred.scores <= 1)).all()
        terms = m.training_loss(batch)
        assert set(terms) == {"loss", "loss_localization", "loss_classification"}
    assert outs["resml_cls"] == outs["resml_cls_bilstm"] == {
        "heatmaps": (2, 5, 32, 16, 16), "coords_vox": (2, 5, 3), "logits": (2, 5)
    }


def test_loss_follows_the_paper_equations():
    torch.manual_seed(0)
    m = create_method("resml_cls", **TINY, pos_weight=3.0, localization_weight=0.4)
    batch = _batch()
    with torch.no_grad():
        out = m(batch["image"])
        terms = m.training_loss(batch)
    u = batch["present"].float()
    diff = (out["coords_vox"] - batch["centroids_vox"]).abs()
    smooth = torch.where(diff < 1, 0.5 * diff**2, diff - 0.5).sum(-1)
    assert terms["loss_localization"] == pytest.approx(float(0.4 * (u * smooth).sum(-1).mean()), rel=1e-5)
    p = torch.sigmoid(out["logits"])
    cls = (-(3.0 * u * torch.log(p) + (1 - u) * torch.log(1 - p))).sum(-1).mean()
    assert terms["loss_classification"] == pytest.approx(float(cls), rel=1e-5)
    # centroids of absent vertebrae never reach the loss
    moved = dict(batch, centroids_vox=torch.where(batch["present"][..., None], batch["centroids_vox"], torch.nan))
    with torch.no_grad():
        assert m.training_loss(moved)["loss"] == pytest.approx(float(terms["loss"]))
    assert set(create_method("resml_loc", **TINY).training_loss(batch)) == {"loss", "loss_localization"}


@pytest.mark.slow
def test_localization_overfits_one_batch():
    torch.manual_seed(0)
    m = create_method("resml_loc", **{**TINY, "crop_size_vox": (16, 16, 16), "widths": (8, 8, 8, 8)})
    batch = _batch(crop=(16, 16, 16), seed=1)
    opt = m.configure_optimizers()["optimizer"]
    first = m.training_loss(batch)["loss"].item()
    for _ in range(15):
        loss = m.training_loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert m.training_loss(batch)["loss"].item() < 0.75 * first


def test_reduce_on_plateau_settings():
    m = create_method("resml_cls", **TINY, learning_rate=0.003)
    conf = m.configure_optimizers()
    sched = conf["lr_scheduler"]
    assert isinstance(conf["optimizer"], torch.optim.Adam) and conf["optimizer"].defaults["weight_decay"] == 1e-4
    assert sched["monitor"] == "train/epoch_loss" and sched["strict"] is False and sched["interval"] == "epoch"
    plateau = sched["scheduler"]
    assert plateau.factor == 0.4 and plateau.min_lrs == [1e-6] and plateau.mode == "min"
    for _ in range(plateau.patience + 2):  # a loss that never improves cuts the rate by 0.4
        plateau.step(1.0)
    assert conf["optimizer"].param_groups[0]["lr"] == pytest.approx(0.003 * 0.4)


class _Crops(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {k: v[0] if torch.is_tensor(v) else v[0] for k, v in _batch(b=1, seed=i).items()}


@pytest.mark.slow
def test_fit_runs_when_the_monitored_metric_is_never_logged_and_the_checkpoint_reloads(tmp_path):
    torch.manual_seed(0)
    m = create_method("resml_cls_bilstm", **TINY, plateau_monitor="val/id_rate", plateau_mode="max", plateau_patience=0)
    loader = torch.utils.data.DataLoader(_Crops(), batch_size=2)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(m, train_dataloaders=loader)
    assert trainer.global_step == 4
    assert torch.isfinite(trainer.callback_metrics["train/epoch_loss"])
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.01  # no metric, no plateau step
    trainer.save_checkpoint(tmp_path / "resml.ckpt")
    reloaded = ResidualMultiLabel.load_from_checkpoint(tmp_path / "resml.ckpt", map_location="cpu")
    assert reloaded.config == m.config
    image = _batch(b=1)["image"]
    m.eval()
    reloaded.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(image)["logits"], m(image)["logits"])


@pytest.mark.parametrize("name", VARIANTS)
def test_fast_forward_equals_the_literal_network_values_and_gradients(name):
    """The inference fast path (strided max-pool, separable resize, in-place adds, oneDNN convolutions, two-pass
    marginals) and the training path both equal the network computed with PyTorch's plain operators."""
    torch.manual_seed(0)
    net = create_method(name, **TINY).net.double()
    image = torch.randn(2, 1, 24, 16, 16, dtype=torch.float64)  # not a crop size: any input size works
    with torch.no_grad():
        fast, literal = net(image), net.literal_forward(image)
    assert fast.keys() == literal.keys()
    for key in fast:
        torch.testing.assert_close(fast[key], literal[key], rtol=1e-9, atol=1e-9)
    grads = []
    for forward in (net, net.literal_forward):
        net.zero_grad()
        out = forward(image)
        (out["coords_vox"].sum() + out.get("logits", torch.zeros(())).sum()).backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-7, atol=1e-9, msg=n)


def test_inference_settings_share_one_training():
    """Cells that differ only in whole-CT inference settings (tiling, voting, clustering) train once."""
    fields = ResidualMultiLabel.inference_only_fields(ResMLConfig(**TINY))
    assert {"tile_overlap", "presence_threshold", "min_agreement", "n_clusters"} <= fields
    assert not fields & {"crop_size_vox", "widths", "learning_rate", "localization_weight", "pos_weight"}
    assert fields <= {f.name for f in dataclasses.fields(ResMLConfig)}


def test_crops_per_pass_is_the_measured_default_unless_set():
    """None: 2 crops a pass on a CPU (the fastest measured there); an explicit size wins; 0 is refused."""
    assert create_method("resml_cls", **TINY).crops_per_pass() == 2
    assert create_method("resml_cls", **TINY, inference_batch_size=5).crops_per_pass() == 5
    with pytest.raises(InputError, match="inference_batch_size"):
        create_method("resml_cls", **TINY, inference_batch_size=0)
