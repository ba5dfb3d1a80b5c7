"""Corpus word error rate for speech recognition, as SLAM-ASR reports it (docs/reference.md,
"WER"), under two normalisers (docs/wer.md compares them).

WER = (substitutions + deletions + insertions) / reference words, summed over the whole split
(not an average of per-utterance WERs, which RWKV-ASR reported and which weights short
utterances up). Alignment and counts come from jiwer, after a normaliser applied to both
references and hypotheses. Every split is scored twice:

"project" (normalize_text), the main number: it only removes what is not a word.
1. Unicode NFKC, then lowercase;
2. typographic apostrophes (U+2018, U+2019, U+02BC) become ASCII ';
3. every character that is not a letter, a digit, an apostrophe or whitespace becomes a
   space, so "well-known" is two words and "end." is "end";
4. an apostrophe is kept only between two letters or digits ("don't", "o'clock"); quote marks
   and leading or trailing apostrophes ("'tis", "dogs'") are removed;
5. runs of whitespace become one space, and the ends are stripped.

"whisper": the Whisper English normaliser (Radford et al. 2022, PyPI whisper-normalizer's
EnglishTextNormalizer), which SLAM-LLM's scoring scripts apply: it also expands contractions
and titles ("don't" -> "do not", "mr" -> "mister"), writes spelled numbers as digits, maps
British to American spellings and drops fillers ("hmm", "um"). Its numbers are comparable with
papers that used it, but it has quirks of its own ("nine o'clock" -> "90 clock", every "'s" ->
" is"); docs/wer.md lists them with a measured difference between the two.

An utterance whose reference normalises to nothing counts its hypothesis words as insertions.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import jiwer

from conrwkv.io import atomic_json_save, atomic_write_bytes

NORMALIZER_RULE = ("NFKC, lowercase, typographic apostrophes to ', characters other than letters, digits, "
                   "apostrophes and whitespace to spaces, apostrophes kept only between two letters or "
                   "digits, whitespace collapsed")
WHISPER_RULE = ("Whisper's English normaliser (whisper_normalizer.english.EnglishTextNormalizer): "
                "lowercase, bracketed text and fillers removed, contractions and titles expanded, "
                "spelled numbers to digits, British to American spellings, punctuation removed")

_TYPOGRAPHIC_APOSTROPHES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u02bc": "'"})
_NOT_WORD_CHARACTER = re.compile(r"[^\w\s']|_")
_APOSTROPHE_NOT_INSIDE_WORD = re.compile(r"(?<![^\W_])'|'(?![^\W_])")


def normalize_text(text: str) -> str:
    """The one normaliser applied to references and hypotheses (rule in the module docstring)."""
    text = unicodedata.normalize("NFKC", text).lower().translate(_TYPOGRAPHIC_APOSTROPHES)
    text = _NOT_WORD_CHARACTER.sub(" ", text)
    text = _APOSTROPHE_NOT_INSIDE_WORD.sub(" ", text)
    return " ".join(text.split())


@lru_cache(maxsize=1)
def _whisper_normalizer():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def whisper_normalize_text(text: str) -> str:
    """Whisper's English normaliser, as SLAM-LLM's whisper_tn.py applies it (module docstring)."""
    return _whisper_normalizer()(text)


# name -> (normaliser, rule). "project" comes first: it is the main number of every table.
NORMALIZERS: dict[str, tuple[Callable[[str], str], str]] = {
    "project": (normalize_text, NORMALIZER_RULE),
    "whisper": (whisper_normalize_text, WHISPER_RULE),
}


@dataclass(frozen=True)
class WerResult:
    """Error counts of one split after normalisation; wer is errors / reference words."""

    normalizer: str
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
        return {**asdict(self), "errors": self.errors, "wer": self.wer,
                "normalizer_rule": NORMALIZERS[self.normalizer][1]}


def corpus_wer(references: Sequence[str], hypotheses: Sequence[str],
               normalizer: str = "project") -> WerResult:
    """Total errors over total reference words, with both sides normalised by NORMALIZERS[normalizer];
    counts from jiwer."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if normalizer not in NORMALIZERS:
        raise ValueError(f"unknown normaliser {normalizer!r} (choose from {', '.join(NORMALIZERS)})")
    normalize = NORMALIZERS[normalizer][0]
    refs = [normalize(t) for t in references]
    hyps = [normalize(t) for t in hypotheses]
    # jiwer aligns non-empty references; an empty one makes every hypothesis word an insertion.
    pairs = [(r, h) for r, h in zip(refs, hyps) if r]
    extra_insertions = sum(len(h.split()) for r, h in zip(refs, hyps) if not r)
    hits = substitutions = deletions = insertions = 0
    if pairs:
        out = jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs])
        hits, substitutions = out.hits, out.substitutions
        deletions, insertions = out.deletions, out.insertions
    return WerResult(normalizer=normalizer, utterances=len(refs),
                     reference_words=sum(len(r.split()) for r in refs),
                     hypothesis_words=sum(len(h.split()) for h in hyps), hits=hits,
                     substitutions=substitutions, deletions=deletions,
                     insertions=insertions + extra_insertions)


