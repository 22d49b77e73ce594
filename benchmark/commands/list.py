"""``spinebench list [PATTERN]``: the registered methods (built-in and plugins) with family and description;
``--sources``: the registered data sources with their options."""

from __future__ import annotations

import argparse
import dataclasses


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "list",
        help="list the registered methods (or data sources)",
        description="List registered methods (built-in families and entry-point group 'spinebench.methods'). "
        "Select one in an experiment YAML with `methods: [{name: NAME, overrides: {...}}]`. With --sources: the "
        "data sources (entry-point group 'spinebench.sources'), selected with `data: {source: NAME, NAME: {...}}`.",
    )
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern, e.g. 'di2in*' (default: all)")
    p.add_argument("--options", action="store_true", help="also print each one's options and their values")
    p.add_argument("--sources", action="store_true", help="list the data sources instead of the methods")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.sources:
        return _list_sources(args)
    from spinebench.methods.registry import MethodRegistryError, get_method_spec, list_methods

    names = list_methods(args.pattern)
    if not names:
        raise MethodRegistryError(f"no method matches {args.pattern!r}; registered methods: {', '.join(list_methods())}")
    specs = [get_method_spec(n) for n in names]
    width_name = max(len(s.name) for s in specs)
    width_family = max(len(s.family) for s in specs)
    for spec in specs:
        print(f"{spec.name:<{width_name}}  {spec.family:<{width_family}}  {spec.description}")
        if args.options:
            config = spec.config()
            for f in dataclasses.fields(config):
                mark = "*" if f.name in spec.overrides else " "
                print(f"    {mark} {f.name} = {getattr(config, f.name)!r}")
    if args.options:
        print("(* = set by the registered variant)")
    return 0


def _list_sources(args: argparse.Namespace) -> int:
    from spinebench.datamodules.errors import InputError
    from spinebench.datamodules.sources import get_source, list_sources

    names = list_sources(args.pattern)
    if not names:
        raise InputError(f"no data source matches {args.pattern!r}; registered data sources: "
                         f"{', '.join(list_sources())}")
    width = max(len(n) for n in names)
    for name in names:
        cls = get_source(name)
        summary = (cls.__doc__ or "").strip().split("\n\n")[0]
        print(f"{name:<{width}}  {' '.join(summary.split())}")
        if args.options:
            for f in dataclasses.fields(cls.Options):
                print(f"    {f.name} = {getattr(cls.Options(), f.name)!r}")
    return 0
