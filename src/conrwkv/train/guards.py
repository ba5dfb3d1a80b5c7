"""Stop a training run that has gone wrong before anything wrong is saved.

- A non-finite training loss (NaN or inf: a diverged run, or bad numbers in the data or the
  starting weights) stops the run with an error naming the first such step. Without this a
  diverged run trained on, saved all-NaN weights under new step numbers and exited 0.
- The LightningModule may report a problem of its own through `training_problem()`, asked at
  the end of every epoch and before every save (the speech module reports a launch in which no
  utterance could be decoded).

The loss is checked without a host-device synchronisation per step: the first bad step is
recorded on the device and read every `check_every` steps and before every save, which
StepCheckpoint asks for through `check`. All processes check at the same steps and agree, so
under DDP or DeepSpeed they stop together instead of hanging in the next collective.
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
import torch

_NONE = -1


class TrainingGuard(L.Callback):
    def __init__(self, check_every: int):
        self.check_every = max(1, check_every)
        self._first_bad_step: torch.Tensor | None = None

    def on_train_start(self, trainer, pl_module):
        self._first_bad_step = torch.tensor(_NONE, device=pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if loss is not None:
            bad = ~torch.isfinite(loss.detach()).all()
            first = self._first_bad_step
            self._first_bad_step = torch.where(bad & (first == _NONE), trainer.global_step, first)
        if trainer.global_step % self.check_every == 0:
            self._check_loss(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        self._check_module(trainer, pl_module)

    def check(self, trainer, pl_module) -> None:
        """Raise if training went wrong; a collective, called by every process."""
        self._check_loss(trainer)
        self._check_module(trainer, pl_module)

    def _check_loss(self, trainer) -> None:
        if self._first_bad_step is None:
            return
        first = int(self._first_bad_step)
        bad_here = torch.tensor(float(first != _NONE), device=self._first_bad_step.device)
        if float(trainer.strategy.reduce(bad_here, reduce_op="sum")) > 0:
            where = f"at step {first}" if first != _NONE else "on another process"
            raise ValueError(
                f"training loss became NaN or infinite {where}; the run stopped, and nothing was "
                f"saved after that step. Check the data and --load_model, or lower --lr_init in a "
                f"new --proj_dir (a resume keeps the run's settings)")

    @staticmethod
    def _check_module(trainer, pl_module) -> None:
        problem = getattr(pl_module, "training_problem", None)
        message = problem() if problem is not None else None
        if message:
            raise ValueError(message)
