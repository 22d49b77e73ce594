"""GPU figures: whole-case inference and training steps of both families at the paper presets, float32 against
bf16 autocast (AMP), and a Lightning fit with DDP over NCCL on every GPU of the machine.

Needs CUDA. On a machine without it the script says so and records nothing (exit 0, so ``make bench`` goes on);
``--cpu-smoke`` runs every code path with tiny sizes on the CPU and records nothing (a check of the script).

Cases are 2 mm volumes: a partial spine of 160 x 112 x 112 voxels and a whole spine of 288 x 160 x 160. Network
weights are the seeded initial ones (timing does not depend on training); the DI2IN decoders (message passing,
sparsity) are fitted on synthetic 26-level chains. Inference is ``predict_volume`` end to end (network, decoding,
clustering), median of several calls after a warm-up. Training steps are the methods' own ``training_loss`` with
Adam, synchronised, median of the timed steps. "float32" is torch's default on CUDA (cuDNN convolutions may use
TF32). The DDP row runs ``benchmark.builders.build_trainer`` as ``spinebench run`` does with ``trainer.accelerator:
gpu``, ``strategy: ddp``, ``precision: bf16-mixed`` (deterministic kernels where they exist), on synthetic batches,
with one whole-volume validation on the GPU, with and without deterministic kernels; its figure is the steps/s
between step 5 and the last step. The
reference of the papers: about 3 s per case on a 12 GB Titan X (Yang et al. 2017, DI2IN+MP+Sparsity).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO_ROOT, flops, write_fragment  # first: sets the allocator's huge pages

import numpy as np
import torch

sys.path.insert(0, str(REPO_ROOT))

from spinebench.methods.registry import create_method  # noqa: E402

VOLUMES = {"partial spine": (160, 112, 112), "whole spine": (288, 160, 160)}
SMOKE_VOLUMES = {"partial spine": (40, 32, 32)}
K = 26


def synthetic_chains(n: int = 40, seed: int = 0) -> np.ndarray:
    """(n, 26, 3) training centroids in 2 mm voxels: a gently curved chain with spacing growing caudally."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, K, 3))
    for i in range(n):
        steps = np.linspace(8.0, 14.0, K) * rng.uniform(0.9, 1.1)
        z = np.concatenate([[0.0], np.cumsum(steps[:-1])])
        y = 40.0 + 6.0 * np.sin(z / 90.0 + rng.uniform(-0.3, 0.3))
        x = 40.0 + rng.normal(0.0, 1.0, K)
        out[i] = np.stack([z + rng.uniform(0, 20), y, x], axis=1)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(name: str, preset: str, device: torch.device, **overrides):
    torch.manual_seed(0)
    method = create_method(name, preset=preset, **overrides)
    method.fit_shape_prior(synthetic_chains())
    return method.to(device)


