"""The spoken-digits task data (data/offline/digits.py): digit strings said one word per digit as
the sentences of a synthetic corpus (synth --text digits), and the LM text of digit strings with
copy documents (dataset2.py digitlm) that keeps the corpus's test strings out."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest
from speech_fixtures import dataset2_cli

from conrwkv.data.binidx import BinidxReader
from conrwkv.data.offline.digits import DIGIT_WORDS, digit_string_pairs, write_digit_lm_text
from conrwkv.data.offline.lm_text import corpus_transcripts
from conrwkv.data.offline.synth import SynthConfig, plan_corpus, synthesize_corpus
from conrwkv.data.speech import load_audio, load_corpus
from conrwkv.data.tokenizer import END_OF_TEXT, WorldTokenizer

HAVE_TOOLS = shutil.which("espeak-ng") is not None and shutil.which("flite") is not None
DIGITS = SynthConfig(train=6, dev=2, test_clean=2, test_other=2, seed=3, text="digits", min_words=3,
                     max_words=8, voices=("espeak:en-us", "flite:slt"), heldout_voices=("flite:kal",),
                     speeds=(1.0,))


def test_digit_strings_are_distinct_words_spread_over_the_lengths_and_seeded():
    pairs = digit_string_pairs(600, 3, 8, seed=1)
    assert pairs == digit_string_pairs(600, 3, 8, seed=1) != digit_string_pairs(600, 3, 8, seed=2)
    assert len({t for _, t in pairs}) == 600
    for spoken, transcript in pairs:
        assert transcript == spoken.upper() and set(spoken.split()) <= set(DIGIT_WORDS)
    assert set(Counter(len(s.split()) for s, _ in pairs).values()) == {100}   # 100 of each length 3..8


def test_a_length_with_few_strings_gives_what_it_has_and_too_many_are_refused():
    lengths = Counter(len(s.split()) for s, _ in digit_string_pairs(100, 1, 3))
    # half of the 10 one-digit strings, the rest from the longer ones
    assert lengths[1] == 5 and lengths[1] + lengths[2] + lengths[3] == 100
    with pytest.raises(ValueError, match="at most half of the 1110"):
        digit_string_pairs(600, 1, 3)
    with pytest.raises(ValueError, match="text must be one of wordnet, digits"):
        SynthConfig(text="numbers").validate()
    with pytest.raises(ValueError, match="too few"):
        SynthConfig(text="digits", min_words=2, max_words=4).validate()


def test_the_plan_says_digit_strings_and_keeps_the_older_corpora_parameters():
    assert "text" not in SynthConfig().params() and SynthConfig(text="digits").params()["text"] == "digits"
    plan = plan_corpus(DIGITS, digit_string_pairs(20000, 3, 8, DIGITS.seed))
    assert len(plan) == 12 and len({u.transcript for u in plan}) == 12
    assert all(set(u.transcript.lower().split()) <= set(DIGIT_WORDS) for u in plan)


@pytest.mark.skipif(not HAVE_TOOLS, reason="needs espeak-ng and flite (apt-get install espeak-ng flite)")
def test_a_spoken_digits_corpus_in_librispeech_layout_with_its_lm_text(tmp_path, capsys):
    corpus = synthesize_corpus(tmp_path / "digits", DIGITS, workers=2, progress=False)
    meta = json.loads((corpus / "meta.json").read_text())
    assert meta["complete"] and meta["text_source"].startswith("digit strings")
    for split, count in DIGITS.counts().items():
        utterances = load_corpus(corpus, split)
        assert len(utterances) == count
        for utt in utterances:
            assert set(utt.text.lower().split()) <= set(DIGIT_WORDS)
            assert 0.5 < len(load_audio(utt.audio)) / 16000 < 8
    test_strings = corpus_transcripts(corpus, ["dev", "test-clean", "test-other"])

    cli = dataset2_cli()
    assert cli.main(["digitlm", "--corpus", str(corpus), "--out", str(tmp_path / "lm"), "--documents", "300",
                     "--min_digits", "3", "--max_digits", "3", "--copy_fraction", "0.5"]) == 0
    assert "300 strings" in capsys.readouterr().out
    lm_meta = json.loads((tmp_path / "lm" / "digits-lm-meta.json").read_text())
    reader = BinidxReader(tmp_path / "lm" / "train")
    tokenizer = WorldTokenizer()
    texts = [tokenizer.decode(reader[i][:-1].tolist()) for i in range(len(reader))]
    assert all(reader[i][-1] == END_OF_TEXT for i in range(len(reader)))
    strings = [t for t in texts if "#" not in t]
    copies = [t for t in texts if "#" in t]
    assert len(strings) == lm_meta["documents"] == 300 and len(copies) == lm_meta["copy_documents"]
    assert 100 < len(copies) < 200 and all(a == b for a, b in (c.split("#") for c in copies))
    assert not set(strings) & test_strings           # 3-digit strings: the test ones would come up
    assert reader.n_tokens == lm_meta["train_tokens"]
    assert len(BinidxReader(tmp_path / "lm" / "val")) == lm_meta["val_documents"] == 2


def test_digit_lm_text_refuses_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="copy_fraction"):
        write_digit_lm_text(tmp_path / "lm", 10, exclude=(), copy_fraction=2.0)
    with pytest.raises(ValueError, match="documents"):
        write_digit_lm_text(tmp_path / "lm", 0, exclude=())


def test_excluded_strings_never_become_documents(tmp_path):
    every = [" ".join(DIGIT_WORDS[int(c)] for c in f"{n:03d}") for n in range(1000)]
    kept = "one two three"
    meta = write_digit_lm_text(tmp_path / "lm", 50, exclude=[s.upper() for s in every if s != kept],
                               min_digits=3, max_digits=3, copy_fraction=0.0)
    reader = BinidxReader(tmp_path / "lm" / "train")
    tokenizer = WorldTokenizer()
    assert {tokenizer.decode(reader[i][:-1].tolist()) for i in range(len(reader))} == {kept}
    assert meta["documents"] == 50 and meta["excluded"] > 1000 and meta["excluded_strings"] == 999
