"""Step time and peak accelerator memory in the training logs, so that a run reports what it
costs without a profiler: `time/step_seconds` (wall time per optimizer step over the last
logging interval, saves and validations inside it included) and, on a GPU,
`memory/peak_gib` (the most memory torch's allocator held on this process's device so far).

The clock is read once per logging interval, after a device synchronisation, so the steps in
between run unsynchronised as they would without it."""

from __future__ import annotations

import time

import lightning as L
import torch


class StepSpeed(L.Callback):
    def __init__(self, every: int):
        self.every = max(1, every)
        self._last_step: int | None = None
        self._last_time = 0.0

    def on_train_start(self, trainer, pl_module):
        self._last_step = None          # a resumed launch starts its own interval

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step % self.every or step == self._last_step:
            return
        on_gpu = pl_module.device.type == "cuda"
        if on_gpu:
            torch.cuda.synchronize(pl_module.device)
        now = time.perf_counter()
        metrics = {}
        if self._last_step is not None:
            metrics["time/step_seconds"] = (now - self._last_time) / (step - self._last_step)
        if on_gpu:
            metrics["memory/peak_gib"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
        if metrics:
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)
        self._last_step, self._last_time = step, now
