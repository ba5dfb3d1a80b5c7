"""English text for pretraining a small RWKV-6 offline: the glosses and example sentences of
WordNet 3.0 (Debian package wordnet-base; see offline/synth.py for the source and its licence).

About 160,000 definitions and 47,000 examples, some 2 million World tokens: little for a
language model, but it is everyday English written by lexicographers, it needs no download,
and it is the same source as the synthetic speech corpus, so the model learns the words the
recogniser will have to write.

Every text is written the way the recogniser's targets are: lowercase words separated by single
spaces, no punctuation except apostrophes inside words (what `speakable_sentence` keeps, then
AsrConfig.lowercase). Texts with digits are left out: a speaker would not say "1920" as written.
Each text is one binidx document ending in token 0, the end of text in the World vocabulary,
as the recogniser ends its transcripts. Sentences given in `exclude` (the transcripts of the
corpus's dev and test splits) are left out wherever they appear, so the language model has not
read the test sentences.

Copy documents (`copy_fraction`): a share of the texts is also written as "text # text", the
layout of the recogniser's sequences ([speech] # [transcript]) with the speech replaced by the
same words. A large LLM reads and repeats what came before from web-scale pretraining, which is
what lets SLAM-ASR keep it frozen; a few million tokens of glosses teach a small model no such
thing, and a frozen small LM then ignores the projected speech (docs/results.md). These
documents teach the repetition directly; they never hold a dev or test sentence either.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from ...io import text_lines
from ..binidx import write_binidx
from ..tokenizer import END_OF_TEXT, WorldTokenizer
from .synth import WORDNET_DIR, wordnet_glosses

log = logging.getLogger(__name__)

_NOT_A_WORD_CHARACTER = re.compile(r"[^a-z']+")


def normalize_text(text: str) -> str:
    """Lowercase words of letters and inner apostrophes, single spaces ("" when nothing is left)."""
    words = (w.strip("'") for w in _NOT_A_WORD_CHARACTER.split(text.lower()))
    return " ".join(w for w in words if w)


def wordnet_texts(wordnet_dir: Path = WORDNET_DIR) -> Iterator[str]:
    """Every gloss part of WordNet, in file order: definitions and quoted examples, normalised."""
    for gloss in wordnet_glosses(wordnet_dir):
        examples = re.findall(r'"([^"]+)"', gloss)
        definition = re.sub(r'"[^"]*"', " ", gloss)
        for part in (*definition.split(";"), *examples):
            if re.search(r"\d", part):
                continue
            text = normalize_text(part)
            if len(text.split()) >= 2:
                yield text


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


def write_wordnet_lm_data(out: str | os.PathLike, exclude: set[str], val_texts: Iterable[str] = (),
                          wordnet_dir: Path = WORDNET_DIR, copy_fraction: float = 0.0,
                          separator: str = "#", seed: int = 0) -> dict:
    """Write `<out>/train.{bin,idx}` (WordNet texts not in `exclude`, each deduplicated, and for a
    `copy_fraction` of them, chosen at random, also "text <separator> text") and, when val_texts
    are given, `<out>/val.{bin,idx}`. Returns counts for the log and meta files."""
    if not 0.0 <= copy_fraction <= 1.0:
        raise ValueError(f"copy_fraction must be in [0, 1], got {copy_fraction}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = WorldTokenizer()
    separator_ids = tokenizer.encode(separator)     # as SpeechRWKV encodes it: no spaces around
    rng = random.Random(seed)
    seen: set[str] = set()
    kept, left_out, tokens, copies = 0, 0, 0, 0

    def train_documents():
        nonlocal kept, left_out, tokens, copies
        for text in wordnet_texts(wordnet_dir):
            if text in exclude:
                left_out += 1
                continue
            if text in seen:
                continue
            seen.add(text)
            ids = tokenizer.encode(text)
            kept += 1
            tokens += len(ids) + 1
            yield ids + [END_OF_TEXT]
            if copy_fraction and rng.random() < copy_fraction:
                copies += 1
                tokens += 2 * len(ids) + len(separator_ids) + 1
                yield ids + separator_ids + ids + [END_OF_TEXT]

    write_binidx(out / "train", train_documents(), vocab_size=65536)
    counts = {"train_documents": kept, "copy_documents": copies, "train_tokens": tokens,
              "excluded_occurrences": left_out}
    val = sorted(set(val_texts))
    if val:
        write_binidx(out / "val", (tokenizer.encode(t) + [END_OF_TEXT] for t in val), vocab_size=65536)
        counts["val_documents"] = len(val)
    log.info("WordNet LM text in %s: %s", out, counts)
    return counts
