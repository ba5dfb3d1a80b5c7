"""Training batches whose position in the epoch is part of the resumable checkpoint.

A run killed at step 75 of a 150-step epoch and resumed must train batches 75-149 next, not
start the epoch over (which trains 0-74 twice and 75-149 never). Lightning saves the
`state_dict()` of a train DataLoader that has one and hands it back through `load_state_dict()`
before the epoch restarts, then asks for the remaining len(loader) - position batches; it
counts the batches it has consumed itself. So:

- a `ResumableBatchSampler` yields this process's batches of one epoch, fixed by (seed, epoch),
  and can start the epoch at a given batch;
- a `ResumableLoader` counts the batches it has handed out (not the ones its workers prefetched)
  and reports (epoch, batches) as its state.

The epoch order is a pure function of the seed and the epoch, so nothing else needs saving.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler


class ResumableBatchSampler(Sampler):
    """Batches of dataset indices for one process; subclasses define `epoch_batches`."""

    def __init__(self) -> None:
        self.epoch = 0
        self._resume_at: tuple[int, int] | None = None

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This process's batches of `epoch`, in order; the same list on every call."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.epoch_batches(self.epoch))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches: int) -> None:
        """Start epoch `epoch`, when it is iterated next, after its first `batches` batches."""
        self._resume_at = (epoch, batches)

    def start_batch(self) -> int:
        """Where the coming iteration of the current epoch starts."""
        pending = self._resume_at
        return pending[1] if pending is not None and pending[0] == self.epoch else 0

    def __iter__(self) -> Iterator[list[int]]:
        start = self.start_batch()
        self._resume_at = None                   # a resume applies to one iteration only
        yield from self.epoch_batches(self.epoch)[start:]


class ShardedBatchSampler(ResumableBatchSampler):
    """Batches of `batch_size` from n samples, sharded over `num_replicas` processes.

    One order per epoch (0..n-1, or a permutation seeded by (seed, epoch) when `shuffle`) is
    cut to a multiple of num_replicas * batch_size, so every process gets the same number of
    whole batches and no sample is repeated; process r takes samples r, r + R, r + 2R, ...
    The remainder (fewer than R * batch_size samples) is left out of the epoch."""

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in 0..num_replicas-1 (num_replicas {num_replicas})")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.batches_per_epoch = n // (num_replicas * batch_size)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        order = (np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle
                 else np.arange(self.n))
        used = order[: self.batches_per_epoch * self.num_replicas * self.batch_size]
        mine = used[self.rank::self.num_replicas]
        return [mine[b * self.batch_size:(b + 1) * self.batch_size].tolist()
                for b in range(self.batches_per_epoch)]


class ResumableLoader(DataLoader):
    """A DataLoader over a ResumableBatchSampler whose state is (epoch, batches handed out).

    The position is counted where batches leave the loader, so batches that worker processes
    have prefetched but training has not used are not counted. It has its own random generator
    (for worker seeds), so creating an iterator never draws from the global one that a model
    with dropout would use."""

    def __init__(self, dataset, batch_sampler: ResumableBatchSampler, seed: int = 0, **kwargs):
        generator = torch.Generator().manual_seed(seed)
        super().__init__(dataset, batch_sampler=batch_sampler, generator=generator, **kwargs)
        self.position = 0

    def __iter__(self):
        # The body runs at the first next(), after Lightning has set the epoch.
        self.position = self.batch_sampler.start_batch()
        for batch in super().__iter__():
            self.position += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self.batch_sampler.epoch, "batches": self.position,
                "batches_per_epoch": len(self.batch_sampler)}

    def load_state_dict(self, state: dict) -> None:
        expected = len(self.batch_sampler)
        if state["batches_per_epoch"] != expected:
            raise ValueError(f"the checkpoint's epoch had {state['batches_per_epoch']} batches per "
                             f"process, the data now gives {expected}: the training data, batch size "
                             f"or number of processes changed, so the run cannot resume exactly")
        self.batch_sampler.resume_at(state["epoch"], state["batches"])
