"""Safe file input and output: atomic writes that never clobber, loads that never unpickle, and
reads of JSON and text files whose errors name the file (and line).

Writes go to a temporary file in the same folder and are renamed into place, so an interrupted
save leaves the previous file intact. Checkpoint loads use torch.load(weights_only=True) and turn
whatever a bad file makes torch raise into one ValueError that says which of three things the
file is: not a PyTorch checkpoint at all, a PyTorch file holding Python objects other than
tensors (never loaded: unpickling them could run code), or a truncated / corrupt one. Loaded
tensors must be finite: a NaN or inf weight would only show up later as a NaN loss.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

# torch is imported inside the checkpoint functions: the data tools (datanew.py, dataset2.py)
# use this module's other helpers and start two seconds sooner without it.
if TYPE_CHECKING:
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
    import torch

    return atomic_write_bytes(path, lambda f: torch.save(obj, f))


def atomic_json_save(obj: Any, path: str | os.PathLike) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    return atomic_write_bytes(path, lambda f: f.write(text.encode()))


# The first bytes of the two layouts torch.save has written: a zip archive (PyTorch >= 1.6) and
# the legacy format, which starts with a pickle of torch's magic number 0x1950a86a20f9469cfc6c:
# PROTO 2 or 3 (the protocols torch's weights-only unpickler reads), then LONG1 of 10 bytes.
ZIP_MAGIC = b"PK\x03\x04"
LEGACY_PROTOCOLS = (2, 3)
LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
# torch's weights-only unpickler names the global it refused in its message.
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")
_FINITE_CHUNK = 1 << 24     # elements checked at a time: bounds the temporary mask to 16 MB


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    mmap: bool = False, finite: bool = True) -> dict[str, torch.Tensor]:
    """Load a flat {name: tensor} checkpoint of finite values; refuse anything else with a
    ValueError naming the file (FileNotFoundError when there is none). `finite=False` skips
    the pass over every value, for a caller that reads only names and shapes."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(2 + len(LEGACY_MAGIC))
    is_zip = head.startswith(ZIP_MAGIC)
    is_legacy = (len(head) == 2 + len(LEGACY_MAGIC) and head[0] == 0x80
                 and head[1] in LEGACY_PROTOCOLS and head[2:] == LEGACY_MAGIC)
    if not (is_zip or is_legacy):
        what = "an empty file" if not head else f"it starts with {head[:8]!r}"
        raise ValueError(f"checkpoint {path} is not a PyTorch checkpoint ({what}; torch.save "
                         f"writes a zip archive, or its legacy pickle format)")
    try:
        # torch can memory-map only the zip layout; a legacy file is read into memory.
        obj = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError as err:
        refused = _REFUSED_GLOBAL.search(str(err))
        if refused is None:
            raise ValueError(f"checkpoint {path} is a truncated or corrupt PyTorch file (its "
                             f"pickled index cannot be read)") from err
        raise ValueError(f"checkpoint {path} is a PyTorch file that holds Python objects other "
                         f"than tensors ({refused.group(1)}); it is never loaded, because "
                         f"unpickling objects can run code: save a plain {{name: tensor}} dict "
                         f"instead") from err
    except Exception as err:       # torch raises RuntimeError, OSError, EOFError, KeyError, ...
        raise ValueError(f"checkpoint {path} is a truncated or corrupt PyTorch file "
                         f"({type(err).__name__}: {_one_line(err)})") from err
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint {path} is not a flat dict of tensors "
                         f"(found {type(obj).__name__})")
    if finite:
        check_finite(obj, str(path))
    return obj


def check_finite(tensors: dict[str, torch.Tensor], source: str) -> None:
    """Raise a ValueError naming `source` and the first tensor holding a NaN or an infinity."""
    import torch

    for name, tensor in tensors.items():
        if not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        for chunk in tensor.detach().reshape(-1).split(_FINITE_CHUNK):
            if not bool(torch.isfinite(chunk).all()):
                bad = chunk[~torch.isfinite(chunk)][0].item()
                raise ValueError(f"{source}: tensor {name!r} holds non-finite values ({bad}); "
                                 f"a model trained or run from it would give NaN losses")


def _one_line(err: BaseException) -> str:
    """The first line of an error message, without torch's advice to load with
    weights_only=False (which this module must never suggest)."""
    lines = str(err).strip().splitlines()
    first = lines[0].strip() if lines else ""
    return "no detail" if not first or "weights_only" in first else first


def parse_json(data: bytes | str, source: str, what: str, required: Iterable[str] = ()) -> dict:
    """The JSON object in `data` (read from `source`, which is `what`), holding every key in
    `required`; a ValueError naming `source` otherwise."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        obj = json.loads(text)
    except UnicodeDecodeError as err:
        raise ValueError(f"{source}: {what} is not UTF-8 text (a bad byte at offset "
                         f"{err.start})") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{source}: {what} is not valid JSON (line {err.lineno}, column "
                         f"{err.colno}: {err.msg})") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: {what} must hold a JSON object, found {type(obj).__name__}")
    return require_keys(obj, required, source, what)


def require_keys(obj: dict, required: Iterable[str], source: str, what: str) -> dict:
    """`obj` itself when it holds every key in `required`; a ValueError naming `source` otherwise."""
    missing = [key for key in required if key not in obj]
    if missing:
        raise ValueError(f"{source}: {what} lacks the keys {missing}; it was not written by "
                         f"this project, or is damaged")
    return obj


def read_json(path: str | os.PathLike, what: str, required: Iterable[str] = ()) -> dict:
    """The JSON object in the file `path` (`what` it is, for messages, e.g. "Markov data
    meta.json"), holding every key in `required`; a ValueError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    return parse_json(path.read_bytes(), str(path), what, required)


def text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(line number from 1, line without its end) of a UTF-8 text file; a line that is not
    UTF-8 raises a ValueError naming the file and the line."""
    path = Path(path)
    for lineno, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            yield lineno, raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte {raw[err.start]:#04x} at "
                             f"column {err.start + 1}); save the file as UTF-8") from None
