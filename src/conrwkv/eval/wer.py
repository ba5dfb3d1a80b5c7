"""Corpus word error rate for speech recognition, as SLAM-ASR reports it (SPEC.md section 6).

WER = (substitutions + deletions + insertions) / reference words, summed over the whole split
(not an average of per-utterance WERs, which RWKV-ASR reported and which weights short
utterances up). Alignment and counts come from jiwer, after one normaliser applied to both
references and hypotheses:

1. Unicode NFKC, then lowercase;
2. typographic apostrophes (U+2018, U+2019, U+02BC) become ASCII ';
3. every character that is not a letter, a digit, an apostrophe or whitespace becomes a
   space, so "well-known" is two words and "end." is "end";
4. an apostrophe is kept only between two letters or digits ("don't", "o'clock"); quote marks
   and leading or trailing apostrophes ("'tis", "dogs'") are removed;
5. runs of whitespace become one space, and the ends are stripped.

An utterance whose reference normalises to nothing counts its hypothesis words as insertions.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import jiwer

from conrwkv.io import atomic_json_save, atomic_write_bytes

NORMALIZER_RULE = ("NFKC, lowercase, typographic apostrophes to ', characters other than letters, digits, "
                   "apostrophes and whitespace to spaces, apostrophes kept only between two letters or "
                   "digits, whitespace collapsed")

_TYPOGRAPHIC_APOSTROPHES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u02bc": "'"})
_NOT_WORD_CHARACTER = re.compile(r"[^\w\s']|_")
_APOSTROPHE_NOT_INSIDE_WORD = re.compile(r"(?<![^\W_])'|'(?![^\W_])")


def normalize_text(text: str) -> str:
    """The one normaliser applied to references and hypotheses (rule in the module docstring)."""
    text = unicodedata.normalize("NFKC", text).lower().translate(_TYPOGRAPHIC_APOSTROPHES)
    text = _NOT_WORD_CHARACTER.sub(" ", text)
    text = _APOSTROPHE_NOT_INSIDE_WORD.sub(" ", text)
    return " ".join(text.split())


@dataclass(frozen=True)
class WerResult:
    """Error counts of one split after normalisation; wer is errors / reference words."""

    utterances: int
    reference_words: int
    hypothesis_words: int
    hits: int
    substitutions: int
    deletions: int
    insertions: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        if self.reference_words == 0:
            raise ValueError("WER is undefined: the references hold no words after normalisation")
        return self.errors / self.reference_words

    def summary(self) -> dict:
        return {**asdict(self), "errors": self.errors, "wer": self.wer, "normalizer": NORMALIZER_RULE}


def corpus_wer(references: Sequence[str], hypotheses: Sequence[str]) -> WerResult:
    """Total errors over total reference words, with both sides normalised; counts from jiwer."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    refs = [normalize_text(t) for t in references]
    hyps = [normalize_text(t) for t in hypotheses]
    # jiwer aligns non-empty references; an empty one makes every hypothesis word an insertion.
    pairs = [(r, h) for r, h in zip(refs, hyps) if r]
    extra_insertions = sum(len(h.split()) for r, h in zip(refs, hyps) if not r)
    hits = substitutions = deletions = insertions = 0
    if pairs:
        out = jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs])
        hits, substitutions = out.hits, out.substitutions
        deletions, insertions = out.deletions, out.insertions
    return WerResult(utterances=len(refs), reference_words=sum(len(r.split()) for r in refs),
                     hypothesis_words=sum(len(h.split()) for h in hyps), hits=hits,
                     substitutions=substitutions, deletions=deletions,
                     insertions=insertions + extra_insertions)


def write_split_results(out_dir: str | os.PathLike, split: str, ids: Sequence[str],
                        references: Sequence[str], hypotheses: Sequence[str]) -> WerResult:
    """Score one split and write, in out_dir, `<split>.hyp.txt` and `<split>.ref.txt` (one
    `<id> <text>` line per utterance, sorted by id, texts as given with whitespace collapsed)
    and `<split>.wer.json` (the counts, the WER and the normaliser rule)."""
    if not len(ids) == len(references) == len(hypotheses):
        raise ValueError(f"{len(ids)} ids, {len(references)} references, {len(hypotheses)} hypotheses")
    if len(set(ids)) != len(ids):
        raise ValueError(f"split {split}: utterance ids are not unique")
    if any(c.isspace() for utt_id in ids for c in utt_id):
        raise ValueError(f"split {split}: utterance ids must not contain whitespace")
    result = corpus_wer(references, hypotheses)
    out_dir = Path(out_dir)
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    for suffix, texts in (("hyp", hypotheses), ("ref", references)):
        lines = "".join(f"{ids[i]} {' '.join(texts[i].split())}\n" for i in order)
        atomic_write_bytes(out_dir / f"{split}.{suffix}.txt", lambda f, data=lines: f.write(data.encode()))
    atomic_json_save({"split": split, **result.summary()}, out_dir / f"{split}.wer.json")
    return result


def read_split_summary(out_dir: str | os.PathLike, split: str) -> WerResult:
    """The WerResult that write_split_results saved for `split`."""
    data = json.loads((Path(out_dir) / f"{split}.wer.json").read_text())
    return WerResult(**{k: data[k] for k in WerResult.__dataclass_fields__})


def format_wer_table(results: Mapping[str, WerResult]) -> str:
    """A Markdown table, one row per split: utterances, reference words, WER %, S, D, I."""
    rows = ["| split | utterances | words | WER % | sub | del | ins |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for split, r in results.items():
        rows.append(f"| {split} | {r.utterances} | {r.reference_words} | {100 * r.wer:.2f} | "
                    f"{r.substitutions} | {r.deletions} | {r.insertions} |")
    return "\n".join(rows)
