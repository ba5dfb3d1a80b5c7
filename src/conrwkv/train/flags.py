"""Command-line flags generated from the configuration dataclasses.

Every field becomes `--<name>` with the field's help text, type, choices and default, so a flag
cannot exist without help; each command registers only the fields it reads (conrwkv/cli.py).
Flags left out keep the dataclass default; `given` reports which were typed, so that a shape
read off a checkpoint is only overridden (and checked) where the user asked for it.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Collection


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, title: str,
                        only: Collection[str] | None = None) -> None:
    """Add `--<field>` for every field of `cls`, or for the fields named in `only` (a command
    offers only the flags it reads: any other is an unrecognized argument)."""
    fields = [f for f in dataclasses.fields(cls) if only is None or f.name in only]
    if only is not None:
        unknown = set(only) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"{cls.__name__} has no fields {sorted(unknown)}")
    if not fields:
        return
    group = parser.add_argument_group(title, (cls.__doc__ or "").strip().splitlines()[0])
    hints = typing.get_type_hints(cls)
    for f in fields:
        kind = hints[f.name]
        meta = dict(f.metadata)
        help_text = f"{meta.pop('help')} (default: {f.default!r})"
        kwargs = dict(default=argparse.SUPPRESS, help=help_text, dest=f.name)
        if kind is bool:
            group.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, **kwargs)
        else:
            group.add_argument(f"--{f.name}", type=kind, metavar=kind.__name__.upper(),
                               choices=meta.pop("choices", None), **kwargs)


def take(cls, namespace: argparse.Namespace) -> tuple[object, dict]:
    """(instance of cls from the flags given, {name: value} of the flags given for cls)."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in vars(namespace).items() if k in names}
    return cls(**given), given


def parse_configs(argv: list[str], *classes) -> list:
    """Instances of `classes` from a command line's flags (e.g. a train.py command that another
    program builds), with what the flags leave out at the defaults; flags of other classes (and
    --task, --op) are passed over."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for cls in classes:
        add_dataclass_flags(parser, cls, cls.__name__)
    namespace = parser.parse_known_args(argv)[0]
    return [take(cls, namespace)[0] for cls in classes]
