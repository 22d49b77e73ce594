"""torchmetrics classes over the one metric core, ``leaderboard.metrics`` (conventions documented there)."""

from spinebench.benchmark.metrics.modules import LocalizationIdentification, MultiLabelMeanAP

__all__ = ["LocalizationIdentification", "MultiLabelMeanAP"]
