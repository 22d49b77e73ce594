"""Building blocks of a cell: seeding and threads, the method and datamodule of an entry, the Lightning Trainer,
checkpoint weights. Used by ``benchmark.cell`` (training and evaluation), ``benchmark.units`` and ``predict``."""

from __future__ import annotations

import pickle
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from spinebench.benchmark.callbacks import AtomicCheckpointIO, ProgressLines
from spinebench.benchmark.config import ExperimentConfig, MethodEntry, TrainerConfig
from spinebench.benchmark.threads import choose_threads
from spinebench.datamodules.datamodule import VertebraDataModule
from spinebench.datamodules.errors import InputError
from spinebench.datamodules.labels import get_label_set
from spinebench.methods.registry import get_method_spec


def set_determinism(seed: int, trainer_cfg: TrainerConfig, processes: int = 1) -> None:
    """Seed every RNG (and data-loader workers) and set torch's thread count; deterministic kernels are switched
    on by the Trainer. ``processes``: how many processes of this job share the machine (``benchmark.schedule``)."""
    L.seed_everything(seed, workers=True, verbose=False)
    if trainer_cfg.accelerator in ("cpu", "auto"):
        # trainer.num_threads, or the free cores shared among the job's processes (benchmark.threads): small 3D
        # convs on a 2-core machine with one core busy ran 6.6x slower on two threads than on one
        torch.set_num_threads(choose_threads(trainer_cfg.num_threads, processes))


def build_method(cfg: ExperimentConfig, entry: MethodEntry):
    return get_method_spec(entry.name).module_cls(cfg.method_config(entry))


def build_datamodule(cfg: ExperimentConfig, method, data=None):
    """The shared datamodule of ``data`` (default: the run's), configured from the method's data requirements."""
    return VertebraDataModule((data or cfg.data).configure_for(method.data_requirements()))


def label_names(cfg: ExperimentConfig) -> tuple[str, ...]:
    return tuple(get_label_set(cfg.data.label_set).names)


def quiet_lightning() -> None:
    """Lightning's info lines (GPU available, tips, "fit stopped") and known-harmless warnings off: the runner
    prints its own progress (cell i/N, the rich bar, the leaderboard)."""
    import logging
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (".*LeafSpec.*", ".*val_check_interval.*", ".*does not have many workers.*",
                    ".*the number of training batches.*", ".*smaller than the logging interval.*",
                    ".*Checkpoint directory .* exists and is not empty.*", ".*predict_dataloader.*"):
        warnings.filterwarnings("ignore", message=message)


def build_trainer(
    trainer_cfg: TrainerConfig,
    *,
    callbacks: Sequence[L.Callback] = (),
    loggers: Sequence[Any] = (),
    default_root_dir: Path | None = None,
    progress: bool = True,
    for_eval: bool = False,
    label: str = "training",
) -> L.Trainer:
    """``progress``: this process may draw a progress bar (a terminal, one process); otherwise a training with
    ``enable_progress_bar`` prints a line every 30 s (``ProgressLines``). ``label`` names the cell in both."""
    quiet_lightning()
    strategy = trainer_cfg.strategy
    if strategy == "auto" and (trainer_cfg.devices > 1 or trainer_cfg.num_nodes > 1):
        strategy = "ddp"
    show_bar = progress and trainer_cfg.enable_progress_bar and sys.stdout.isatty()
    cbs = list(callbacks)
    if show_bar:
        cbs.append(_progress_bar(label, trainer_cfg))
    elif trainer_cfg.enable_progress_bar and not for_eval:
        cbs.append(ProgressLines(label))
    deterministic: bool | str = trainer_cfg.deterministic
    if deterministic and trainer_cfg.accelerator not in ("cpu",):
        deterministic = "warn"  # some CUDA kernels (trilinear upsampling backward) have no deterministic version
    kwargs: dict[str, Any] = dict(
        accelerator=trainer_cfg.accelerator,
        devices=trainer_cfg.devices,
        num_nodes=trainer_cfg.num_nodes,
        strategy=strategy,
        precision=trainer_cfg.precision,
        deterministic=deterministic,
        callbacks=cbs,
        logger=list(loggers) if loggers else False,
        enable_progress_bar=show_bar,
        enable_model_summary=False,
        default_root_dir=str(default_root_dir) if default_root_dir else None,
        plugins=[AtomicCheckpointIO()],
    )
    if not for_eval:
        kwargs.update(
            max_epochs=trainer_cfg.max_epochs,
            max_steps=trainer_cfg.max_steps,
            max_time=trainer_cfg.max_time,
            limit_train_batches=trainer_cfg.limit_train_batches,
            limit_val_batches=trainer_cfg.limit_val_batches,
            val_check_interval=trainer_cfg.val_check_interval,
            check_val_every_n_epoch=trainer_cfg.check_val_every_n_epoch,
            accumulate_grad_batches=trainer_cfg.accumulate_grad_batches,
            gradient_clip_val=trainer_cfg.gradient_clip_val,
            log_every_n_steps=trainer_cfg.log_every_n_steps,
            num_sanity_val_steps=0,
        )
    else:
        kwargs.update(enable_checkpointing=False)
    return L.Trainer(**kwargs)


def read_checkpoint(path: Path) -> dict:
    """A checkpoint's contents, loaded with ``weights_only=True``: tensors and plain Python values only, so a
    checkpoint cannot run code. One that holds anything else is refused, naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a plain checkpoint (it holds more than tensors and plain values: "
                         f"{reason}); refusing to load it") from None


def _progress_bar(label: str, trainer_cfg: TrainerConfig):
    """Lightning's rich bar, titled with the cell and, for a step budget, the steps (not "Epoch k/999")."""
    from lightning.pytorch.callbacks import RichProgressBar

    class CellBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            if trainer_cfg.max_steps > 0:
                return f"{label}: step {self.trainer.global_step}/{trainer_cfg.max_steps} at this epoch's start"
            return f"{label}: " + super()._get_train_description(current_epoch)

    return CellBar(leave=False)


def _checkpoint_step(path: Path) -> int | None:
    if not path.is_file():
        return None
    return int(read_checkpoint(path).get("global_step", 0))


def load_weights(method, checkpoint: Path, shared: bool = False) -> None:
    """Load a checkpoint's weights into ``method`` (whose shape prior is already fitted).

    ``shared``: the checkpoint may come from another cell of the same training unit (``benchmark.schedule``),
    whose inference-only buffers (e.g. message-passing kernels) differ; those are kept as ``fit_shape_prior``
    made them, and every other tensor must match by name.
    """
    ckpt = read_checkpoint(checkpoint)
    if not shared:
        method.load_state_dict(ckpt["state_dict"])
        return
    state, theirs = method.state_dict(), ckpt["state_dict"]
    wrong = sorted(k for k in set(state) ^ set(theirs) if k.startswith("net."))
    if wrong:
        raise RuntimeError(f"checkpoint {checkpoint} does not fit {type(method).__name__}: {', '.join(wrong[:5])}")
    method.load_state_dict({k: theirs.get(k, v) for k, v in state.items()})


def parameter_count(method) -> int:
    return int(sum(p.numel() for p in method.parameters()))