def inference_rows(device: torch.device, preset: str, volumes: dict, repeat: int) -> list[dict]:
    rows = []
    # resml: crops per pass left to the method (16 on a GPU) and at the CPU's 2
    specs = [("di2in_mp_sparsity", {}), ("resml_cls_bilstm", {}), ("resml_cls_bilstm", {"inference_batch_size": 2}),
             ("resml_loc", {})]
    for name, overrides in specs:
        method = build(name, preset, device, **overrides).eval()
        for where, shape in volumes.items():
            image = torch.randn(1, 1, *shape, device=device)
            for amp in (False, True):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    seconds = median_seconds(lambda: method.predict_volume(image), device, repeat)
                rows.append({"method": name, "overrides": overrides, "volume": where, "shape": shape,
                             "precision": "bf16 autocast" if amp else "float32", "seconds": seconds})
                print(json.dumps(rows[-1]), flush=True)
        del method
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def volume_batch(shape, batch: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    centroids = torch.rand(batch, K, 3, generator=g) * torch.tensor(shape, dtype=torch.float32)
    return {"image": torch.randn(batch, 1, *shape, generator=g).to(device),
            "centroids_vox": centroids.to(device), "present": (torch.rand(batch, K, generator=g) > 0.4).to(device)}


def training_rows(device: torch.device, preset: str, small: bool, steps: int) -> list[dict]:
    rows = []
    specs = [("di2in", {"sigma_vox": 1.5, "foreground_weight": 50.0}, None, 2),
             ("resml_cls_bilstm", {}, "crop", 8)]
    for name, overrides, mode, batch_size in specs:
        method = build(name, preset, device, **overrides).train()
        shape = tuple(method.config.crop_size_vox) if mode == "crop" else VOLUMES["partial spine"]
        if small:
            shape = tuple(min(s, 32) for s in shape) if mode == "crop" else SMOKE_VOLUMES["partial spine"]
        batch = volume_batch(shape, batch_size, device)
        optimizer = torch.optim.Adam(method.parameters(), lr=1e-4)
        for amp in (False, True):
            def step():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    loss = method.training_loss(batch)["loss"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            seconds = median_seconds(step, device, steps, warmup=3)
            gflop = flops(lambda: method.training_loss(batch)["loss"].backward()) / 1e9
            optimizer.zero_grad(set_to_none=True)
            rows.append({"method": name, "batch": f"{batch_size} x {'x'.join(map(str, shape))}",
                         "precision": "bf16 autocast" if amp else "float32", "seconds": seconds,
                         "steps_per_s": 1.0 / seconds, "tflops": gflop / seconds / 1e3})
            print(json.dumps(rows[-1]), flush=True)
        del method, optimizer, batch
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


class _Synthetic(torch.utils.data.Dataset):
    def __init__(self, shape, n: int, crop: bool) -> None:
        self.shape, self.n, self.crop = shape, n, crop

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        item = {"image": torch.randn(1, *self.shape, generator=g),
                "centroids_vox": torch.rand(K, 3, generator=g) * torch.tensor(self.shape, dtype=torch.float32),
                "present": torch.rand(K, generator=g) > 0.4, "spacing_mm": torch.full((3,), 2.0),
                "case_id": f"synthetic-{i}"}
        if self.crop:
            item["crop_origin_vox"] = torch.zeros(3, dtype=torch.long)
        return item


class _StepClock:
    """Lightning callback: wall seconds between the end of step ``start`` and the last step (synchronised)."""

    def __init__(self, start: int = 5) -> None:
        import lightning as L

        class Clock(L.Callback):
            def __init__(inner) -> None:
                inner.marks: dict[int, float] = {}
                inner.backend = "none"

            def on_train_batch_end(inner, trainer, module, outputs, batch, batch_idx) -> None:
                if torch.distributed.is_initialized():
                    inner.backend = str(torch.distributed.get_backend())
                if trainer.global_step >= start:
                    sync(module.device)
                    inner.marks[trainer.global_step] = time.perf_counter()

        self.callback = Clock()

    def steps_per_second(self) -> float:
        marks = sorted(self.callback.marks.items())
        (s0, t0), (s1, t1) = marks[0], marks[-1]
        return (s1 - s0) / (t1 - t0)


def ddp_fit(preset: str, small: bool, steps: int) -> list[dict]:
    """Lightning fit with DDP over NCCL on every GPU (run in its own process: Lightning re-launches the script per
    device)."""
    from torch.utils.data import DataLoader

    from spinebench.benchmark.builders import build_trainer
    from spinebench.benchmark.config import TrainerConfig

    cuda = torch.cuda.is_available()
    devices = torch.cuda.device_count() if cuda else 1
    rows = []
    runs = [(name, overrides, batch_size, deterministic)
            for name, overrides, batch_size in (("di2in", {"sigma_vox": 1.5, "foreground_weight": 50.0}, 2),
                                                ("resml_cls_bilstm", {}, 8))
            for deterministic in (True, False)]
    for name, overrides, batch_size, deterministic in runs:
        method = build(name, preset, torch.device("cpu"), **overrides)
        crop = method.data_requirements().sample_mode == "crop"
        shape = tuple(method.config.crop_size_vox) if crop else VOLUMES["partial spine"]
        val_shape = VOLUMES["partial spine"]
        if small:
            shape = tuple(min(s, 32) for s in shape) if crop else SMOKE_VOLUMES["partial spine"]
            val_shape = SMOKE_VOLUMES["partial spine"]
        train = DataLoader(_Synthetic(shape, batch_size * steps * devices, crop), batch_size=batch_size)
        val = DataLoader(_Synthetic(val_shape, 1, False), batch_size=1)
        clock = _StepClock()
        cfg = TrainerConfig(accelerator="gpu" if cuda else "cpu", devices=devices, strategy="ddp",
                            precision="bf16-mixed", max_epochs=1, max_steps=steps, limit_val_batches=1,
                            log_every_n_steps=20, enable_progress_bar=False, deterministic=deterministic)
        with tempfile.TemporaryDirectory() as root:
            trainer = build_trainer(cfg, callbacks=[clock.callback], default_root_dir=Path(root))
            trainer.fit(method, train_dataloaders=train, val_dataloaders=val)
        if trainer.global_rank == 0:
            rows.append({"method": name, "devices": devices, "backend": clock.callback.backend,
                         "deterministic": deterministic,
                         "batch per device": f"{batch_size} x {'x'.join(map(str, shape))}",
                         "steps_per_s": clock.steps_per_second(), "steps": steps})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def conv_ceiling(device: torch.device, small: bool) -> float:
    """TFLOP/s of one large bf16 3x3x3 conv3d (64 -> 64 channels, 4 x 96^3, channels_last_3d), forward."""
    n = 16 if small else 96
    x = torch.randn(4, 64, n, n, n, device=device).contiguous(memory_format=torch.channels_last_3d)
    conv = torch.nn.Conv3d(64, 64, 3, padding=1).to(device).to(memory_format=torch.channels_last_3d)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        seconds = median_seconds(lambda: conv(x), device, 10, warmup=3)
        return flops(lambda: conv(x)) / seconds / 1e12


def markdown(device_name: str, ceiling: float, infer: list[dict], train: list[dict], ddp: list[dict]) -> str:
    def name(row):
        extra = ", ".join(f"{k} {v}" for k, v in row.get("overrides", {}).items())
        return row["method"] + (f" ({extra})" if extra else "")

    lines = ["## GPU", "", f"Device: {device_name}. Paper presets. A large bf16 conv3d (64 -> 64 channels, "
             f"4 x 96³, channels_last_3d) runs at {ceiling:.0f} TFLOP/s here. Reference: about 3 s per case on a "
             "Titan X (Yang et al. 2017).", "", "Inference per case (`predict_volume`, network + decoding):", "",
             "| method | volume | float32 | bf16 autocast |", "|---|---|---|---|"]
    pairs: dict[tuple, dict] = {}
    for row in infer:
        pairs.setdefault((name(row), row["volume"], tuple(row["shape"])), {})[row["precision"]] = row["seconds"]
    for (method, where, shape), t in pairs.items():
        lines.append(f"| {method} | {where} {'×'.join(map(str, shape))} | {t['float32']:.3f} s | "
                     f"**{t['bf16 autocast']:.3f} s** |")
    lines += ["", "Training steps (`training_loss`, backward, Adam):", "",
              "| method | batch | float32 | bf16 autocast |", "|---|---|---|---|"]
    steps: dict[tuple, dict] = {}
    for row in train:
        steps.setdefault((row["method"], row["batch"]), {})[row["precision"]] = row
    for (method, batch), t in steps.items():
        f, b = t["float32"], t["bf16 autocast"]
        lines.append(f"| {method} | {batch} | {f['steps_per_s']:.1f} steps/s ({f['tflops']:.1f} TFLOP/s) | "
                     f"**{b['steps_per_s']:.1f} steps/s** ({b['tflops']:.1f} TFLOP/s) |")
    lines += ["", "Lightning fit, `strategy: ddp`, `precision: bf16-mixed`, with and without `trainer.deterministic` "
              "(on a GPU: deterministic kernels where they exist, a warning where not):", "",
              "| method | devices | backend | batch per device | deterministic | steps/s |", "|---|---|---|---|---|---|"]
    for row in ddp:
        lines.append(f"| {row['method']} | {row['devices']} | {row['backend']} | {row['batch per device']} | "
                     f"{'yes' if row['deterministic'] else 'no'} | {row['steps_per_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU; records nothing")
    parser.add_argument("--ddp-only", metavar="JSON", help="(internal) run the DDP fit and write its rows to JSON")
    parser.add_argument("--copy-to", metavar="DIR", help="also copy the fragment to DIR (e.g. a lent machine's $OUT)")
    args = parser.parse_args()
    small = args.cpu_smoke
    preset = "small" if small else "paper"
    if args.ddp_only:
        rows = ddp_fit(preset, small, steps=8 if small else 25)
        if rows:
            Path(args.ddp_only).write_text(json.dumps(rows))
        return
    if not torch.cuda.is_available() and not small:
        print("[bench] no CUDA device: GPU figures not measured (the old section, if any, stays)")
        return
    device = torch.device("cpu" if small else "cuda")
    device_name = "CPU smoke run" if small else torch.cuda.get_device_name(0)
    ceiling = conv_ceiling(device, small)
    print(f"[bench] {device_name}: bf16 conv3d {ceiling:.1f} TFLOP/s", flush=True)
    infer = inference_rows(device, preset, SMOKE_VOLUMES if small else VOLUMES, repeat=1 if small else 3)
    train = training_rows(device, preset, small, steps=2 if small else 10)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ddp.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--ddp-only", str(out)] + (["--cpu-smoke"] * small)
        done = subprocess.run(cmd, cwd=REPO_ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        ddp = json.loads(out.read_text()) if done.returncode == 0 and out.is_file() else []
    if done.returncode != 0:
        print(f"[bench] the DDP fit failed (exit {done.returncode})", file=sys.stderr)
    text = markdown(device_name, ceiling, infer, train, ddp)
    print(text)
    if small:
        return
    path = write_fragment("gpu", text)
    if args.copy_to:
        Path(args.copy_to, path.name).write_text(path.read_text())
    if not ddp:
        sys.exit(1)


if __name__ == "__main__":
    main()
