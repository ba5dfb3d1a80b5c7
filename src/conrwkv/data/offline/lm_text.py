"""English LM pretraining text made offline from Debian packages (text_sources.py), written as
binidx documents of World tokens, with the speech corpus's dev and test sentences kept out.

WordNet alone is some 2 million tokens: a 6 x 384 RWKV-6 pretrained on it was too weak to be
steered by the projected speech (docs/results.md). The other sources (GCIDE, the Devil's
Dictionary, the Jargon File, FOLDOC, fortune cookies) add real English prose in volume.

Every document is written the way the recogniser's targets are: lowercase words separated by
single spaces, no punctuation except apostrophes inside words (what `speakable_sentence` keeps,
then AsrConfig.lowercase). A sentence with digits is dropped from its document: a speaker would
not say "1920" as written. Each document ends in token 0, the end of text in the World
vocabulary, as the recogniser ends its transcripts. Documents are deduplicated on that
normalised text across all sources, and a document that is, or contains as a run of words, a
sentence given in `exclude` (the transcripts of the corpus's dev and test splits) is left out,
so the language model has not read the test sentences.

Copy documents (`copy_fraction`): for a share of the documents, one of its sentences is also
written as "sentence # sentence", the layout of the recogniser's sequences ([speech] #
[transcript]) with the speech replaced by the same words. A large LLM reads and repeats what
came before from web-scale pretraining, which is what lets SLAM-ASR keep it frozen; a small LM
pretrained on a few million tokens learns no such thing, and a frozen small LM then ignores the
projected speech (docs/results.md). These documents teach the repetition directly; they never
hold a dev or test sentence either, being parts of documents that passed the exclusion.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ...io import text_lines
from ..binidx import write_binidx
from ..tokenizer import END_OF_TEXT, WorldTokenizer
from .text_sources import SOURCES

log = logging.getLogger(__name__)

_NOT_A_WORD_CHARACTER = re.compile(r"[^a-z']+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Not "meta.json": train.py takes a folder holding meta.json for datanew.py's Markov data.
META_FILE = "lmtext-meta.json"


def normalize_text(text: str) -> str:
    """Lowercase words of letters and inner apostrophes, single spaces ("" when nothing is left)."""
    words = (w.strip("'") for w in _NOT_A_WORD_CHARACTER.split(text.lower()))
    return " ".join(w for w in words if w)


def speakable_sentences(document: str) -> list[str]:
    """The normalised sentences of a plain-text document, leaving out those with digits."""
    sentences = (normalize_text(s) for s in _SENTENCE_END.split(document) if not re.search(r"\d", s))
    return [s for s in sentences if s]


def corpus_transcripts(corpus: str | os.PathLike, splits: Iterable[str]) -> set[str]:
    """Normalised transcripts of the given splits of a LibriSpeech-layout corpus."""
    texts = set()
    for split in splits:
        folder = Path(corpus) / split
        files = sorted(folder.rglob("*.trans.txt"))
        if not files:
            raise FileNotFoundError(f"no *.trans.txt transcripts under {folder}")
        for path in files:
            for _, line in text_lines(path):
                _, _, transcript = line.partition(" ")
                text = normalize_text(transcript)
                if text:
                    texts.add(text)
    return texts


class TranscriptFilter:
    """Finds the sentences to keep out in a normalised document: equal to one, or holding one
    as a run of whole words. Candidates are looked up by their first two words, so a document
    costs one dictionary look-up per word rather than one search per sentence."""

    def __init__(self, sentences: Iterable[str]):
        self.sentences = set(sentences)
        self._by_start: dict[tuple[str, ...], list[list[str]]] = defaultdict(list)
        for sentence in self.sentences:
            words = sentence.split()
            self._by_start[tuple(words[:2])].append(words)
        self._has_one_word = any(len(key) == 1 for key in self._by_start)

    def match(self, text: str) -> str | None:
        """"exact", "containing" or None."""
        if text in self.sentences:
            return "exact"
        words = text.split()
        for i in range(len(words)):
            candidates = self._by_start.get((words[i], words[i + 1]) if i + 1 < len(words) else (), [])
            if self._has_one_word:
                candidates = candidates + self._by_start.get((words[i],), [])
            if any(words[i:i + len(c)] == c for c in candidates):
                return "containing"
        return None


def write_lm_text(out: str | os.PathLike, sources: Sequence[str], exclude: Iterable[str],
                  val_texts: Iterable[str] = (), folders: Mapping[str, str | os.PathLike] | None = None,
                  copy_fraction: float = 0.0, separator: str = "#", seed: int = 0) -> dict:
    """Write `<out>/train.{bin,idx}` (the documents of `sources` in that order, deduplicated,
    without those matching `exclude`, and for a `copy_fraction` of them, chosen at random, also
    a "sentence <separator> sentence" document), `<out>/val.{bin,idx}` when val_texts are given,
    and `<out>/lmtext-meta.json` with the counts (documents and tokens per source and in total), which
    are also returned. `folders` replaces the Debian install folder of some sources."""
    if not 0.0 <= copy_fraction <= 1.0:
        raise ValueError(f"copy_fraction must be in [0, 1], got {copy_fraction}")
    unknown = [s for s in (*sources, *(folders or {})) if s not in SOURCES]
    if unknown or not sources or len(set(sources)) < len(sources):
        raise ValueError(f"LM text sources {list(sources)} (folders for {list(folders or {})}): each "
                         f"at most once, at least one, from {', '.join(SOURCES)}")
    folders = {name: Path(folders[name]) if folders and name in folders else SOURCES[name].folder
               for name in sources}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = WorldTokenizer()
    separator_ids = tokenizer.encode(separator)     # as SpeechRWKV encodes it: no spaces around
    rng = random.Random(seed)
    keep_out = TranscriptFilter(exclude)
    seen: set[str] = set()
    per_source: dict[str, dict[str, int]] = {}

    def train_documents():
        for name in sources:
            counts = per_source[name] = dict.fromkeys(
                ("documents", "tokens", "copy_documents", "copy_tokens", "duplicates",
                 "excluded_exact", "excluded_containing"), 0)
            for document in SOURCES[name].reader(folders[name]):
                sentences = speakable_sentences(document)
                text = " ".join(sentences)
                if len(text.split()) < 2:
                    continue
                if text in seen:
                    counts["duplicates"] += 1
                    continue
                seen.add(text)
                found = keep_out.match(text)
                if found:
                    counts[f"excluded_{found}"] += 1
                    continue
                ids = tokenizer.encode(text) + [END_OF_TEXT]
                counts["documents"] += 1
                counts["tokens"] += len(ids)
                yield ids
                copyable = [s for s in sentences if " " in s]
                if copy_fraction and copyable and rng.random() < copy_fraction:
                    sentence = tokenizer.encode(rng.choice(copyable))
                    copy = sentence + separator_ids + sentence + [END_OF_TEXT]
                    counts["copy_documents"] += 1
                    counts["copy_tokens"] += len(copy)
                    yield copy
            log.info("LM text source %s (%s): %s", name, folders[name], counts)

    write_binidx(out / "train", train_documents(), vocab_size=65536)
    total = {key: sum(c[key] for c in per_source.values()) for key in next(iter(per_source.values()))}
    meta = {"sources": {name: {"package": SOURCES[name].package, "licence": SOURCES[name].licence,
                               "folder": str(folders[name]), **per_source[name]} for name in sources},
            "total": total, "train_tokens": total["tokens"] + total["copy_tokens"],
            "copy_fraction": copy_fraction, "separator": separator, "seed": seed,
            "excluded_sentences": len(keep_out.sentences)}
    val = sorted(set(val_texts))
    if val:
        write_binidx(out / "val", (tokenizer.encode(t) + [END_OF_TEXT] for t in val), vocab_size=65536)
        meta["val_documents"] = len(val)
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    log.info("LM text in %s: %d train tokens", out, meta["train_tokens"])
    return meta
