"""Learning-rate schedules: warm-up then cosine decay, stepped per optimiser step inside Lightning."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from spinebench.methods.di2in import DI2INConfig
from spinebench.methods.resml import ResMLConfig
from spinebench.methods.schedules import cosine_schedule, warmup_cosine_factor


def test_warmup_then_cosine_to_zero():
    assert warmup_cosine_factor(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine_factor(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine_factor(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine_factor(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-12)
    factors = [warmup_cosine_factor(s, 100, 10) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))  # monotone decay after warm-up
    assert warmup_cosine_factor(0, 50, 0) == 1.0 and math.isclose(warmup_cosine_factor(25, 50, 0), 0.5)


def test_cosine_schedule_steps_the_optimizer_rate():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = cosine_schedule(opt, total_steps=4, warmup_steps=2)
    assert sched["interval"] == "step"
    rates = []
    for _ in range(4):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched["scheduler"].step()
    assert rates == pytest.approx([1.0, 2.0, 2.0, 1.0])


def test_unknown_schedule_names_the_option():
    with pytest.raises(ValueError, match="lr_schedule"):
        DI2INConfig(lr_schedule="linear")
    with pytest.raises(ValueError, match="lr_schedule"):
        ResMLConfig(preset="small", lr_schedule="step")


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.rates: list[float] = []

    def training_step(self, batch, batch_idx):
        self.rates.append(self.optimizers().param_groups[0]["lr"])
        return (self.w * batch[0]).sum() ** 2

    def configure_optimizers(self):
        from spinebench.methods.schedules import total_training_steps

        opt = torch.optim.SGD(self.parameters(), lr=1.0)
        return {"optimizer": opt, "lr_scheduler": cosine_schedule(opt, total_training_steps(self), 2)}


def test_lightning_steps_the_schedule_over_max_steps():
    module = _Tiny()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(3, 1)), batch_size=1)
    L.Trainer(max_steps=6, max_epochs=10, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(module, data)
    expected = [warmup_cosine_factor(s, 6, 2) for s in range(6)]
    assert module.rates == pytest.approx(expected)
