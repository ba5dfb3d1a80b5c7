"""Names of the files a run writes into proj_dir, and finding them again: `<name>-step<N>.pth`
weights (with their `.json` record) and `checkpoints/step<N>.ckpt` resumable checkpoints.
Without Lightning, so that what only looks for files (a dry run, the ablation table) starts fast.
"""

from __future__ import annotations

import re
from pathlib import Path

RESUME_DIR = "checkpoints"
_RESUME_NAME = re.compile(r"^step(\d+)\.ckpt$")


def weights_path(proj_dir: str | Path, name: str, step: int) -> Path:
    return Path(proj_dir) / f"{name}-step{step:06d}.pth"


def resume_path(proj_dir: str | Path, step: int) -> Path:
    return Path(proj_dir) / RESUME_DIR / f"step{step}.ckpt"


def resume_checkpoints(proj_dir: str | Path) -> list[Path]:
    """The resumable checkpoints in proj_dir/checkpoints, newest (highest step) first."""
    folder = Path(proj_dir) / RESUME_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _RESUME_NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def latest_weights(proj_dir: str | Path, name: str) -> Path | None:
    pattern = re.compile(rf"^{re.escape(name)}-step(\d+)\.pth$")
    folder = Path(proj_dir)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.match(p.name))]
    return max(found)[1] if found else None
