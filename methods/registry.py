"""The method registry: a method variant is a name bound to one module class, its config class and overrides.

Variants of one family are registrations of the same class with different overrides, so an ablation is
readable as the difference between two override sets. Built-in families are imported explicitly in
``_BUILTIN_MODULES``; third-party packages add methods through the entry-point group ``spinebench.methods``
(each entry point names a module or a callable; loading it registers its methods).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from spinebench.datamodules import plugins
from spinebench.datamodules.errors import InputError
from spinebench.datamodules.plugins import PluginRegistry

ENTRY_POINT_GROUP = "spinebench.methods"

# Built-in method families, imported on first use of the registry.
_BUILTIN_MODULES: tuple[str, ...] = ("spinebench.methods.di2in", "spinebench.methods.resml")


class MethodRegistryError(InputError):
    """An unknown method name or override key, or a duplicate registration.

    An ``InputError``, so the CLI reports it in one line (exit 2) without importing the methods package.
    """


@dataclass(frozen=True)
class MethodSpec:
    name: str
    family: str
    description: str
    module_cls: type
    config_cls: type
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def config(self, **overrides: Any):
        """The variant's config with ``overrides`` applied on top of the registered ones."""
        overrides = rename_options(self.config_cls, overrides, f"method {self.name!r} option ")
        _check_keys(self, overrides)
        return self.config_cls(**{**self.overrides, **overrides})


METHODS: PluginRegistry[MethodSpec] = PluginRegistry("method", ENTRY_POINT_GROUP, _BUILTIN_MODULES, MethodRegistryError)


def rename_options(config_cls: type, options: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``plugins.rename_options`` for a method config (a clash of old and new name is a ``MethodRegistryError``)."""
    return plugins.rename_options(config_cls, options, where, MethodRegistryError)


def _check_keys(spec: MethodSpec, overrides: Mapping[str, Any]) -> None:
    valid = [f.name for f in dataclasses.fields(spec.config_cls)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise MethodRegistryError(
            f"unknown option(s) {', '.join(unknown)} for method {spec.name!r}; valid options: {', '.join(valid)}"
        )


def register_method(
    name: str, *, module_cls: type, config_cls: type, family: str, description: str, **overrides: Any
) -> MethodSpec:
    """Register ``name`` as ``module_cls(config_cls(**overrides))``. Duplicate names are rejected."""
    if not dataclasses.is_dataclass(config_cls):
        raise MethodRegistryError(f"config class of method {name!r} must be a dataclass, got {config_cls!r}")
    spec = MethodSpec(name, family, description, module_cls, config_cls, dict(overrides))
    _check_keys(spec, overrides)
    if getattr(module_cls, "config_cls", None) is None:
        module_cls.config_cls = config_cls  # lets load_from_checkpoint rebuild it from saved hyperparameters
    return METHODS.add(name, spec)


def get_method_spec(name: str) -> MethodSpec:
    return METHODS.get(name)


def list_methods(pattern: str = "*") -> list[str]:
    """Registered method names matching a shell-style ``pattern``, in registration order."""
    return METHODS.names(pattern)


def method_config(name: str, **overrides: Any):
    """The resolved config dataclass of ``name`` with ``overrides`` (validated, nothing built)."""
    return get_method_spec(name).config(**overrides)


def create_method(name: str, **overrides: Any):
    """Build the LightningModule of method ``name`` with ``overrides`` applied to its config."""
    spec = get_method_spec(name)
    return spec.module_cls(spec.config(**overrides))
