"""VertebraDataModule: sample modes, crop/centroid consistency, collate, DDP sharding, bad cases, phantom."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from spinebench.datamodules.centroids import Centroids, write_centroids
from spinebench.datamodules.ct_io import write_image
from spinebench.datamodules.datamodule import DataConfig, ShardedEvalSampler, SkippedCaseWarning, VertebraDataModule
from spinebench.datamodules.geometry import Geometry
from spinebench.datamodules.labels import get_label_set
from spinebench.datamodules.preprocess import AIR_VALUE, HU_MEAN, HU_STD
from spinebench.datamodules.samples import Augmentation, CropDataset, VolumeDataset, pad_collate

NAMES = get_label_set("default").names
PIR = np.array([[-1.0, 0, 0], [0, 0, 1], [0, -1, 0]])  # numpy axes grow (R, I, P): reoriented on load
# Balls of a distinct HU per vertebra, so a value identifies the anatomy.
HU_OF = {"T12": 400, "L1": 600, "L2": 800, "L3": 1000}


def _z(hu: float) -> float:
    return (hu - HU_MEAN) / HU_STD


def _write(folder, name, vox, shape=(14, 30, 12), annotation=".lml"):
    g = Geometry(shape, (2.0, 2.0, 2.0), (10.0, -20.0, 30.0), PIR)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    ct = np.full(shape, -1024, np.int16)
    for n, v in vox.items():
        ct[np.sum((grid - np.array(v)) ** 2, -1) <= 2] = HU_OF[n]
    folder.mkdir(parents=True, exist_ok=True)
    write_image(folder / f"{name}.nii.gz", ct, g)
    if annotation:
        c = Centroids({n: g.vox_to_world(np.array(v, float)) for n, v in vox.items()})
        write_centroids(folder / f"{name}{annotation}", c)
    return g


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data"
    _write(root, "a", {"L1": (7, 6, 5), "L2": (7, 14, 6), "L3": (6, 22, 6)})
    _write(root, "b", {"T12": (7, 5, 6), "L1": (6, 13, 5)}, shape=(12, 20, 14))
    _write(root, "c", {"L2": (5, 8, 6), "L3": (7, 18, 5)}, shape=(14, 24, 12))
    return root


def _dm(data_root, tmp_path, **kw) -> VertebraDataModule:
    options = {"root": str(data_root), "test_fraction": kw.pop("test_fraction", 0.34)}
    kw = {"source": "folder", "options": options, "cache_dir": str(tmp_path / "cache"), "crop_size_vox": (8, 8, 8), **kw}
    dm = VertebraDataModule(DataConfig(**kw))
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _all_entries(dm):
    return dm.entries["train"] + dm.entries["val"] + dm.entries["test"]


def test_crops_carry_crop_local_centroids_of_the_same_anatomy(data_root, tmp_path):
    dm = _dm(data_root, tmp_path)
    ds = CropDataset(_all_entries(dm), NAMES, (8, 8, 8), crops_per_case=8, focus_prob=1.0)
    torch.manual_seed(0)
    for i in range(len(ds)):
        s = ds[i]
        entry = ds.entries[i % len(ds.entries)]
        assert s["image"].shape == (1, 8, 8, 8) and s["crop_origin_vox"].dtype == torch.int64
        assert s["present"].any()  # focus_prob=1: every crop holds a vertebra
        full = entry.centroids_vox(NAMES)
        for k in torch.nonzero(s["present"]).flatten().tolist():
            local = s["centroids_vox"][k].numpy()
            np.testing.assert_allclose(local + s["crop_origin_vox"].numpy(), full[k], atol=1e-4)
            assert s["image"][0][tuple(np.round(local).astype(int))].item() == pytest.approx(_z(HU_OF[NAMES[k]]))
        absent = ~s["present"]
        assert torch.all(s["centroids_vox"][absent] == 0)


def test_uniform_crops_stay_inside_and_oversized_crops_pad_with_air(data_root, tmp_path):
    dm = _dm(data_root, tmp_path)
    entry = dm.entries["train"][0]
    shape = np.array(entry.geometry.shape)
    torch.manual_seed(1)
    ds = CropDataset([entry], NAMES, (4, 4, 4), crops_per_case=20, focus_prob=0.0)
    origins = np.stack([ds[i]["crop_origin_vox"].numpy() for i in range(20)])
    assert (origins >= 0).all() and (origins <= shape - 4).all() and len({tuple(o) for o in origins}) > 1
    big = tuple(int(n) for n in shape + 6)
    s = CropDataset([entry], NAMES, big, focus_prob=0.0)[0]
    assert (s["crop_origin_vox"].numpy() < 0).all()
    assert s["image"][0, 0, 0, 0].item() == pytest.approx(AIR_VALUE)


def test_augmentation_moves_centroids_with_the_anatomy(data_root, tmp_path):
    dm = _dm(data_root, tmp_path)
    aug = Augmentation(rotation_deg=15.0, scale_range=0.1, intensity_scale=0.0, intensity_shift=0.0)
    ds = CropDataset(_all_entries(dm), NAMES, (12, 12, 12), crops_per_case=4, focus_prob=1.0, augmentation=aug)
    torch.manual_seed(2)
    checked = 0
    for i in range(len(ds)):
        s = ds[i]
        for k in torch.nonzero(s["present"]).flatten().tolist():
            v = np.round(s["centroids_vox"][k].numpy()).astype(int)
            if np.all(v >= 1) and np.all(v <= 10):  # away from the crop border
                # the ball (radius ~1.4 vox) moved with its centroid: bright where the centroid points
                assert s["image"][0][tuple(v)].item() > (AIR_VALUE + _z(HU_OF[NAMES[k]])) / 2
                checked += 1
    assert checked >= 4


def test_volume_mode_pads_to_multiple_with_heatmaps(data_root, tmp_path):
    dm = _dm(data_root, tmp_path)
    entry = dm.entries["train"][0]
    s = VolumeDataset([entry], NAMES, pad_multiple=16, heatmap_sigma_vox=1.5)[0]
    shape = entry.geometry.shape
    assert all(n % 16 == 0 and n >= m for n, m in zip(s["image"].shape[1:], shape))
    assert s["heatmaps"].shape == (len(NAMES),) + tuple(s["image"].shape[1:])
    assert s["image"][0, shape[0]:].eq(AIR_VALUE).all()  # padding at the high end, coordinates unchanged
    for k in range(len(NAMES)):
        h = s["heatmaps"][k]
        if s["present"][k]:
            peak = np.unravel_index(int(h.argmax()), h.shape)
            np.testing.assert_allclose(peak, s["centroids_vox"][k].numpy(), atol=0.51)
        else:
            assert h.abs().sum() == 0


def test_collate_pads_to_the_largest_volume(data_root, tmp_path):
    dm = _dm(data_root, tmp_path)
    ds = VolumeDataset(_all_entries(dm), NAMES)
    samples = [ds[i] for i in range(len(ds))]
    batch = pad_collate(samples)
    expect = np.max([s["image"].shape[1:] for s in samples], axis=0)
    assert batch["image"].shape == (len(samples), 1, *expect)
    assert batch["centroids_vox"].shape == (len(samples), len(NAMES), 3) and batch["present"].dtype == torch.bool
    assert batch["case_id"] == [s["case_id"] for s in samples]
    small = int(np.argmin([np.prod(s["image"].shape) for s in samples]))
    d = samples[small]["image"].shape[1]
    if d < expect[0]:
        assert batch["image"][small, 0, d:].eq(AIR_VALUE).all()


def test_datamodule_loaders_and_runner_accessors(data_root, tmp_path):
    from spinebench.methods.base import DataRequirements

    dm = _dm(data_root, tmp_path)
    assert dm.data_report["cases"] == {"train": 2, "val": 0, "test": 1} and dm.data_report["n_skipped"] == 0
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 1, 8, 8, 8) and batch["crop_origin_vox"].shape == (2, 3)
    (test_id,) = dm.case_ids("test")
    tb = next(iter(dm.test_dataloader()))
    info = dm.case_info(test_id)
    assert tb["case_id"] == [test_id] and tuple(tb["image"].shape[2:]) == info.geometry.shape  # unpadded
    present = tb["present"][0].numpy()
    world = info.geometry.vox_to_world(tb["centroids_vox"][0].numpy()[present])
    np.testing.assert_allclose(world, info.centroids_world_mm[present], atol=1e-4)
    np.testing.assert_allclose(info.original_geometry.direction, PIR)
    cv = dm.train_centroids_vox()
    assert cv.shape == (2, len(NAMES), 3) and np.isnan(cv).any() and np.isfinite(cv).any()
    vol = VertebraDataModule(dm.config.configure_for(DataRequirements("volume", pad_multiple=8, heatmap_sigma_vox=2.0)))
    vol.setup("fit")
    vb = next(iter(vol.train_dataloader()))
    assert vb["image"].shape[2] % 8 == 0 and vb["heatmaps"].shape[:2] == (2, len(NAMES))
    assert vol.data_report["cache_hits"] == 3 and vol.data_report["cache_misses"] == 0


def test_later_epochs_read_the_cache_only(data_root, tmp_path):
    dm = _dm(data_root, tmp_path)
    loader = dm.train_dataloader()
    first = [b["case_id"] for b in loader]
    shutil.rmtree(data_root)  # the originals are gone; the next epoch must not care
    second = [b["case_id"] for b in loader]
    assert sorted(sum(first, [])) == sorted(sum(second, []))
    assert len(list(dm.test_dataloader())) == 1


def test_bad_cases_are_skipped_with_one_warning_each_and_reported(data_root, tmp_path):
    (data_root / "broken.nii.gz").write_bytes(b"not a nifti at all" * 10)
    _write(data_root, "nolabels", {"L1": (7, 6, 5)}, annotation=None)
    g = _write(data_root, "outside", {"L1": (7, 6, 5)}, annotation=None)
    write_centroids(data_root / "outside.lml", Centroids({"L1": g.vox_to_world(np.array([7.0, 90.0, 5.0]))}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm = _dm(data_root, tmp_path, test_fraction=0.0)
    skipped = [str(w.message) for w in caught if issubclass(w.category, SkippedCaseWarning)]
    assert len(skipped) == 3
    for name, reason in (("broken", "corrupt"), ("nolabels", "no centroid file"), ("outside", "outside")):
        (msg,) = [m for m in skipped if f"{name}.nii.gz" in m]
        assert reason in msg
    assert dm.data_report["n_skipped"] == 3 and dm.data_report["cases"]["train"] == 3
    assert {s["case_id"] for s in dm.data_report["skipped"]} == {"broken", "nolabels", "outside"}
    assert len(next(iter(dm.train_dataloader()))["case_id"]) == 2  # the run goes on
    assert (data_root / "broken.nii.gz").read_bytes() == b"not a nifti at all" * 10  # originals untouched


@pytest.mark.parametrize("n,replicas", [(7, 2), (1, 2), (10, 3), (4, 4)])
def test_sharded_eval_sampler_gives_every_case_exactly_once(n, replicas):
    data = list(range(n))
    shards = [list(ShardedEvalSampler(data, replicas, r)) for r in range(replicas)]
    flat = sum(shards, [])
    assert sorted(flat) == data and len(flat) == len(set(flat))
    assert [len(ShardedEvalSampler(data, replicas, r)) for r in range(replicas)] == [len(s) for s in shards]
    # Lightning replaces any sampler that is not a DistributedSampler; this one it keeps.
    assert isinstance(ShardedEvalSampler(data, replicas, 0), DistributedSampler)
    padded = sum((list(DistributedSampler(data, replicas, r, shuffle=False)) for r in range(replicas)), [])
    assert len(padded) >= n  # the default pads with duplicates when n % replicas != 0


def test_eval_loader_shards_by_rank(data_root, tmp_path, monkeypatch):
    dm = _dm(data_root, tmp_path, test_fraction=0.99)
    ids = dm.case_ids("test")
    seen = []
    for rank in range(2):
        monkeypatch.setattr(dm, "_world", lambda rank=rank: (2, rank))
        seen += [b["case_id"][0] for b in dm.test_dataloader()]
    assert sorted(seen) == sorted(ids) and len(ids) == 3


@pytest.mark.slow
def test_phantom_source_with_worker_processes_is_deterministic(tmp_path):
    pytest.importorskip("spinebench.datamodules.phantom")
    phantom = {"fov_vertebrae": [4, 5], "spacing_mm": 4.0, "metal_rate": 0.0, "anisotropic_rate": 0.0}
    kw = {"source": "phantom", "options": {"n_train": 2, "n_val": 0, "n_test": 1, "seed": 5, "generator": phantom},
          "spacing_mm": 4.0, "num_workers": 2, "crop_size_vox": (16, 16, 16)}
    dms = []
    for name in ("c1", "c2"):
        dm = VertebraDataModule(DataConfig(cache_dir=str(tmp_path / name), **kw))
        dm.prepare_data()  # two worker processes generate the cases
        dm.setup("fit")
        dms.append(dm)
    a, b = dms
    assert a.data_report["cache_hits"] == 3  # prepare_data filled the cache
    assert a.case_ids("test") == ["phantom-s5-200000"]
    np.testing.assert_array_equal(a.entries["train"][1].load_array(), b.entries["train"][1].load_array())
    np.testing.assert_array_equal(a.train_centroids_vox(), b.train_centroids_vox())
    assert 4 <= np.isfinite(a.train_centroids_vox()[0, :, 0]).sum() <= 5
    assert "metal" in a.case_info("phantom-s5-200000").metadata
    batches = list(a.train_dataloader())  # DataLoader worker processes read the cache
    assert sum(len(x["case_id"]) for x in batches) == 2 and batches[0]["image"].shape[2:] == (16, 16, 16)


def test_runner_kwargs_apply_requirements_and_seed_the_shuffle(data_root, tmp_path):
    from spinebench.methods.base import DataRequirements

    base = DataConfig(source="folder", options={"root": str(data_root), "test_fraction": 0.0},
                      cache_dir=str(tmp_path / "cache"), batch_size=1)
    orders = []
    for torch_seed in (0, 1):
        dm = VertebraDataModule(base, requirements=DataRequirements("crop", crop_size_vox=(6, 6, 6)), seed=3)
        dm.setup("fit")
        torch.manual_seed(torch_seed)  # the shuffle follows ``seed``, not the global RNG
        orders.append([b["case_id"][0] for b in dm.train_dataloader()])
        assert dm.config.crop_size_vox == (6, 6, 6) and dm.config.sample_mode == "crop"
    assert orders[0] == orders[1] and sorted(orders[0]) == ["a", "b", "c"]


_DDP_SCRIPT = """
import json, sys
import torch.distributed as dist
import torch.multiprocessing as mp
sys.path.insert(0, {repo!r})

