"""Corpus WER: the normaliser, agreement with jiwer, the counts, the files and the table."""

from __future__ import annotations

import json

import jiwer
import pytest

from conrwkv.eval.wer import (
    WerResult,
    corpus_wer,
    format_wer_table,
    normalize_text,
    read_split_summary,
    write_split_results,
)


@pytest.mark.parametrize("raw,normalized", [
    ("HELLO World", "hello world"),
    ("Hello, world!  How are   you?", "hello world how are you"),
    ("DON'T stop; it's o'clock", "don't stop it's o'clock"),
    ("don\u2019t", "don't"),                                     # typographic apostrophe
    ("'quoted' words", "quoted words"),
    ("the dogs' bones", "the dogs bones"),                       # trailing apostrophe removed
    ("well-known end.", "well known end"),
    ("3.5 per-cent", "3 5 per cent"),
    ("snake_case\ttab\nnewline", "snake case tab newline"),
    ("Caf\u00e9 \uff21", "caf\u00e9 a"),                          # NFKC: fullwidth A is a
    (" ... ", ""),
])
def test_normaliser_follows_the_documented_rule(raw, normalized):
    assert normalize_text(raw) == normalized
    assert normalize_text(normalized) == normalized                 # idempotent


PAIRS = [
    ("THE CAT SAT ON THE MAT", "the cat sat on a mat"),
    ("HELLO WORLD", "hello, world!"),
    ("A B C D E F G H", "a b x d f g h i j"),
    ("I DON'T KNOW", "i do not know"),
    ("ONE", "one two three four"),
]


def test_corpus_wer_equals_jiwer_on_known_pairs():
    refs, hyps = zip(*PAIRS)
    result = corpus_wer(refs, hyps)
    expected = jiwer.wer([normalize_text(r) for r in refs], [normalize_text(h) for h in hyps])
    assert result.wer == pytest.approx(expected)
    out = jiwer.process_words([normalize_text(r) for r in refs], [normalize_text(h) for h in hyps])
    assert (result.substitutions, result.deletions, result.insertions, result.hits) == (
        out.substitutions, out.deletions, out.insertions, out.hits)


def test_corpus_wer_is_total_errors_over_total_words_not_a_mean():
    # 1 error in 1 word and 0 errors in 9 words: corpus 1/10, mean of utterance WERs 1/2.
    result = corpus_wer(["YES", "A B C D E F G H I"], ["no", "a b c d e f g h i"])
    assert result.wer == pytest.approx(0.1)
    assert (result.errors, result.reference_words, result.utterances) == (1, 10, 2)


def test_counts_by_hand():
    result = corpus_wer(["A B C D"], ["a x c d e"])          # b->x substituted, e inserted
    assert (result.hits, result.substitutions, result.deletions, result.insertions) == (3, 1, 0, 1)
    result = corpus_wer(["A B C D"], ["a d"])                 # b and c deleted
    assert (result.hits, result.substitutions, result.deletions, result.insertions) == (2, 0, 2, 0)
    assert result.wer == pytest.approx(0.5)
    assert result.hypothesis_words == 2


def test_empty_references_count_insertions_and_all_empty_is_undefined():
    result = corpus_wer(["A B", "..."], ["a b", "extra words"])
    assert (result.insertions, result.reference_words, result.wer) == (2, 2, 1.0)
    with pytest.raises(ValueError, match="undefined"):
        _ = corpus_wer([""], ["x"]).wer
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        corpus_wer(["a", "b"], ["a"])


def test_split_files_summary_and_table(tmp_path):
    ids = ["1-2-0002", "1-2-0001"]
    refs = ["HELLO WORLD", "GOOD MORNING TO YOU"]
    hyps = ["hello  word\n", "good morning to you"]
    result = write_split_results(tmp_path, "test-clean", ids, refs, hyps)
    assert (tmp_path / "test-clean.hyp.txt").read_text() == (
        "1-2-0001 good morning to you\n1-2-0002 hello word\n")
    assert (tmp_path / "test-clean.ref.txt").read_text() == (
        "1-2-0001 GOOD MORNING TO YOU\n1-2-0002 HELLO WORLD\n")
    summary = json.loads((tmp_path / "test-clean.wer.json").read_text())
    assert summary["wer"] == pytest.approx(1 / 6) and summary["split"] == "test-clean"
    assert summary["errors"] == 1 and summary["reference_words"] == 6
    assert summary["normalizer"] == "project" and "lowercase" in summary["normalizer_rule"]
    assert summary["whisper"]["normalizer"] == "whisper" and summary["whisper"]["wer"] == pytest.approx(1 / 6)
    assert "Whisper" in summary["whisper"]["normalizer_rule"]
    assert read_split_summary(tmp_path, "test-clean") == result
    assert set(result) == {"project", "whisper"}

    other = {name: WerResult(normalizer=name, utterances=3, reference_words=40 - i, hypothesis_words=41,
                             hits=37 - i, substitutions=2, deletions=1, insertions=2)
             for i, name in enumerate(("project", "whisper"))}
    table = format_wer_table({"test-clean": result, "test-other": other}).splitlines()
    assert table[0].startswith("| split |") and "Whisper-norm. WER %" in table[0] and len(table) == 4
    assert table[2] == "| test-clean | 2 | 6 | 16.67 | 1 | 0 | 0 | 16.67 | 6 |"
    assert table[3] == "| test-other | 3 | 40 | 12.50 | 2 | 1 | 2 | 12.82 | 39 |"
    table = format_wer_table({"test-other": other}, in_corpus={"test-other": 5}).splitlines()
    assert table[2].startswith("| test-other | 3 / 5 | 40 |")


def test_split_results_are_never_replaced(tmp_path):
    write_split_results(tmp_path, "dev", ["a"], ["x"], ["x"])
    with pytest.raises(FileExistsError, match=r"dev.hyp.txt.*never replaced"):
        write_split_results(tmp_path, "dev", ["a"], ["y"], ["y"])
    assert (tmp_path / "dev.ref.txt").read_text() == "a x\n"


def test_split_results_refuse_inconsistent_input(tmp_path):
    with pytest.raises(ValueError, match="not unique"):
        write_split_results(tmp_path, "dev", ["a", "a"], ["x", "y"], ["x", "y"])
    with pytest.raises(ValueError, match="2 ids, 1 references"):
        write_split_results(tmp_path, "dev", ["a", "b"], ["x"], ["x", "y"])
    with pytest.raises(ValueError, match="whitespace"):
        write_split_results(tmp_path, "dev", ["a b"], ["x"], ["x"])
