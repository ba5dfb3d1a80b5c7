"""Speech batches for training and evaluation: a dataset of decoded utterances, the batch format
the model side consumes, and length-bucketed batches sharded over distributed processes.

The batch format is `collate_speech`'s dict(ids=list[str], audio=list[np.ndarray],
texts=list[str], skipped=int), unpadded: the speech encoder's feature extractor pads.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch

from ..resumable import ResumableBatchSampler
from .audio import SAMPLE_RATE, AudioError, load_audio
from .corpora import Utterance

log = logging.getLogger(__name__)


class SpeechDataset(torch.utils.data.Dataset):
    """Item i: dict(id=str, audio=float32 1-D numpy at sample_rate, text=str). With
    skip_bad_audio, an undecodable file gives None (dropped by collate_speech) and is logged
    with a running count of this process's skips."""

    def __init__(self, utterances: Sequence[Utterance], sample_rate: int = SAMPLE_RATE,
                 skip_bad_audio: bool = False):
        self.utterances = list(utterances)
        self.sample_rate = sample_rate
        self.skip_bad_audio = skip_bad_audio
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> dict | None:
        utt = self.utterances[index]
        try:
            audio = load_audio(utt.audio, utt.audio_name, self.sample_rate)
        except AudioError as err:
            if not self.skip_bad_audio:
                raise
            self.skipped += 1
            log.warning("skipping utterance %s (bad audio %d so far in this process): %s",
                        utt.id, self.skipped, err)
            return None
        return {"id": utt.id, "audio": audio, "text": utt.text}

    def durations(self) -> list[float]:
        return [u.duration for u in self.utterances]


def collate_speech(items: Sequence[dict | None]) -> dict:
    """dict(ids=list[str], audio=list[np.ndarray], texts=list[str], skipped=int); unpadded, the
    Nones of skipped bad files dropped and counted (a batch whose every file was bad comes back
    with empty lists). The count travels with the batch because worker processes hold their
    own copies of the dataset and its counters."""
    kept = [item for item in items if item is not None]
    return {"ids": [item["id"] for item in kept],
            "audio": [item["audio"] for item in kept],
            "texts": [item["text"] for item in kept],
            "skipped": len(items) - len(kept)}


class LengthBucketBatchSampler(ResumableBatchSampler):
    """Batches of indices of similar duration, sharded over distributed ranks.

    Training (shuffle=True): each epoch, a permutation seeded by (seed, epoch) is cut into
    buckets of `bucket_batches` batches; each bucket is sorted by duration and cut into batches,
    and the batch order is shuffled. Evaluation (shuffle=False): all utterances sorted longest
    first (ties by index), so the result is the same on every call.

    Sharding: the number of batches is made a multiple of num_replicas by using the fewest
    batches of at most batch_size that allow it, with sizes that differ by at most one; rank r
    takes batches r, r + R, r + 2R, ... So the ranks' batches are disjoint, every rank gets the
    same number, and together they cover every utterance once: nothing is dropped or repeated.
    The one exception is batch_size 1 with a data set size not divisible by num_replicas, where
    no such split exists: the last (size mod num_replicas) utterances of the order are left out
    of that epoch, with a warning.
    """

    def __init__(self, durations: Sequence[float], batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, bucket_batches: int = 50):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in 0..num_replicas-1 (num_replicas {num_replicas})")
        if len(durations) < num_replicas:
            raise ValueError(f"{len(durations)} utterances cannot be shared by {num_replicas} ranks")
        if bucket_batches < 1:
            raise ValueError(f"bucket_batches must be >= 1, got {bucket_batches}")
        super().__init__()
        self.durations = np.asarray(durations, dtype=np.float64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.bucket_batches = bucket_batches
        self.batch_sizes = self._batch_sizes()
        used = sum(self.batch_sizes)
        if used < len(self.durations):
            log.warning("batch_size 1 over %d ranks: %d of %d utterances are left out each epoch",
                        num_replicas, len(self.durations) - used, len(self.durations))

    def _batch_sizes(self) -> list[int]:
        n, replicas = len(self.durations), self.num_replicas
        num_batches = replicas * math.ceil(n / (self.batch_size * replicas))
        if num_batches > n:
            # Only batch_size 1: one utterance per batch, as many as divide evenly.
            return [1] * (n // replicas * replicas)
        base, extra = divmod(n, num_batches)
        return [base + 1] * extra + [base] * (num_batches - extra)

    def __len__(self) -> int:
        return len(self.batch_sizes) // self.num_replicas

    def _all_batches(self, epoch: int) -> list[np.ndarray]:
        if not self.shuffle:
            order = np.lexsort((np.arange(len(self.durations)), -self.durations))
            return np.split(order[: sum(self.batch_sizes)], np.cumsum(self.batch_sizes)[:-1])
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.durations))
        batches, start = [], 0
        for first in range(0, len(self.batch_sizes), self.bucket_batches):
            sizes = self.batch_sizes[first:first + self.bucket_batches]
            bucket = order[start:start + sum(sizes)]
            start += sum(sizes)
            bucket = bucket[np.argsort(self.durations[bucket], kind="stable")]
            batches.extend(np.split(bucket, np.cumsum(sizes)[:-1]))
        return [batches[i] for i in rng.permutation(len(batches))]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        return [batch.tolist() for batch in self._all_batches(epoch)[self.rank::self.num_replicas]]
