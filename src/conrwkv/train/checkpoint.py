"""Checkpoints that never lose work: step-numbered, written atomically, never deleted.

Every save writes, in proj_dir:
- `<name>-step<N>.pth`: the weights the run trained (the whole model when training a language
  model, only the trained tensors in state tuning), as a flat tensor dict that
  `torch.load(weights_only=True)` reads, with `<name>-step<N>.json` beside it (run configuration
  and the step's metrics);
- `checkpoints/step<N>.ckpt`: Lightning's full training state (optimizer, scheduler, step
  counters) to resume from.
A peer trainer deleted every .pth in its output folder before saving; nothing here removes or
overwrites a file: a name that exists already is left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path

import lightning as L
import torch

from ..io import atomic_json_save, atomic_torch_save

RESUME_DIR = "checkpoints"
_RESUME_NAME = re.compile(r"^step(\d+)\.ckpt$")


def weights_path(proj_dir: str | Path, name: str, step: int) -> Path:
    return Path(proj_dir) / f"{name}-step{step:06d}.pth"


def latest_resume_checkpoint(proj_dir: str | Path) -> Path | None:
    """The resumable checkpoint with the highest step in proj_dir/checkpoints, if any."""
    folder = Path(proj_dir) / RESUME_DIR
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _RESUME_NAME.match(p.name))]
    return max(found)[1] if found else None


def latest_weights(proj_dir: str | Path, name: str) -> Path | None:
    pattern = re.compile(rf"^{re.escape(name)}-step(\d+)\.pth$")
    folder = Path(proj_dir)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.match(p.name))]
    return max(found)[1] if found else None


def full_parameters(trainer: L.Trainer, module) -> contextlib.AbstractContextManager:
    """Whole parameters inside the context: under DeepSpeed ZeRO stage 3 each process holds
    only a partition, and the weights file must hold the whole tensors."""
    if getattr(trainer.strategy, "zero_stage_3", False):
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
    return contextlib.nullcontext()


class StepCheckpoint(L.Callback):
    """Save weights + a resumable checkpoint every `every` steps (0: none) and at the end."""

    def __init__(self, proj_dir: str | Path, name: str, every: int, run_config: dict):
        self.proj_dir, self.name, self.every, self.run_config = Path(proj_dir), name, every, run_config
        self.last_saved_step = -1
        self.started = None

    def on_train_start(self, trainer, pl_module):
        # Wall time of this process's training, for the weights' sidecar (a resumed run counts
        # from its resume).
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every and step % self.every == 0 and step != self.last_saved_step:
            self.save(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if trainer.global_step != self.last_saved_step:
            self.save(trainer, pl_module)

    def save(self, trainer: L.Trainer, pl_module) -> None:
        step = trainer.global_step
        self.last_saved_step = step
        resume = self.proj_dir / RESUME_DIR / f"step{step}.ckpt"
        if not resume.exists():
            tmp = resume.with_name(f".{resume.name}.tmp")
            trainer.save_checkpoint(tmp, weights_only=False)    # collective under DeepSpeed
            trainer.strategy.barrier()
            if trainer.is_global_zero:
                os.replace(tmp, resume)
        weights = weights_path(self.proj_dir, self.name, step)
        with full_parameters(trainer, pl_module):        # every rank enters: a collective
            state = pl_module.export_state_dict() if trainer.is_global_zero else None
        if trainer.is_global_zero:
            if not weights.exists():
                atomic_torch_save(state, weights)
                metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                           if isinstance(v, torch.Tensor) and v.numel() == 1}
                seconds = None if self.started is None else round(time.perf_counter() - self.started, 1)
                atomic_json_save({"step": step, "metrics": metrics, "train_seconds": seconds,
                                  **self.run_config},
                                 weights.with_suffix(".json"))
        trainer.strategy.barrier()
