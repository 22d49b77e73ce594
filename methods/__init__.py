"""Method plugins: the registry and one module per method family."""

from spinebench.methods.base import DataRequirements, VertebraMethod, VolumePrediction
from spinebench.methods.registry import create_method, get_method_spec, list_methods, method_config, register_method

__all__ = [
    "DataRequirements",
    "VertebraMethod",
    "VolumePrediction",
    "create_method",
    "get_method_spec",
    "list_methods",
    "method_config",
    "register_method",
]
