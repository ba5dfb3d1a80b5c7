"""Gradient accumulation windows, and a loss weighted by the tokens of the whole window.

With `accumulate_grad_batches` N, Lightning sums the gradients of N consecutive micro-batches
before each optimizer step, and divides every micro-batch's loss by N. The windows are counted
from each epoch's first batch, and an epoch's last, incomplete window also steps (Lightning 2.6,
`_TrainingEpochLoop._should_accumulate`): an epoch of M micro-batches takes ceil(M / N) steps.

A micro-batch that returned its own token mean would give the step a mean of means, in which a
token of a short batch (few target tokens) weighs more than one of a long batch. One batch of
the window's samples weighs every token alike: sum of token losses / tokens in the window. So a
micro-batch returns `window_loss`: its summed token loss x N / (target tokens of its window);
after Lightning's division by N the window's gradients add up to exactly that one batch's. An
incomplete last window is weighted by its own total, so its step is a token mean too.

The totals come from the batch sampler's plan, a pure function of (seed, epoch):
`WindowedLoader` computes a window's total in the main process, from the indices of its
micro-batches, and hands it out with each of them as `batch["window_targets"]`. Worker processes
take no part, and a resume (always at a window boundary: checkpoints follow optimizer steps)
starts at a window's first batch.

What cannot be known from the plan makes the weighting approximate: an utterance dropped as bad
audio while loading (--skip_bad_audio) is counted in its window's total, so that window's step
is scaled down by its share of the tokens. Across processes, DDP averages the processes'
gradients: each process's window is weighted by its own total, as each process's batch was
before accumulation existed.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .resumable import ResumableBatchSampler, ResumableLoader

WINDOW_TARGETS = "window_targets"


def optimizer_steps(micro_batches: int, accumulate: int) -> int:
    """Optimizer steps an epoch of `micro_batches` takes: its last window steps incomplete."""
    return -(-micro_batches // accumulate)


def window_loss(summed: Tensor, window_targets: int, accumulate: int) -> Tensor:
    """What a micro-batch returns: its summed token loss x N / the target tokens of its window."""
    return summed * accumulate / max(window_targets, 1)


class WindowedLoader(ResumableLoader):
    """A ResumableLoader whose batches (dicts) also carry `window_targets`: the target tokens of
    the accumulation window they belong to. `targets_of(indices)` counts the target tokens of
    the samples at those dataset indices, as the training step will count them."""

    def __init__(self, dataset, batch_sampler: ResumableBatchSampler, *, accumulate: int,
                 targets_of: Callable[[list[int]], int], seed: int = 0, **kwargs):
        super().__init__(dataset, batch_sampler, seed=seed, **kwargs)
        self.accumulate, self.targets_of = accumulate, targets_of

    def __iter__(self):
        # As in ResumableLoader, the body runs at the first next(), after the epoch is set.
        plan = self.batch_sampler.epoch_batches(self.batch_sampler.epoch)
        window, total = -1, 0
        for batch in super().__iter__():
            here = (self.position - 1) // self.accumulate     # position counts this batch already
            if here != window:
                members = plan[here * self.accumulate:(here + 1) * self.accumulate]
                window, total = here, sum(self.targets_of(indices) for indices in members)
            batch[WINDOW_TARGETS] = total
            yield batch