def run(rank):
    from torch.utils.data import DataLoader
    from spinebench.datamodules.samples import ShardedEvalSampler
    dist.init_process_group("gloo", init_method="file://{store}", rank=rank, world_size=2)
    cases = {cases!r}
    # built like the datamodule's eval loaders without a Trainer: the sampler asks the process group
    loader = DataLoader(cases, batch_size=1, sampler=ShardedEvalSampler(cases), collate_fn=lambda b: b)
    mine = [b[0] for b in loader]
    everything = [None, None]
    dist.all_gather_object(everything, mine)
    if rank == 0:
        open({out!r}, "w").write(json.dumps(everything))
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(run, nprocs=2)
"""


@pytest.mark.slow
def test_two_process_gloo_evaluation_sees_every_case_once(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    cases = [f"case{i}" for i in range(5)]
    out = tmp_path / "shards.json"
    script = tmp_path / "ddp_check.py"
    script.write_text(_DDP_SCRIPT.format(repo=str(Path(__file__).resolve().parents[1]), store=str(tmp_path / "store"),
                                         cases=cases, out=str(out)))
    subprocess.run([sys.executable, str(script)], check=True, timeout=180)
    shards = json.loads(out.read_text())
    assert sorted(shards[0] + shards[1]) == cases and not set(shards[0]) & set(shards[1])
    assert [len(s) for s in shards] == [3, 2]  # uneven, no padding duplicate
