"""Progress a person can follow without a terminal: one line per interval with step/total, loss, rate and ETA."""

from __future__ import annotations

import io

import lightning as L
import torch

from spinebench.benchmark.callbacks import ProgressLines, duration


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))

    def training_step(self, batch, batch_idx):
        loss = ((self.w - batch[0]) ** 2).mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_progress_lines_name_the_cell_the_steps_the_loss_the_rate_and_the_eta(tmp_path):
    out = io.StringIO()
    data = torch.utils.data.DataLoader([torch.zeros(3)] * 8, batch_size=1)
    trainer = L.Trainer(max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[ProgressLines("di2in seed 0", interval_s=0.0, stream=out)])
    trainer.fit(_Tiny(), data)
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 and lines[0].startswith("  di2in seed 0: step 1/5, loss ")
    assert lines[-1].startswith("  di2in seed 0: step 5/5") and "steps/s, ETA 0 s" in lines[-1]


def test_durations_read_like_a_person_writes_them():
    assert [duration(s) for s in (4.2, 65, 3725)] == ["4 s", "1 min 05 s", "1 h 02 min"]
