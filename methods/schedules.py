"""Learning-rate schedules shared by the method families, as Lightning ``lr_scheduler`` configs.

``"constant"``: no schedule. ``"cosine"``: linear warm-up over ``warmup_steps`` optimiser steps from 0 to the
base rate, then cosine decay to 0 at the end of training (``trainer.estimated_stepping_batches``: max_steps, or
max_epochs x batches per epoch), stepped every optimiser step (``torch.optim.lr_scheduler.LambdaLR``).
"""

from __future__ import annotations

import math

import torch

SCHEDULES: tuple[str, ...] = ("constant", "cosine")


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the base rate at optimiser step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int) -> dict:
    """Lightning's scheduler config for ``warmup_cosine_factor``, stepped every optimiser step."""
    total = max(1, int(total_steps))
    warmup = min(int(warmup_steps), total - 1) if total > 1 else 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine_factor(step, total, warmup))
    return {"scheduler": scheduler, "interval": "step", "frequency": 1}


def total_training_steps(module) -> int:
    """Optimiser steps the attached Trainer will take (``estimated_stepping_batches``), at least 1."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None:
        return 1
    steps = trainer.estimated_stepping_batches
    return int(steps) if math.isfinite(steps) and steps > 0 else 1
