"""The spoken-digits task: strings of digits said one word per digit ("three one four"), the
text of a small speech corpus (synth.py with text="digits") and of the LM text a tiny language
model learns them from (write_digit_lm_text), with copy documents ("three one four # three one
four") that teach it to write out what it was shown: the ability SLAM-ASR borrows from a large
LLM, which a model pretrained on the spot does not have otherwise.

Digits are written as words, never as numerals: a synthesiser reads "314" as "three hundred
fourteen", and the recogniser's targets are lowercase words.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable
from pathlib import Path

from ..binidx import write_binidx
from ..tokenizer import END_OF_TEXT, WorldTokenizer

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEXT_SOURCE = "digit strings said one word per digit (generated, seeded)"
META_FILE = "digits-lm-meta.json"


def distinct_strings(min_digits: int, max_digits: int) -> int:
    """How many different digit strings have min_digits..max_digits digits."""
    return sum(10 ** n for n in range(min_digits, max_digits + 1))


def digit_string_pairs(count: int, min_digits: int = 3, max_digits: int = 8,
                       seed: int = 0) -> list[tuple[str, str]]:
    """`count` distinct digit strings as (spoken, UPPERCASE transcript), the way synth.py takes
    its sentences: the same list for the same arguments. The lengths are spread evenly over
    min_digits..max_digits as far as each length has strings to give."""
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
    available = distinct_strings(min_digits, max_digits)
    if count > available // 2:
        raise ValueError(f"{count} distinct strings of {min_digits}-{max_digits} digits: ask for at "
                         f"most half of the {available} there are (longer strings give more)")
    rng = random.Random(seed)
    seen: set[tuple[int, ...]] = set()
    per_length = dict.fromkeys(range(min_digits, max_digits + 1), 0)
    pairs = []
    lengths = list(per_length)
    while len(pairs) < count:
        n = lengths[len(pairs) % len(lengths)]
        if per_length[n] >= 10 ** n // 2:           # half of this length's strings: used up
            lengths.remove(n)
            continue
        digits = tuple(rng.randrange(10) for _ in range(n))
        if digits in seen:
            continue
        seen.add(digits)
        per_length[n] += 1
        words = " ".join(DIGIT_WORDS[d] for d in digits)
        pairs.append((words, words.upper()))
    return pairs


def write_digit_lm_text(out: str | os.PathLike, documents: int, exclude: Iterable[str],
                        val_texts: Iterable[str] = (), min_digits: int = 3, max_digits: int = 8,
                        copy_fraction: float = 0.5, separator: str = "#", seed: int = 0) -> dict:
    """Write `<out>/train.{bin,idx}`: `documents` digit strings, each its own document ending in
    END_OF_TEXT, none of them a string in `exclude` (the corpus's dev and test transcripts,
    any case), and after a `copy_fraction` of them a copy document "string <separator>
    string"; `<out>/val.{bin,idx}` from val_texts; `<out>/digits-lm-meta.json` with the counts,
    which are also returned. Documents are lowercase words as the recogniser's targets are."""
    if not 0.0 <= copy_fraction <= 1.0:
        raise ValueError(f"copy_fraction must be in [0, 1], got {copy_fraction}")
    if documents < 1:
        raise ValueError(f"documents must be >= 1, got {documents}")
    keep_out = {" ".join(t.lower().split()) for t in exclude}
    tokenizer = WorldTokenizer()
    separator_ids = tokenizer.encode(separator)        # as SpeechRWKV encodes it: no spaces around
    rng = random.Random(seed)
    counts = dict.fromkeys(("documents", "tokens", "copy_documents", "copy_tokens", "excluded"), 0)

    def train_documents():
        while counts["documents"] < documents:
            n = rng.randint(min_digits, max_digits)
            text = " ".join(DIGIT_WORDS[rng.randrange(10)] for _ in range(n))
            if text in keep_out:
                counts["excluded"] += 1
                continue
            ids = tokenizer.encode(text)
            counts["documents"] += 1
            counts["tokens"] += len(ids) + 1
            yield ids + [END_OF_TEXT]
            if rng.random() < copy_fraction:
                copy = ids + separator_ids + ids + [END_OF_TEXT]
                counts["copy_documents"] += 1
                counts["copy_tokens"] += len(copy)
                yield copy

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_binidx(out / "train", train_documents(), vocab_size=65536)
    meta = {"text_source": TEXT_SOURCE, "digits": [min_digits, max_digits], **counts,
            "train_tokens": counts["tokens"] + counts["copy_tokens"], "copy_fraction": copy_fraction,
            "separator": separator, "seed": seed, "excluded_strings": len(keep_out)}
    val = sorted({" ".join(t.lower().split()) for t in val_texts})
    if val:
        write_binidx(out / "val", (tokenizer.encode(t) + [END_OF_TEXT] for t in val), vocab_size=65536)
        meta["val_documents"] = len(val)
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta
