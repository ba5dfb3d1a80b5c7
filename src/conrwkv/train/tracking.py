"""Experiment tracking in Weights & Biases (--wandb PROJECT), beside the CSV and TensorBoard logs.

- The wandb run is named after proj_dir's folder and holds the full run configuration (what
  run.json holds: model, training, speech settings, processes, precision, the effective batch).
- Mode: WANDB_MODE when the user set it (online, offline, disabled); otherwise online only where
  wandb credentials are configured (WANDB_API_KEY, or an api.wandb.ai entry in ~/.netrc that
  `wandb login` writes), else offline. Training machines often have no network, and an online
  run without credentials would stop to ask for a key; an offline run writes its files under
  proj_dir/wandb, and `wandb sync proj_dir/wandb/offline-run-*` uploads them later.
- A resumed run continues the same wandb run: its id is kept in proj_dir/wandb-run-id, written
  by the first launch (by the first process only: the others log nothing to wandb).
- wandb is an optional dependency, imported only when --wandb is given.
"""

from __future__ import annotations

import importlib.util
import netrc
import os
import secrets
from pathlib import Path

from ..io import atomic_write_bytes

RUN_ID_FILE = "wandb-run-id"


def wandb_mode() -> str:
    """WANDB_MODE as set, else online with credentials and offline without (module docstring)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        has_login = netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        has_login = False
    return "online" if has_login else "offline"


def _run_id(proj_dir: Path) -> str | None:
    """The run's wandb id, created at its first launch; None on processes other than the first,
    which must not write it (they log nothing to wandb anyway)."""
    from lightning.pytorch.utilities import rank_zero_only

    path = proj_dir / RUN_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    if rank_zero_only.rank != 0:
        return None
    run_id = secrets.token_hex(6)            # what wandb accepts as an id: [a-z0-9], unique
    atomic_write_bytes(path, lambda f: f.write(f"{run_id}\n".encode()))
    return run_id


def wandb_logger(project: str, proj_dir: Path, config: dict):
    """Lightning's WandbLogger for --wandb `project`: named after proj_dir, config logged."""
    if importlib.util.find_spec("wandb") is None:
        raise ValueError("--wandb needs the wandb package: pip install wandb (or pip install -e '.[track]')")
    from lightning.pytorch.loggers import WandbLogger

    proj_dir.mkdir(parents=True, exist_ok=True)
    return WandbLogger(project=project, name=proj_dir.resolve().name, save_dir=str(proj_dir),
                       id=_run_id(proj_dir), config=config, mode=wandb_mode())


def finish_wandb(trainer) -> None:
    """Close the wandb run of this fit (its files complete; a next fit in this process starts its
    own run instead of reusing this one)."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            logger.experiment.finish()
