"""Checkpoints that never lose work: step-numbered, written atomically, never deleted.

Every save writes, in proj_dir, in this order:
1. `<name>-step<N>.json`: the run configuration and the step's metrics;
2. `<name>-step<N>.pth`: the weights the run trained (the whole model when training a language
   model, only the trained tensors in state tuning), a flat tensor dict that
   `torch.load(weights_only=True)` reads;
3. `checkpoints/step<N>.ckpt`: Lightning's full training state (optimizer, scheduler, step
   counters, the data loader's position in the epoch, random states) to resume from; a folder
   of shards under DeepSpeed.
Each file is written to a temporary file beside it and renamed, so a kill leaves either the
whole file or none. A resumable checkpoint is written last: when it exists, so do the step's
weights. A kill before it means the resume starts from the previous checkpoint and trains
this step again, to the same weights, and writes what is missing.

RWKV-ASR's trainer deleted every .pth in its output folder before saving; nothing here removes or
overwrites a finished file: a name that exists already is left alone.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DeepSpeedStrategy  # importable without deepspeed

from ..io import atomic_json_save, atomic_torch_save, check_finite
from .step_files import resume_path, weights_path


def full_parameters(trainer: L.Trainer, module) -> contextlib.AbstractContextManager:
    """Whole parameters inside the context: under DeepSpeed ZeRO stage 3 each process holds
    only a partition, and the weights file must hold the whole tensors."""
    if getattr(trainer.strategy, "zero_stage_3", False):
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
    return contextlib.nullcontext()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint files written like every other file here. Lightning's own writer
    stages the file in $TMPDIR and moves it: a small /tmp fails the save, a kill leaves the
    partial file there, and a move across file systems is not atomic."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        atomic_torch_save(checkpoint, path)


def check_resume_checkpoint(path: Path) -> None:
    """Raise ValueError when `path` cannot be resumed from: unreadable, truncated, not a
    training checkpoint, or (a DeepSpeed folder) without its model states."""
    if path.is_dir():
        # ZeRO stages 1 and 2 write mp_rank_00_model_states.pt; stage 3 one
        # zero_pp_rank_<R>_mp_rank_00_model_states.pt per process.
        states = sorted((path / "checkpoint").glob("*mp_rank_00_model_states.pt"))
        if not states or any(s.stat().st_size == 0 for s in states):
            raise ValueError(f"{path} has no complete checkpoint/*mp_rank_00_model_states.pt")
        return
    try:
        # mmap: the tensors are not read, but the archive and every record in it are checked.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:       # torch raises many kinds on a damaged file; all mean "damaged"
        raise ValueError(f"{path} is not a readable checkpoint ({type(err).__name__})") from err
    missing = [k for k in ("state_dict", "global_step", "loops") if k not in checkpoint]
    if missing:
        raise ValueError(f"{path} is not a training checkpoint (no {', '.join(missing)})")
    check_finite(checkpoint["state_dict"], str(path))


def set_aside_if_damaged(path: Path) -> None:
    """Rename a damaged checkpoint to `<name>.damaged` (kept for inspection), so that the step
    it stood for can be saved again; a resume passed over it already (train/resume.py)."""
    try:
        check_resume_checkpoint(path)
    except ValueError:
        os.replace(path, path.with_name(f"{path.name}.damaged"))


class StepCheckpoint(L.Callback):
    """Save weights + a resumable checkpoint every `every` steps (0: none) and at the end.

    `before_save(trainer, module)`, when given, runs on every process before anything is
    written and raises to stop a run whose state must not be saved (see guards.py)."""

    def __init__(self, proj_dir: str | Path, name: str, every: int, run_config: dict,
                 before_save=None):
        self.proj_dir, self.name, self.every, self.run_config = Path(proj_dir), name, every, run_config
        self.before_save = before_save
        self.last_saved_step = -1
        self.started = None
        # Whether the last micro-batch ended an accumulation window (an optimizer step followed).
        self.at_window_end = True
        self._step_before = 0

    def on_train_start(self, trainer, pl_module):
        # Wall time of this process's training, for the weights' sidecar (a resumed run counts
        # from its resume).
        self.started = time.perf_counter()
        # A resume from step N restores N's state: nothing new to save at N.
        self.last_saved_step = self._step_before = trainer.global_step
        self.at_window_end = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        self.at_window_end, self._step_before = step != self._step_before, step
        if self.every and step % self.every == 0 and step != self.last_saved_step:
            self.save(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        # A run stopped inside an accumulation window (by should_stop) holds gradients of part
        # of a window, which no checkpoint keeps, and its data position is past the window's
        # start: a checkpoint now could not resume exactly. The last save (at an optimizer step)
        # is where a relaunch continues, training the window's micro-batches again.
        if trainer.global_step != self.last_saved_step and self.at_window_end:
            self.save(trainer, pl_module)

    def save(self, trainer: L.Trainer, pl_module) -> None:
        step = trainer.global_step
        self.last_saved_step = step
        if self.before_save is not None:
            self.before_save(trainer, pl_module)
        with full_parameters(trainer, pl_module):        # every rank enters: a collective
            state = pl_module.export_state_dict() if trainer.is_global_zero else None
        if trainer.is_global_zero:
            self._write_weights(trainer, step, state)
        trainer.strategy.barrier()
        self._write_resumable(trainer, step)

    def _write_weights(self, trainer: L.Trainer, step: int, state: dict) -> None:
        weights = weights_path(self.proj_dir, self.name, step)
        sidecar = weights.with_suffix(".json")
        if not sidecar.exists():
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                       if isinstance(v, torch.Tensor) and v.numel() == 1}
            seconds = None if self.started is None else round(time.perf_counter() - self.started, 1)
            atomic_json_save({"step": step, "metrics": metrics, "train_seconds": seconds,
                              **self.run_config}, sidecar)
        if not weights.exists():
            atomic_torch_save(state, weights)

    def _write_resumable(self, trainer: L.Trainer, step: int) -> None:
        resume = resume_path(self.proj_dir, step)
        if trainer.is_global_zero and resume.exists():
            set_aside_if_damaged(resume)
        trainer.strategy.barrier()
        if not resume.exists():
            if isinstance(trainer.strategy, DeepSpeedStrategy):
                # DeepSpeed writes a folder of shards from every rank: stage it beside its name.
                staging = resume.with_name(f".{resume.name}.tmp")
                trainer.save_checkpoint(staging, weights_only=False)    # a collective
                trainer.strategy.barrier()
                if trainer.is_global_zero:
                    os.replace(staging, resume)
            else:
                trainer.save_checkpoint(resume, weights_only=False)    # AtomicCheckpointIO
        trainer.strategy.barrier()
