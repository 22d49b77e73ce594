"""The CLI, run/ablate/tune orchestration, metrics and evaluation, MLflow and manifests."""
