"""Data module for speech recognition: corpora -> utterances -> length-bucketed batches.

Batches are dicts of unpadded lists (ids, audio, texts); the encoder's own feature extractor
pads. The bucketed batch sampler shards batches over the distributed ranks itself (the Trainer runs
with use_distributed_sampler=False): each rank reads different utterances. The training loader
is resumable: its position in the epoch is part of the checkpoint (data/resumable.py).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from ..config import AsrConfig, TrainConfig
from ..data.resumable import ResumableLoader
from ..data.speech import LengthBucketBatchSampler, SpeechDataset, collate_speech, load_corpus


def corpus_name(source: str) -> str:
    """A split name for reports: the folder or file name (test-clean, dev.jsonl -> dev)."""
    path = Path(source.rstrip("/"))
    return path.stem if path.suffix == ".jsonl" else path.name


def speech_dataset(source: str, asr: AsrConfig) -> SpeechDataset:
    utterances = load_corpus(source, skip_bad_audio=asr.skip_bad_audio,
                             min_duration=asr.min_duration or None, max_duration=asr.max_duration or None)
    if not utterances:
        raise ValueError(f"{source}: no utterances left (after the duration filters "
                         f"{asr.min_duration}-{asr.max_duration} s)")
    return SpeechDataset(utterances, skip_bad_audio=asr.skip_bad_audio)


def speech_loader(dataset: SpeechDataset, batch_size: int, *, shuffle: bool, seed: int = 0,
                  num_replicas: int = 1, rank: int = 0, num_workers: int = 0) -> ResumableLoader:
    sampler = LengthBucketBatchSampler(dataset.durations(), batch_size, shuffle=shuffle, seed=seed,
                                       num_replicas=num_replicas, rank=rank)
    return ResumableLoader(dataset, sampler, seed=seed, collate_fn=collate_speech,
                           num_workers=num_workers, persistent_workers=num_workers > 0)


class AsrDataModule(L.LightningDataModule):
    def __init__(self, cfg: TrainConfig, asr: AsrConfig):
        super().__init__()
        if not cfg.data_file:
            raise ValueError("--data_file is required: the training corpus (a LibriSpeech split "
                             "folder, a save_to_disk folder or a JSONL manifest)")
        self.cfg, self.asr = cfg, asr
        self.train_set = self.val_set = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = speech_dataset(self.cfg.data_file, self.asr)
            self.val_set = speech_dataset(self.cfg.val_file, self.asr) if self.cfg.val_file else None

    def steps_per_epoch(self, world_size: int) -> int:
        return len(LengthBucketBatchSampler(self.train_set.durations(), self.cfg.micro_bsz,
                                            num_replicas=world_size, rank=0))

    def _replicas(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self) -> ResumableLoader:
        replicas, rank = self._replicas()
        return speech_loader(self.train_set, self.cfg.micro_bsz, shuffle=True, seed=self.cfg.seed,
                             num_replicas=replicas, rank=rank, num_workers=self.cfg.num_workers)

    def val_dataloader(self):
        if self.val_set is None:
            return []
        replicas, rank = self._replicas()
        return speech_loader(self.val_set, self.cfg.micro_bsz, shuffle=False, num_replicas=replicas,
                             rank=rank, num_workers=self.cfg.num_workers)
