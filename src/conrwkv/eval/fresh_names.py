"""Names for evaluation outputs that no earlier evaluation used: results are never replaced.

A second evaluation of the same weights (another beam size, another corpus, or the same
settings run again) must not overwrite the first one's files. The first run gets the plain
name; later runs get `-2`, `-3`, ... A name is claimed by creating it (mkdir, or an O_EXCL
open), which the file system does atomically, so two evaluations started at the same moment
cannot both take the same name.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path


def _numbered(name: str, n: int) -> str:
    return name if n == 1 else f"{name}-{n}"


def new_folder(parent: str | os.PathLike, name: str) -> Path:
    """Create and return `parent/name`, or `parent/name-2`, `-3`, ... if that exists."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        folder = parent / _numbered(name, n)
        try:
            folder.mkdir(exist_ok=False)
        except FileExistsError:
            continue
        return folder


def new_files(stem: str | os.PathLike, suffixes: Sequence[str]) -> list[Path]:
    """Claim `<stem><suffix>` for every suffix, all with the same counter (`<stem>-2<suffix>`,
    ... when one of them exists), so files that belong together keep one name.

    Each claimed file is created empty; the caller fills it (an atomic write replaces it)."""
    if not suffixes:
        raise ValueError("new_files: no suffixes given")
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        base = stem.with_name(_numbered(stem.name, n))
        claimed: list[Path] = []
        try:
            for suffix in suffixes:
                path = base.with_name(base.name + suffix)
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
                claimed.append(path)
        except FileExistsError:
            # One name of this number is taken: give back the empty files claimed for it.
            for path in claimed:
                path.unlink()
            continue
        return claimed
