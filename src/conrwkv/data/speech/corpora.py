"""Speech corpora for RWKV-ASR (the SLAM-ASR recipe): one list of utterances from three on-disk
forms, with their audio checked (header only) and durations filled in.

Forms read by `load_corpus`:
- LibriSpeech in its original layout (docs/reference.md, "LibriSpeech"):
  `<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac` beside
  `<speaker>-<chapter>.trans.txt` with lines `<utt-id> UPPERCASE TRANSCRIPT`;
- a HuggingFace dataset written with `datasets`' `save_to_disk` (a Dataset or a DatasetDict).
  Its audio column is read with `Audio(decode=False)` and decoded with soundfile (audio.py),
  because `Audio()` decoding needs torchcodec; the audio stays in the memory-mapped Arrow files
  and is read row by row when needed;
- JSONL manifests, one `{"audio": path, "text": ..., "duration": ...}` per line (optional "id");
  relative audio paths are resolved against the manifest's folder.
A bad audio file raises AudioError, or with skip_bad_audio is left out and counted in the log.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from conrwkv.io import read_json, text_lines

from .audio import AUDIO_SUFFIXES, AudioError, AudioSource, audio_duration, checked_source

log = logging.getLogger(__name__)

TEXT_COLUMNS = ("text", "sentence", "transcript")
MANIFEST_SUFFIXES = (".jsonl", ".json", ".ndjson")


@dataclass(frozen=True)
class ArrowAudio:
    """Audio kept inside a `save_to_disk` dataset, read on demand: a LibriSpeech-sized dataset
    holds tens of GB of encoded audio, which must stay in its memory-mapped Arrow files."""

    dataset_path: str
    split: str | None
    column: str
    row: int

    @property
    def name(self) -> str:
        where = f"{self.dataset_path}" + (f" split {self.split}" if self.split else "")
        return f"{where} row {self.row}"

    def read(self) -> bytes | str:
        """The encoded bytes, or the audio file's path where the dataset stores only a path."""
        record = _open_disk_dataset(self.dataset_path, self.split, self.column)[self.row][self.column]
        return _audio_from_record(record, Path(self.dataset_path), self.name)


@dataclass(frozen=True)
class Utterance:
    """One transcribed recording. `audio` is a file path, encoded bytes (FLAC, WAV, ...), or a
    row of a saved HF dataset; `duration` is in seconds (None until read, see load_corpus);
    `origin` names where encoded bytes came from, for error messages."""

    id: str
    audio: AudioSource
    text: str
    duration: float | None = None
    origin: str = ""

    @property
    def audio_name(self) -> str:
        if isinstance(self.audio, str):
            return self.audio
        if isinstance(self.audio, ArrowAudio):
            return self.audio.name
        return self.origin or f"<bytes of utterance {self.id}>"


def load_librispeech(path: str | os.PathLike, split: str | None = None) -> list[Utterance]:
    """Utterances of one LibriSpeech split: `path` is the split folder, or LibriSpeech/ (or its
    parent) together with `split`. Durations are left None (load_corpus reads them)."""
    folder = _librispeech_split_folder(Path(path), split)
    transcripts = sorted(folder.glob("*/*/*.trans.txt"))
    if not transcripts:
        raise ValueError(f"{folder} holds no <speaker>/<chapter>/<speaker>-<chapter>.trans.txt files: "
                         "not a LibriSpeech split folder")
    utterances: list[Utterance] = []
    listed: set[Path] = set()
    for trans in transcripts:
        chapter_prefix = trans.name[: -len(".trans.txt")]
        for lineno, line in text_lines(trans):
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            text = " ".join(text.split())
            if not text:
                raise ValueError(f"{trans}:{lineno}: utterance {utt_id!r} has no transcript")
            if not utt_id.startswith(chapter_prefix + "-"):
                raise ValueError(f"{trans}:{lineno}: utterance id {utt_id!r} does not start with "
                                 f"{chapter_prefix}- as the file name says it should")
            audio = _find_audio_file(trans.parent, utt_id)
            listed.add(audio)
            utterances.append(Utterance(id=utt_id, audio=str(audio), text=text))
    unlisted = [p for suffix in AUDIO_SUFFIXES for p in folder.glob(f"*/*/*{suffix}") if p not in listed]
    if unlisted:
        log.warning("%d audio files under %s have no transcript line and are not used (first: %s)",
                    len(unlisted), folder, sorted(unlisted)[0])
    _check_unique_ids(utterances, str(folder))
    return utterances


