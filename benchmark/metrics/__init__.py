"""Shared metrics: torch functional layer and torchmetrics classes (conventions: ``leaderboard.metrics``)."""

from spinebench.benchmark.metrics.modules import LocalizationIdentification, MultiLabelMeanAP

__all__ = ["LocalizationIdentification", "MultiLabelMeanAP"]
