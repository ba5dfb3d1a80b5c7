"""Data module for speech recognition: corpora -> utterances -> length-bucketed batches.

A corpus on the command line (--data_file, --val_file, --eval_data) is a path, or `path:split`
for a folder that holds several splits: a LibriSpeech root (`data/LibriSpeech:test-clean`, also
the folder above LibriSpeech/) or a multi-split save_to_disk DatasetDict. A path that exists as
typed is always taken as a path, so colons in real paths keep working.

Batches are dicts of unpadded lists (ids, audio, texts); the encoder's own feature extractor
pads. The bucketed batch sampler shards batches over the distributed ranks itself (the Trainer runs
with use_distributed_sampler=False): each rank reads different utterances. The training loader
is resumable: its position in the epoch is part of the checkpoint (data/resumable.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import lightning as L

from ..config import AsrConfig, TrainConfig
from ..data.accumulation import WindowedLoader
from ..data.resumable import ResumableLoader
from ..data.speech import (
    CorpusCounts,
    LengthBucketBatchSampler,
    SpeechDataset,
    collate_speech,
    corpus_splits,
    load_corpus,
    load_corpus_with_counts,
)
from ..data.tokenizer import WorldTokenizer


@dataclass(frozen=True)
class CorpusSpec:
    """One corpus as named on the command line: `text` as typed, the path and the split."""

    text: str
    path: str
    split: str | None


def parse_corpus(text: str, flag: str) -> CorpusSpec:
    """`path` or `path:split` (module docstring); `flag` names the option in error messages.

    A folder that holds several splits must have one named: the error lists them and shows
    the syntax. A single split is taken without being named."""
    if Path(text).exists():
        path, split = text, None
    else:
        path, colon, split = text.rpartition(":")
        if not colon or not path or not split or not Path(path).exists():
            raise ValueError(f"{flag}: {text} does not exist")
    splits = corpus_splits(path)
    if split is None and len(splits) > 1:
        raise ValueError(f"{flag}: {path} holds several splits ({', '.join(splits)}); name one as "
                         f"PATH:SPLIT, e.g. {flag} {path}:{splits[0]}")
    if split is None and splits:
        split = splits[0]
    if split is not None and splits and split not in splits:
        raise ValueError(f"{flag}: {path} has no split {split!r}; its splits: {', '.join(splits)} "
                         f"(e.g. {flag} {path}:{splits[0]})")
    return CorpusSpec(text, path, split)


def _same_corpus_key(spec: CorpusSpec) -> tuple[Path, str | None]:
    """Equal for two specs of one corpus: root:split and the split's own folder are the same."""
    path = Path(spec.path).resolve()
    if spec.split is not None:
        for folder in (path / spec.split, path / "LibriSpeech" / spec.split):
            if folder.is_dir():
                return folder, None
    return path, spec.split


def parse_corpora(text: str, flag: str) -> list[CorpusSpec]:
    """A comma-separated list of corpora; naming the same corpus twice is an error."""
    specs = [parse_corpus(item, flag) for item in text.split(",") if item]
    seen: dict[tuple[Path, str | None], str] = {}
    for spec in specs:
        key = _same_corpus_key(spec)
        if key in seen:
            raise ValueError(f"{flag}: {seen[key]} and {spec.text} are the same corpus")
        seen[key] = spec.text
    return specs


def corpus_name(spec: CorpusSpec) -> str:
    """A split name for reports: the split, or the folder or file name (dev.jsonl -> dev)."""
    if spec.split is not None:
        return spec.split
    path = Path(spec.path.rstrip("/"))
    return path.stem if path.suffix == ".jsonl" else path.name


def corpus_names(specs: list[CorpusSpec]) -> list[str]:
    """One report name per corpus, all different: corpus_name, with as many parent folders put
    in front as it takes to tell corpora of the same name apart (a/LibriSpeech/test-clean and
    b/test-clean: LibriSpeech-test-clean and b-test-clean). Distinct corpora always differ in
    some folder, so this ends."""
    parents = []
    for spec in specs:
        path = Path(spec.path.rstrip("/")).resolve()
        folders = path.parts[1:] if spec.split is not None else path.parts[1:-1]
        parents.append(list(reversed(folders)))
    depth = [0] * len(specs)

    def name(i: int) -> str:
        return "-".join([*reversed(parents[i][:depth[i]]), corpus_name(specs[i])])

    while True:
        counts = Counter(name(i) for i in range(len(specs)))
        clashing = [i for i in range(len(specs)) if counts[name(i)] > 1]
        if not clashing:
            return [name(i) for i in range(len(specs))]
        for i in clashing:
            if depth[i] == len(parents[i]):
                raise ValueError(f"cannot give {specs[i].text} a report name of its own "
                                 f"(it clashes with {name(i)})")
            depth[i] += 1


def speech_dataset(source: str, asr: AsrConfig, flag: str = "--data_file") -> SpeechDataset:
    """Training or validation data: `source` (path or path:split) with the min/max_duration filters."""
    spec = parse_corpus(source, flag)
    utterances = load_corpus(spec.path, spec.split, skip_bad_audio=asr.skip_bad_audio,
                             min_duration=asr.min_duration or None, max_duration=asr.max_duration or None)
    if not utterances:
        raise ValueError(f"{flag} {source}: no utterances left (after the duration filters "
                         f"{asr.min_duration}-{asr.max_duration} s)")
    return SpeechDataset(utterances, skip_bad_audio=asr.skip_bad_audio)


def eval_dataset(spec: CorpusSpec, asr: AsrConfig, flag: str) -> tuple[SpeechDataset, CorpusCounts]:
    """A corpus to score: every utterance, unless eval_max_duration is set; with the counts of
    what it held and what was left out (min/max_duration are for training data only)."""
    utterances, counts = load_corpus_with_counts(spec.path, spec.split, skip_bad_audio=asr.skip_bad_audio,
                                                 max_duration=asr.eval_max_duration or None)
    if not utterances:
        raise ValueError(f"{flag} {spec.text}: none of its {counts.in_corpus} utterances is left to "
                         f"score ({counts.bad_audio} bad audio, {counts.outside_duration} longer than "
                         f"--eval_max_duration {asr.eval_max_duration} s)")
    return SpeechDataset(utterances, skip_bad_audio=asr.skip_bad_audio), counts


def transcript_ids(tokenizer, texts: list[str], asr: AsrConfig) -> list[list[int]]:
    """The transcripts as token ids, lowercased first with --lowercase: what training predicts,
    and what the oracle prefix (oracle.py) feeds."""
    return [tokenizer.encode(t.lower() if asr.lowercase else t) for t in texts]


def target_tokens(tokenizer, text: str, asr: AsrConfig) -> int:
    """The tokens training predicts for one transcript: its ids and the end token, as
    SpeechRWKV.utterance_losses counts them."""
    return len(transcript_ids(tokenizer, [text], asr)[0]) + 1


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
                             "folder, a save_to_disk folder or a JSONL manifest; PATH:SPLIT for a "
                             "folder of several splits)")
        self.cfg, self.asr = cfg, asr
        self.train_set = self.val_set = None
        self._target_counts: dict[int, int] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = speech_dataset(self.cfg.data_file, self.asr, "--data_file")
            self.val_set = (speech_dataset(self.cfg.val_file, self.asr, "--val_file") if self.cfg.val_file
                            else None)

    def batches_per_epoch(self, world_size: int) -> int:
        """Micro-batches per process in one epoch."""
        return len(LengthBucketBatchSampler(self.train_set.durations(), self.cfg.micro_bsz,
                                            num_replicas=world_size, rank=0))

    def _targets_of(self, indices: list[int]) -> int:
        """Target tokens of these training utterances (each tokenised once, when first needed)."""
        if self._target_counts is None:
            self._target_counts, self._tokenizer = {}, WorldTokenizer()
        for i in indices:
            if i not in self._target_counts:
                text = self.train_set.utterances[i].text
                self._target_counts[i] = target_tokens(self._tokenizer, text, self.asr)
        return sum(self._target_counts[i] for i in indices)

    def _replicas(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self) -> WindowedLoader:
        """Shuffled length buckets; each batch carries its accumulation window's target-token
        total, so that the loss is token-weighted over the window (data/accumulation.py)."""
        replicas, rank = self._replicas()
        sampler = LengthBucketBatchSampler(self.train_set.durations(), self.cfg.micro_bsz, shuffle=True,
                                           seed=self.cfg.seed, num_replicas=replicas, rank=rank)
        return WindowedLoader(self.train_set, sampler, accumulate=self.cfg.accumulate_grad_batches,
                              targets_of=self._targets_of, seed=self.cfg.seed, collate_fn=collate_speech,
                              num_workers=self.cfg.num_workers,
                              persistent_workers=self.cfg.num_workers > 0)

    def val_dataloader(self):
        if self.val_set is None:
            return []
        replicas, rank = self._replicas()
        return speech_loader(self.val_set, self.cfg.micro_bsz, shuffle=False, num_replicas=replicas,
                             rank=rank, num_workers=self.cfg.num_workers)
