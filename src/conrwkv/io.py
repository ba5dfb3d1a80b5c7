"""Safe checkpoint input and output: atomic writes that never clobber, loads that never unpickle.

Writes go to a temporary file in the same folder and are renamed into place, so an interrupted
save leaves the previous file intact. Loads use torch.load(weights_only=True): a file that holds
pickled Python objects is refused with a message naming it.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, write) -> Path:
    """Call write(file_object) on a temporary file beside `path`, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())        # mkstemp's 0600 would surprise whoever shares the run
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write_bytes(path, lambda f: torch.save(obj, f))


def atomic_json_save(obj: Any, path: str | os.PathLike) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    return atomic_write_bytes(path, lambda f: f.write(text.encode()))


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    mmap: bool = False) -> dict[str, torch.Tensor]:
    """Load a flat {name: tensor} checkpoint; refuse anything else with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise ValueError(f"checkpoint {path} contains pickled Python objects, which are not "
                         f"loaded (weights_only=True); only plain tensor dicts are accepted. "
                         f"Detail: {str(err).splitlines()[0]}") from err
    except (RuntimeError, EOFError) as err:
        raise ValueError(f"checkpoint {path} is not a readable PyTorch file "
                         f"(truncated or corrupt?): {err}") from err
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint {path} is not a flat dict of tensors "
                         f"(found {type(obj).__name__})")
    return obj
