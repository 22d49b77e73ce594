"""The plugin mechanism that methods and data sources share: a named registry, filled on first use by the built-in
modules and by the entry points of installed packages, and the renaming of options for one release.

    SOURCES = PluginRegistry("data source", "spinebench.sources", ("spinebench.datamodules.sources.phantom",))
    SOURCES.add("phantom", PhantomSource)      # a duplicate name is refused
    SOURCES.get("phantom")                     # unknown names fail with the list of registered ones

An entry point of the group names a module (importing it registers its plugins) or a callable (called once).
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
import types
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from spinebench.datamodules.errors import InputError

T = TypeVar("T")
_log = logging.getLogger("spinebench")


class PluginRegistry(Generic[T]):
    """Names -> plugins of one kind, in registration order (built-ins first, then entry points, then any
    registered at run time). ``error`` is the ``InputError`` subclass raised for unknown or duplicate names."""

    def __init__(self, kind: str, group: str, builtin_modules: tuple[str, ...], error: type[InputError] = InputError):
        self.kind, self.group, self.builtin_modules, self.error = kind, group, builtin_modules, error
        self._items: dict[str, T] = {}
        self._loaded = False

    def add(self, name: str, item: T) -> T:
        if name in self._items:
            raise self.error(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        self._ensure_loaded()
        try:
            return self._items[name]
        except KeyError:
            raise self.error(
                f"unknown {self.kind} {name!r}; registered {self.kind}s: {', '.join(sorted(self._items)) or '(none)'}"
            ) from None

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style ``pattern``, in registration order."""
        self._ensure_loaded()
        return [n for n in self._items if fnmatch.fnmatchcase(n, pattern)]

    def __contains__(self, name: str) -> bool:
        self._ensure_loaded()
        return name in self._items

    def snapshot(self) -> dict[str, T]:
        """A copy of the registrations (``restore`` puts them back: for tests that register throw-away plugins)."""
        self._ensure_loaded()
        return dict(self._items)

    def restore(self, saved: Mapping[str, T]) -> None:
        self._items.clear()
        self._items.update(saved)

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in self.builtin_modules:
            importlib.import_module(module)
        for ep in entry_points(group=self.group):
            target = ep.load()
            if not isinstance(target, types.ModuleType):
                target()


def rename_options(config_cls: type, options: Mapping[str, Any], where: str,
                   error: type[InputError] = InputError) -> dict[str, Any]:  # fmt: skip
    """``options`` with the renamed ones under their new names (``config_cls.renamed_options``: old -> new), each
    with a one-line deprecation message on stderr (``where``: what goes before an option's name in it, e.g.
    ``methods.di2in.overrides.``). Giving both names of one option is an error."""
    renamed = getattr(config_cls, "renamed_options", {})
    out: dict[str, Any] = {}
    for key, value in options.items():
        new = renamed.get(key)
        if new is None:
            out[key] = value
            continue
        if new in options:
            raise error(f"{where}{key}: renamed to {new}, which is given too; keep only {new}")
        deprecated(f"{where}{key}", new)
        out[new] = value
    return out


def deprecated(old: str, new: str) -> None:
    """The one-line message for an old key that still works in this release."""
    _log.warning("spinebench: %s is deprecated, renamed to %s (the old name goes in spinebench 0.2)", old, new)