def score_all(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, WerResult]:
    """corpus_wer under every normaliser, by name ("project" first)."""
    return {name: corpus_wer(references, hypotheses, name) for name in NORMALIZERS}


def split_summary(scores: Mapping[str, WerResult]) -> dict:
    """One split's scores as JSON: the project normaliser's counts and WER at the top (what
    tables read), each other normaliser's under its name."""
    main, *others = NORMALIZERS
    return {**scores[main].summary(), **{name: scores[name].summary() for name in others}}


def write_split_results(out_dir: str | os.PathLike, split: str, ids: Sequence[str],
                        references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, WerResult]:
    """Score one split under every normaliser and write, in out_dir, `<split>.hyp.txt` and
    `<split>.ref.txt` (one `<id> <text>` line per utterance, sorted by id, texts as given with
    whitespace collapsed) and `<split>.wer.json` (split_summary: counts, WERs, normaliser rules).
    Files that exist are an error: results are never replaced."""
    if not len(ids) == len(references) == len(hypotheses):
        raise ValueError(f"{len(ids)} ids, {len(references)} references, {len(hypotheses)} hypotheses")
    if len(set(ids)) != len(ids):
        raise ValueError(f"split {split}: utterance ids are not unique")
    if any(c.isspace() for utt_id in ids for c in utt_id):
        raise ValueError(f"split {split}: utterance ids must not contain whitespace")
    out_dir = Path(out_dir)
    targets = [out_dir / f"{split}.{suffix}" for suffix in ("hyp.txt", "ref.txt", "wer.json")]
    existing = [str(p) for p in targets if p.exists()]
    if existing:
        raise FileExistsError(f"split {split}: {', '.join(existing)} exist(s); results are never replaced")
    scores = score_all(references, hypotheses)
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    for path, texts in zip(targets, (hypotheses, references)):
        lines = "".join(f"{ids[i]} {' '.join(texts[i].split())}\n" for i in order)
        atomic_write_bytes(path, lambda f, data=lines: f.write(data.encode()))
    atomic_json_save({"split": split, **split_summary(scores)}, targets[2])
    return scores


def read_split_summary(out_dir: str | os.PathLike, split: str) -> dict[str, WerResult]:
    """The WerResults that write_split_results saved for `split`, by normaliser."""
    data = json.loads((Path(out_dir) / f"{split}.wer.json").read_text())
    main, *others = NORMALIZERS
    fields = WerResult.__dataclass_fields__
    return {main: WerResult(**{k: data[k] for k in fields}),
            **{name: WerResult(**{k: data[name][k] for k in fields}) for name in others}}


def format_wer_table(scores: Mapping[str, Mapping[str, WerResult]],
                     in_corpus: Mapping[str, int] | None = None) -> str:
    """A Markdown table, one row per split: utterances scored (of those in the corpus, when
    given), reference words, WER %, S, D, I under the project normaliser, then WER % and
    reference words under Whisper's."""
    rows = ["| split | utterances | words | WER % | sub | del | ins | Whisper-norm. WER % "
            "| Whisper-norm. words |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for split, by_norm in scores.items():
        r, w = by_norm["project"], by_norm["whisper"]
        utterances = f"{r.utterances}" + (f" / {in_corpus[split]}" if in_corpus else "")
        rows.append(f"| {split} | {utterances} | {r.reference_words} | {100 * r.wer:.2f} | "
                    f"{r.substitutions} | {r.deletions} | {r.insertions} | {100 * w.wer:.2f} | "
                    f"{w.reference_words} |")
    return "\n".join(rows)
