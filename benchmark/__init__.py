"""The CLI, run/ablate/tune orchestration, metrics and evaluation, MLflow and manifests."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("spinebench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
