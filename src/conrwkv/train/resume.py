"""Continuing a run in its output folder: which checkpoint, with which settings, by whom.

- `proj_dir/run.json` holds the settings of the run's first launch. A later launch into the same
  folder continues that run, so it must ask for the same run: settings that would change what
  the steps compute (data, model, learning rates, seed, precision, number of processes, ...)
  are compared and a difference is refused with a list of every one. Settings marked
  `resume_may_change` in config.py (max_steps and epochs to extend a run, logging, saving and
  validation intervals, workers) may differ. Without this, a resume silently kept the
  checkpoint's learning rate, or died in a size-mismatch traceback.
- The newest resumable checkpoint is checked before it is used; a damaged one (truncated,
  unreadable) is passed over for the previous one, with a warning naming both.
- One launch at a time writes into a folder: the first process holds an flock on
  `proj_dir/.lock` (released by the kernel however the process ends), and only then removes
  the temporary files that killed launches left behind.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import math
import os
import shutil
from pathlib import Path

from ..config import AsrConfig, ModelConfig, TrainConfig, resume_may_change
from ..io import atomic_json_save, read_json
from .checkpoint import check_resume_checkpoint
from .step_files import RESUME_DIR, resume_checkpoints

log = logging.getLogger(__name__)

RUN_SETTINGS = "run.json"
LOCK = ".lock"
_SECTIONS = {"model": ModelConfig, "train": TrainConfig, "asr": AsrConfig}


# ------------------------------------------------------------------------------ settings
def _comparable(settings: dict) -> dict:
    """As the settings read back from JSON (tuples become lists), with the fields that may
    change on a resume left out."""
    plain = json.loads(json.dumps(settings, default=str))
    # The effective batch (train/batch_size.py) follows from compared settings and the data: it
    # is stated for the reader, and a folder begun before it was stated must still resume.
    plain.pop("batch", None)
    for section, cls in _SECTIONS.items():
        if isinstance(plain.get(section), dict):
            for name in resume_may_change(cls):
                plain[section].pop(name, None)
    return plain


def _settings_added_since(saved: dict, now: dict) -> None:
    """Give `saved` the settings this project gained after the run began, where the launch now
    leaves them at their default: a default asks for what the run did before the setting
    existed, so it is no difference (any other value still is)."""
    for section, cls in _SECTIONS.items():
        before, after = saved.get(section), now.get(section)
        if not (isinstance(before, dict) and isinstance(after, dict)):
            continue
        defaults = {f.name: json.loads(json.dumps(f.default, default=str))
                    for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        for name in after.keys() - before.keys():
            if name in defaults and after[name] == defaults[name]:
                before[name] = after[name]


def _differences(saved, now, where: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(now, dict):
        found = []
        for key in sorted(saved.keys() | now.keys()):
            found += _differences(saved.get(key), now.get(key), f"{where}.{key}" if where else key)
        return found
    if saved == now or (isinstance(saved, float) and isinstance(now, float)
                        and math.isnan(saved) and math.isnan(now)):
        return []
    return [f"{where}: {saved!r} then, {now!r} now"]


def check_run_settings(proj_dir: str | Path, settings: dict) -> None:
    """Refuse to continue the run in proj_dir with settings that differ from its first launch's.

    A folder that holds checkpoints or weights but no run.json was written by an older version
    of this project, whose checkpoints cannot be resumed exactly: refused too."""
    proj = Path(proj_dir)
    path = proj / RUN_SETTINGS
    if not path.is_file():
        earlier = resume_checkpoints(proj) or sorted(proj.glob("*-step*.pth"))
        if earlier:
            raise ValueError(f"{proj} holds {earlier[0].name} but no {RUN_SETTINGS}: it was written "
                             f"by an older version of this project, whose checkpoints do not hold "
                             f"the data position; choose a new --proj_dir")
        return
    saved = read_json(path, "the run's settings (restore the file, or choose a new --proj_dir)")
    saved, settings = _comparable(saved), _comparable(settings)
    _settings_added_since(saved, settings)
    differences = _differences(saved, settings)
    if differences:
        allowed = sorted({n for cls in _SECTIONS.values() for n in resume_may_change(cls)})
        raise ValueError(
            f"{proj} holds a run started with other settings, and a resume would train on with a "
            f"mix of both. Differences: {'; '.join(differences)}. Give the original values to "
            f"continue it, or choose a new --proj_dir for a new run (a resume may change only: "
            f"{', '.join(allowed)})")


def record_run_settings(proj_dir: str | Path, settings: dict) -> None:
    """Write run.json at the run's first launch; later launches keep the first one's."""
    path = Path(proj_dir) / RUN_SETTINGS
    if not path.exists():
        atomic_json_save(settings, path)


# ------------------------------------------------------------------------------ checkpoints
def choose_resume_checkpoint(proj_dir: str | Path) -> Path | None:
    """The newest resumable checkpoint that passes check_resume_checkpoint, or None when the
    folder holds none; damaged newer ones are named in a warning (and left where they are)."""
    damaged = []
    for path in resume_checkpoints(proj_dir):
        try:
            check_resume_checkpoint(path)
        except ValueError as err:
            damaged.append(str(err))
            continue
        if damaged:
            log.warning("the newest checkpoint is damaged: %s; resuming from %s instead",
                        "; ".join(damaged), path)
        return path
    if damaged:
        raise ValueError(f"no checkpoint in {Path(proj_dir) / RESUME_DIR} can be resumed from: "
                         + "; ".join(damaged))
    return None


# ------------------------------------------------------------------------------ one writer
class ProjDirLock:
    """Exclusive use of proj_dir by one launch; taken by the process that writes the files."""

    def __init__(self, proj_dir: str | Path):
        self.proj_dir = Path(proj_dir)
        self._file = None

    def acquire(self) -> None:
        self.proj_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.proj_dir / LOCK, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise ValueError(f"{self.proj_dir} is in use by another training launch ({owner}); "
                             f"wait for it to end or choose another --proj_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def remove_stale_temporaries(proj_dir: str | Path) -> list[Path]:
    """Delete the temporary files (`.<name>.tmp`, `.<name>.<random>.tmp`) that a killed launch
    left in proj_dir and proj_dir/checkpoints. Only the lock holder may call this."""
    removed = []
    for folder in (Path(proj_dir), Path(proj_dir) / RESUME_DIR):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(path)
    if removed:
        log.warning("removed %d temporary files left by an interrupted launch in %s (e.g. %s)",
                    len(removed), proj_dir, removed[0].name)
    return removed
