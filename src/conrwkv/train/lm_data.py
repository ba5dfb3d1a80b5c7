"""Data module for language-model training on binidx files (token corpora or Markov chains).

It shards the data over distributed processes itself (the Trainer runs with
use_distributed_sampler=False), so the sharding is this project's code and is tested."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from ..config import TrainConfig
from ..data.binidx import BinidxReader
from ..data.sampling import DocumentDataset, WindowDataset


def resolve_lm_data(cfg: TrainConfig) -> tuple[Path, Path | None, str, dict | None]:
    """(train prefix, val prefix or None, sampling kind, Markov meta or None) for cfg.data_file."""
    if not cfg.data_file:
        raise ValueError("--data_file is required: a binidx prefix or a datanew.py folder")
    data = Path(cfg.data_file)
    meta = None
    if data.is_dir():
        if not (data / "meta.json").is_file():
            raise ValueError(f"{data} is a folder without meta.json: pass a binidx prefix "
                             f"(path/name for path/name.bin + .idx) or a datanew.py folder")
        meta = json.loads((data / "meta.json").read_text())
        train, val = data / "train", data / "val"
    else:
        train = Path(str(data).removesuffix(".bin").removesuffix(".idx"))
        val = None
    if cfg.val_file:
        val = Path(str(cfg.val_file).removesuffix(".bin").removesuffix(".idx"))
    kind = cfg.data_type if cfg.data_type != "auto" else ("documents" if meta else "windows")
    return train, val, kind, meta


class LMDataModule(L.LightningDataModule):
    def __init__(self, cfg: TrainConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.train_prefix, self.val_prefix, self.kind, self.meta = resolve_lm_data(cfg)
        self.vocab_size = vocab_size

    def _dataset(self, prefix: Path) -> Dataset:
        reader = BinidxReader(prefix)
        top = int(reader.tokens.max()) if reader.n_tokens else 0
        if top >= self.vocab_size:
            raise ValueError(f"{prefix}.bin holds token id {top}, but the model's vocab_size is "
                             f"{self.vocab_size}: set --vocab_size larger")
        if self.kind == "documents":
            return DocumentDataset(reader, self.cfg.ctx_len)
        return WindowDataset(reader, self.cfg.ctx_len, seed=self.cfg.seed)

    def steps_per_epoch(self, world_size: int) -> int:
        return len(self.train_set) // (self.cfg.micro_bsz * world_size)

    def setup(self, stage: str | None = None) -> None:
        if getattr(self, "train_set", None) is not None:
            return
        self.train_set = self._dataset(self.train_prefix)
        self.val_set = self._dataset(self.val_prefix) if self.val_prefix else None
        if self.val_set is not None and self.cfg.val_batches:
            n = min(len(self.val_set), self.cfg.val_batches * self.cfg.micro_bsz)
            self.val_set = Subset(self.val_set, np.arange(n))

    def sampler(self, dataset: Dataset, shuffle: bool) -> DistributedSampler:
        """This process's share of `dataset`: rank r of R takes every R-th sample of one order
        (shuffled per epoch with the seed when `shuffle`), so no two processes read the same
        sample. Training drops the remainder; validation pads it with repeats, which the
        Bayes comparison counts the same way."""
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        return DistributedSampler(dataset, num_replicas=replicas, rank=rank, shuffle=shuffle,
                                  seed=self.cfg.seed, drop_last=shuffle)

    def train_dataloader(self) -> DataLoader:
        # Windows come in magic-prime order already; documents are shuffled every epoch.
        return DataLoader(self.train_set, batch_size=self.cfg.micro_bsz, drop_last=True,
                          sampler=self.sampler(self.train_set, shuffle=self.kind == "documents"),
                          num_workers=self.cfg.num_workers, persistent_workers=self.cfg.num_workers > 0)

    def val_dataloader(self):
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.cfg.micro_bsz,
                          sampler=self.sampler(self.val_set, shuffle=False),
                          num_workers=self.cfg.num_workers)
