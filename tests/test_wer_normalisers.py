"""The two WER normalisers (docs/wer.md): Whisper's scoring checked against jiwer on
EnglishTextNormalizer's own output, the quirks docs/wer.md reports, and the measured number of
tricky reference/hypothesis pairs that the two normalisers score differently.

    python -m pytest -q tests/test_wer_normalisers.py     # the measurement docs/wer.md cites
"""

from __future__ import annotations

import jiwer
import pytest
from whisper_normalizer.english import EnglishTextNormalizer

from conrwkv.eval.wer import corpus_wer, normalize_text, score_all, whisper_normalize_text

# LibriSpeech-style references (uppercase, spelled out) against hypotheses as an LLM writes them:
# contractions, titles, numbers and money, o'clock, British spellings, fillers, hyphens,
# possessives, old split spellings ("TO DAY"). Some pairs are scored alike on purpose.
PAIRS = [
    ("I DON'T KNOW", "i do not know"),
    ("IT IS NINE O'CLOCK", "it is 9 o'clock"),
    ("IT IS NINE O'CLOCK", "it is nine o'clock"),
    ("MISTER SMITH CAME IN", "mr smith came in"),
    ("MISSUS BROWN SAT DOWN", "mrs. brown sat down"),
    ("DOCTOR WATSON", "dr watson"),
    ("SAINT PAUL'S CATHEDRAL", "st paul's cathedral"),
    ("IN EIGHTEEN O THREE", "in 1803"),
    ("TWENTY FIVE MEN", "twenty-five men"),
    ("TWENTY FIVE MEN", "25 men"),
    ("ONE HUNDRED AND FIVE POUNDS", "105 pounds"),
    ("THE COLOUR OF HONOUR", "the color of honor"),
    ("HE REALISED IT", "he realized it"),
    ("A WELL KNOWN MAN", "a well-known man"),
    ("TO DAY AND TO MORROW", "today and tomorrow"),
    ("HMM YES", "yes"),
    ("UM I THINK SO", "i think so"),
    ("THE CAT'S WHISKERS", "the cat's whiskers"),
    ("THE CAT'S WHISKERS", "the cats whiskers"),
    ("HE'LL GO", "he will go"),
    ("WE'VE DONE IT", "we have done it"),
    ("I'M HERE", "i am here"),
    ("I CAN'T", "i cannot"),
    ("WE WON'T", "we will not"),
    ("IT IS OK", "it is okay"),
    ("THE FIRST DAY", "the 1st day"),
    ("THREE POINT FIVE PER CENT", "3.5%"),
    ("TEN DOLLARS", "$10"),
    ("A GRAY HORSE", "a grey horse"),
    ("AT THE THEATRE", "at the theater"),
    ("NO ONE CAME", "no-one came"),
    ("'TIS TRUE", "it is true"),
    ("O'BRIEN SAID", "obrien said"),
    ("NAPOLEON'S ARMY", "napoleon's army"),
    ("THE YEAR EIGHTEEN FIFTY", "the year 1850"),
    ("ONE OR TWO", "1 or 2"),
    ("THE THIRTY FIRST OF MAY", "the 31st of may"),
    ("JOHN SMITH JUNIOR", "john smith jr"),
    ("AND SO ON ETCETERA", "and so on etc"),
    ("ISN'T IT", "is not it"),
    ("GOOD BYE", "goodbye"),
    ("THE DOGS' BONES", "the dog's bones"),
    ("HELLO, WORLD!", "hello world"),
]

# Pairs whose error counts (S + D + I) differ between the two normalisers, and the corpus counts
# over all pairs: the numbers docs/wer.md reports (whisper-normalizer 0.1.15, jiwer 4.0.0).
DIFFERENTLY_SCORED = 31
CORPUS = {"project": (62, 134), "whisper": (18, 129)}       # errors, reference words


def _errors(reference: str, hypothesis: str, normalize) -> int:
    """S + D + I of one pair straight from jiwer (an empty reference: every word inserted)."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return len(hyp.split())
    out = jiwer.process_words(ref, hyp)
    return out.substitutions + out.deletions + out.insertions


def test_whisper_scoring_equals_jiwer_on_english_text_normalizer_output():
    normalizer = EnglishTextNormalizer()
    refs, hyps = zip(*PAIRS)
    result = corpus_wer(refs, hyps, "whisper")
    out = jiwer.process_words([normalizer(r) for r in refs], [normalizer(h) for h in hyps])
    assert (result.hits, result.substitutions, result.deletions, result.insertions) == (
        out.hits, out.substitutions, out.deletions, out.insertions)
    assert result.wer == pytest.approx(jiwer.wer([normalizer(r) for r in refs],
                                                 [normalizer(h) for h in hyps]))
    assert all(whisper_normalize_text(t) == normalizer(t) for pair in PAIRS for t in pair)


def test_measured_difference_between_the_normalisers():
    differ = [pair for pair in PAIRS
              if _errors(*pair, normalize_text) != _errors(*pair, whisper_normalize_text)]
    assert len(PAIRS) == 43 and len(differ) == DIFFERENTLY_SCORED
    refs, hyps = zip(*PAIRS)
    scores = score_all(refs, hyps)
    assert {name: (r.errors, r.reference_words) for name, r in scores.items()} == CORPUS
    assert sum(_errors(*pair, normalize_text) for pair in PAIRS) == CORPUS["project"][0]


@pytest.mark.parametrize("raw,whisper", [
    ("I DON'T KNOW", "i do not know"),                  # contractions expanded
    ("Mr. Smith", "mister smith"),                      # titles spelled out
    ("IN EIGHTEEN O THREE", "in 1803"),                 # spelled numbers to digits
    ("THE COLOUR OF HONOUR", "the color of honor"),     # British to American
    ("HMM YES", "yes"),                                 # fillers dropped
    ("IT IS NINE O'CLOCK", "it is 90 clock"),           # quirk: the "o" of o'clock read as zero
    ("THE CAT'S WHISKERS", "the cat is whiskers"),      # quirk: every 's becomes "is"
    ("O'BRIEN SAID", "0 brien said"),                   # quirk: O' read as zero
    ("TO DAY", "to day"),                               # old split spellings stay split
])
def test_whisper_normaliser_behaviour_that_docs_wer_md_describes(raw, whisper):
    assert EnglishTextNormalizer()(raw) == whisper