def _librispeech_split_folder(path: Path, split: str | None) -> Path:
    if not path.is_dir():
        raise ValueError(f"LibriSpeech folder {path} does not exist")
    if split is None:
        return path
    for candidate in (path / split, path / "LibriSpeech" / split):
        if candidate.is_dir():
            return candidate
    if path.name == split:
        return path
    raise ValueError(f"no split folder {split!r} in {path} (looked for {path / split} and "
                     f"{path / 'LibriSpeech' / split})")


def _find_audio_file(folder: Path, utt_id: str) -> Path:
    for suffix in AUDIO_SUFFIXES:
        candidate = folder / f"{utt_id}{suffix}"
        if candidate.exists():
            return candidate
    # Reported as missing by the audio checks, which may skip it on request.
    return folder / f"{utt_id}{AUDIO_SUFFIXES[0]}"


def load_manifest(path: str | os.PathLike) -> list[Utterance]:
    """Utterances of a JSONL manifest: {"audio", "text"} required, "duration" and "id" optional
    (the id defaults to the audio file's stem)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"manifest {path} does not exist")
    utterances = []
    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err})") from err
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a JSON object, found {type(entry).__name__}")
        audio, text = entry.get("audio"), entry.get("text")
        if not isinstance(audio, str) or not audio:
            raise ValueError(f"{where}: \"audio\" must be a non-empty path string")
        if not isinstance(text, str):
            raise ValueError(f"{where}: \"text\" must be a string")
        duration = entry.get("duration")
        if duration is not None and (not isinstance(duration, (int, float)) or duration <= 0):
            raise ValueError(f"{where}: \"duration\" must be a positive number of seconds")
        audio_path = Path(audio) if Path(audio).is_absolute() else path.parent / audio
        utt_id = str(entry.get("id") or Path(audio).stem)
        utterances.append(Utterance(id=utt_id, audio=str(audio_path), text=text,
                                    duration=None if duration is None else float(duration)))
    _check_unique_ids(utterances, str(path))
    return utterances


def load_disk_dataset(path: str | os.PathLike, split: str | None = None, text_column: str | None = None,
                      audio_column: str = "audio", id_column: str = "id") -> list[Utterance]:
    """Utterances of a dataset written by `datasets`' save_to_disk. A DatasetDict needs `split`
    unless it has just one. The text column is `text_column`, or the first of TEXT_COLUMNS present."""
    path = Path(path)
    dataset, split = _disk_dataset_and_split(path, split)
    columns = dataset.column_names
    if audio_column not in columns:
        raise ValueError(f"dataset {path} has no audio column {audio_column!r} (columns: {columns})")
    if text_column is None:
        text_column = next((c for c in TEXT_COLUMNS if c in columns), None)
        if text_column is None:
            raise ValueError(f"dataset {path} has none of the text columns {TEXT_COLUMNS} "
                             f"(columns: {columns}); name one with text_column")
    elif text_column not in columns:
        raise ValueError(f"dataset {path} has no text column {text_column!r} (columns: {columns})")
    has_ids = id_column in columns
    # The audio itself stays on disk; ArrowAudio reads one row when it is needed.
    wanted = [text_column] + ([id_column] if has_ids else [])
    utterances = []
    row = 0
    for batch in dataset.select_columns(wanted).iter(batch_size=256):
        for i, text in enumerate(batch[text_column]):
            utt_id = str(batch[id_column][i]) if has_ids else f"{split or path.name}-{row:07d}"
            if not isinstance(text, str):
                raise ValueError(f"dataset {path} row {row}: text column {text_column!r} is not a string")
            audio = ArrowAudio(str(path), split, audio_column, row)
            utterances.append(Utterance(id=utt_id, audio=audio, text=text, origin=audio.name))
            row += 1
    _check_unique_ids(utterances, str(path))
    return utterances


def _disk_dataset_and_split(path: Path, split: str | None):
    if (path / "dataset_dict.json").is_file():
        splits = read_json(path / "dataset_dict.json", "datasets' split listing", ("splits",))["splits"]
        if split is None:
            if len(splits) != 1:
                raise ValueError(f"dataset {path} has splits {splits}: name one")
            split = splits[0]
        elif split not in splits:
            raise ValueError(f"dataset {path} has no split {split!r} (splits: {splits})")
    elif split is not None:
        raise ValueError(f"dataset {path} is a single Dataset without splits; {split!r} does not apply")
    return _open_disk_dataset(str(path), split, None), split


@lru_cache(maxsize=16)
def _open_disk_dataset(path: str, split: str | None, audio_column: str | None):
    """Open once per process (memory-mapped). With audio_column: that column alone, with
    Audio(decode=False) so that rows come back as {"bytes", "path"} instead of being decoded."""
    import datasets

    dataset = datasets.load_from_disk(path)
    if split is not None:
        dataset = dataset[split]
    if audio_column is not None:
        dataset = dataset.select_columns([audio_column])
        if isinstance(dataset.features[audio_column], datasets.Audio):
            dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    return dataset


def _audio_from_record(record, dataset_path: Path, name: str) -> bytes | str:
    """An Audio(decode=False) record {"bytes", "path"}, or a plain path string, to bytes or a path."""
    if isinstance(record, str):
        record = {"bytes": None, "path": record}
    if not isinstance(record, dict):
        raise AudioError(f"audio {name}: expected an audio record or a path, found {type(record).__name__}")
    if record.get("bytes") is not None:
        return record["bytes"]
    if record.get("path"):
        audio_path = Path(record["path"])
        return str(audio_path if audio_path.is_absolute() else dataset_path / audio_path)
    raise AudioError(f"audio {name} holds neither bytes nor a path")


def detect_format(source: str | os.PathLike, split: str | None = None) -> str:
    """'manifest', 'disk_dataset' or 'librispeech', from what is at `source`."""
    path = Path(source)
    if path.is_file():
        if path.suffix.lower() in MANIFEST_SUFFIXES:
            return "manifest"
        raise ValueError(f"{path} is a file but not a JSONL manifest (expected one of {MANIFEST_SUFFIXES})")
    if not path.is_dir():
        raise ValueError(f"speech data source {path} does not exist")
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return "disk_dataset"
    try:
        folder = _librispeech_split_folder(path, split)
    except ValueError:
        folder = None
    if folder is not None and next(folder.glob("*/*/*.trans.txt"), None) is not None:
        return "librispeech"
    raise ValueError(f"cannot tell what {path} holds: expected a JSONL manifest file, a folder written by "
                     "datasets' save_to_disk (dataset_dict.json or state.json), or a LibriSpeech split "
                     "folder <split>/<speaker>/<chapter>/*.trans.txt"
                     + (f" (or its parent with split {split!r})" if split else ""))


def corpus_splits(source: str | os.PathLike) -> list[str]:
    """The splits of a folder that holds several: the split folders of a LibriSpeech root (the
    folder holding test-clean/, test-other/, ..., or holding LibriSpeech/ that holds them), or
    the splits of a save_to_disk DatasetDict. [] for anything that is one corpus already (a
    manifest, a LibriSpeech split folder, a single Dataset) or is no corpus."""
    path = Path(source)
    if not path.is_dir():
        return []
    if (path / "dataset_dict.json").is_file():
        listing = read_json(path / "dataset_dict.json", "datasets' split listing", ("splits",))
        return [str(s) for s in listing["splits"]]
    if (path / "state.json").is_file() or next(path.glob("*/*/*.trans.txt"), None) is not None:
        return []
    for root in (path, path / "LibriSpeech"):
        if root.is_dir():
            found = sorted(p.name for p in root.iterdir()
                           if p.is_dir() and next(p.glob("*/*/*.trans.txt"), None) is not None)
            if found:
                return found
    return []


@dataclass(frozen=True)
class CorpusCounts:
    """How many utterances a corpus lists, and how many load_corpus left out and why."""

    in_corpus: int
    bad_audio: int                 # skipped by check_audio (skip_bad_audio)
    outside_duration: int          # dropped by the duration filters

    @property
    def kept(self) -> int:
        return self.in_corpus - self.bad_audio - self.outside_duration


def load_corpus_with_counts(source: str | os.PathLike, split: str | None = None, *,
                            text_column: str | None = None, skip_bad_audio: bool = False,
                            min_duration: float | None = None, max_duration: float | None = None
                            ) -> tuple[list[Utterance], CorpusCounts]:
    """load_corpus, and the counts of what the corpus held and what was left out."""
    kind = detect_format(source, split)
    if kind == "manifest":
        if split is not None:
            raise ValueError(f"{source} is a manifest (one split); split {split!r} does not apply")
        listed = load_manifest(source)
    elif kind == "disk_dataset":
        listed = load_disk_dataset(source, split, text_column=text_column)
    else:
        listed = load_librispeech(source, split)
    checked = check_audio(listed, skip_bad_audio=skip_bad_audio)
    kept = filter_by_duration(checked, min_duration, max_duration)
    return kept, CorpusCounts(in_corpus=len(listed), bad_audio=len(listed) - len(checked),
                              outside_duration=len(checked) - len(kept))


def load_corpus(source: str | os.PathLike, split: str | None = None, *, text_column: str | None = None,
                skip_bad_audio: bool = False, min_duration: float | None = None,
                max_duration: float | None = None) -> list[Utterance]:
    """Read any supported form, check that every audio exists and is readable (header only),
    fill in durations, and apply the duration filters. A bad file raises AudioError, or with
    skip_bad_audio is left out and counted in the log. load_corpus_with_counts also says how
    many utterances the corpus held and how many were left out."""
    return load_corpus_with_counts(source, split, text_column=text_column, skip_bad_audio=skip_bad_audio,
                                   min_duration=min_duration, max_duration=max_duration)[0]


def check_audio(utterances: Sequence[Utterance], skip_bad_audio: bool = False) -> list[Utterance]:
    """Fill missing durations from file headers; check that every file exists and is not empty.
    Files with a known duration are only checked for existence and size, which costs a stat."""
    kept, skipped = [], 0
    for utt in utterances:
        try:
            if utt.duration is None:
                utt = replace(utt, duration=audio_duration(utt.audio, utt.audio_name))
            elif isinstance(utt.audio, str):
                checked_source(utt.audio, utt.audio_name)
        except AudioError as err:
            if not skip_bad_audio:
                raise
            skipped += 1
            log.warning("skipping utterance %s (bad audio %d so far): %s", utt.id, skipped, err)
            continue
        kept.append(utt)
    if skipped:
        log.warning("skipped %d of %d utterances with bad audio (skip_bad_audio is on)",
                    skipped, len(utterances))
    return kept


def filter_by_duration(utterances: Sequence[Utterance], min_duration: float | None = None,
                       max_duration: float | None = None) -> list[Utterance]:
    """Keep utterances with min_duration <= duration <= max_duration (None: no bound); log drops."""
    low = -math.inf if min_duration is None else min_duration
    high = math.inf if max_duration is None else max_duration
    if any(u.duration is None for u in utterances):
        raise ValueError("filter_by_duration needs durations; run check_audio first")
    kept = [u for u in utterances if low <= u.duration <= high]
    if len(kept) < len(utterances):
        log.info("duration filter [%s, %s] s dropped %d of %d utterances", min_duration, max_duration,
                 len(utterances) - len(kept), len(utterances))
    return kept


def _check_unique_ids(utterances: Sequence[Utterance], where: str) -> None:
    seen: dict[str, Utterance] = {}
    for utt in utterances:
        if utt.id in seen:
            raise ValueError(f"{where}: utterance id {utt.id!r} appears twice "
                             f"({seen[utt.id].audio_name} and {utt.audio_name})")
        seen[utt.id] = utt
