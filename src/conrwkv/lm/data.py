"""Data module for language-model training on binidx files (token corpora or Markov chains).

It shards the data over distributed processes itself (the Trainer runs with
use_distributed_sampler=False), so the sharding is this project's code and is tested, and the
training loader's position in the epoch is part of the resumable checkpoint (data/resumable.py).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from ..config import TrainConfig
from ..data.accumulation import WindowedLoader
from ..data.binidx import BinidxReader
from ..data.resumable import ShardedBatchSampler
from ..data.sampling import DocumentDataset, WindowDataset
from .plan import LMData, resolve_lm_data


class LMDataModule(L.LightningDataModule):
    def __init__(self, cfg: TrainConfig, vocab_size: int, data: LMData | None = None):
        super().__init__()
        self.cfg = cfg
        data = data or resolve_lm_data(cfg)
        self.train_prefix, self.val_prefix, self.kind = data.train, data.val, data.kind
        self.vocab_size = vocab_size

    def _dataset(self, prefix: Path) -> Dataset:
        reader = BinidxReader(prefix)
        if reader.n_tokens:
            low, high = reader.token_range()
            if low < 0:
                raise ValueError(f"{prefix}.bin holds the negative token id {low}: not token data")
            if high >= self.vocab_size:
                raise ValueError(f"{prefix}.bin holds token id {high}, but the model's vocab_size is "
                                 f"{self.vocab_size}: set --vocab_size larger")
        if self.kind == "documents":
            longest = int(reader.sizes.max()) if len(reader) else 0
            if self.cfg.ctx_len > longest - 1:
                raise ValueError(f"--ctx_len {self.cfg.ctx_len} is longer than every document of "
                                 f"{prefix} (the longest gives {longest - 1} predictions): every "
                                 f"sample would be padding past its end; set --ctx_len {longest - 1}")
            return DocumentDataset(reader, self.cfg.ctx_len)
        return WindowDataset(reader, self.cfg.ctx_len, seed=self.cfg.seed)

    def batches_per_epoch(self, world_size: int) -> int:
        """Micro-batches per process in one epoch."""
        return len(self.train_set) // (self.cfg.micro_bsz * world_size)

    def setup(self, stage: str | None = None) -> None:
        if getattr(self, "train_set", None) is not None:
            return
        self.train_set = self._dataset(self.train_prefix)
        self.val_set = self._dataset(self.val_prefix) if self.val_prefix else None
        if self.val_set is not None and self.cfg.val_batches:
            n = min(len(self.val_set), self.cfg.val_batches * self.cfg.micro_bsz)
            self.val_set = Subset(self.val_set, np.arange(n))

    def _replicas(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self) -> WindowedLoader:
        """This process's share: rank r of R takes every R-th sample of one order, whole
        batches only (the remainder of the epoch is left out, never padded with repeats).
        Windows come in magic-prime order already; documents are shuffled every epoch. Each
        batch carries its accumulation window's target count (data/accumulation.py): documents
        shorter than ctx_len + 1 have fewer targets, so micro-batches' counts differ."""
        replicas, rank = self._replicas()
        sampler = ShardedBatchSampler(len(self.train_set), self.cfg.micro_bsz,
                                      shuffle=self.kind == "documents", seed=self.cfg.seed,
                                      num_replicas=replicas, rank=rank)
        return WindowedLoader(self.train_set, sampler, accumulate=self.cfg.accumulate_grad_batches,
                              targets_of=self.train_set.targets, seed=self.cfg.seed,
                              num_workers=self.cfg.num_workers,
                              persistent_workers=self.cfg.num_workers > 0)

    def val_dataloader(self):
        """Every validation sample once over all processes; the last batches are padded with
        repeats so that the processes step together, and the Bayes comparison counts the
        repeats the same way."""
        if self.val_set is None:
            return []
        replicas, rank = self._replicas()
        sampler = DistributedSampler(self.val_set, num_replicas=replicas, rank=rank, shuffle=False)
        return DataLoader(self.val_set, batch_size=self.cfg.micro_bsz, sampler=sampler,
                          num_workers=self.cfg.num_workers)
