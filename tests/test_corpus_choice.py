"""Naming corpora on the command line: PATH:SPLIT for folders of several splits (LibriSpeech roots,
DatasetDicts), paths with colons, report names that never clash, and the counts of what a corpus
held and what loading left out."""

from __future__ import annotations

import shutil

import pytest
from speech_fixtures import LIBRISPEECH_UTTERANCES, make_librispeech, save_dataset_dict

from conrwkv.asr.data import (
    CorpusSpec,
    corpus_names,
    eval_dataset,
    parse_corpora,
    parse_corpus,
    speech_dataset,
)
from conrwkv.config import AsrConfig
from conrwkv.data.speech import CorpusCounts, corpus_splits, load_corpus, load_corpus_with_counts

N = len(LIBRISPEECH_UTTERANCES)


@pytest.fixture
def root(tmp_path):
    """tmp/LibriSpeech/{test-clean,test-other}/..."""
    make_librispeech(tmp_path, "test-clean")
    make_librispeech(tmp_path, "test-other")
    return tmp_path


def test_librispeech_root_lists_its_splits_and_a_split_folder_none(root):
    assert corpus_splits(root) == corpus_splits(root / "LibriSpeech") == ["test-clean", "test-other"]
    assert corpus_splits(root / "LibriSpeech" / "test-clean") == []
    assert corpus_splits(root / "nothing-here") == []


def test_path_colon_split_names_a_split_of_a_root(root):
    for base in (root, root / "LibriSpeech"):
        spec = parse_corpus(f"{base}:test-other", "--eval_data")
        assert spec == CorpusSpec(f"{base}:test-other", str(base), "test-other")
        assert len(load_corpus(spec.path, spec.split)) == N
    plain = parse_corpus(str(root / "LibriSpeech" / "test-clean"), "--eval_data")
    assert plain.split is None and plain.path == str(root / "LibriSpeech" / "test-clean")


def test_an_ambiguous_folder_lists_its_splits_and_the_syntax(root):
    with pytest.raises(ValueError) as info:
        parse_corpus(str(root), "--eval_data")
    assert str(info.value) == (f"--eval_data: {root} holds several splits (test-clean, test-other); "
                               f"name one as PATH:SPLIT, e.g. --eval_data {root}:test-clean")
    with pytest.raises(ValueError, match=r"--val_file: .* has no split 'dev-clean'; its splits: "
                                         r"test-clean, test-other"):
        parse_corpus(f"{root}:dev-clean", "--val_file")
    with pytest.raises(ValueError, match=r"--eval_data: .*nowhere:test-clean does not exist"):
        parse_corpus(f"{root / 'nowhere'}:test-clean", "--eval_data")
    with pytest.raises(ValueError, match=r"--data_file: .*nowhere does not exist"):
        parse_corpus(str(root / "nowhere"), "--data_file")


def test_a_root_with_one_split_needs_no_name(tmp_path):
    make_librispeech(tmp_path, "dev-clean")
    assert parse_corpus(str(tmp_path), "--val_file").split == "dev-clean"


def test_a_path_with_a_colon_that_exists_is_a_path(tmp_path):
    split_dir = make_librispeech(tmp_path / "run:3", "test-clean")
    spec = parse_corpus(str(split_dir), "--eval_data")
    assert (spec.path, spec.split) == (str(split_dir), None)
    # and a split of a root whose own name has a colon
    spec = parse_corpus(f"{tmp_path / 'run:3'}:test-clean", "--eval_data")
    assert (spec.path, spec.split) == (str(tmp_path / "run:3"), "test-clean")


def test_a_dataset_dict_split_is_named_the_same_way(tmp_path):
    pytest.importorskip("datasets", reason="pip install datasets (requirements.txt)")
    save_dataset_dict(tmp_path / "hf", ("validation", "test"), seconds=0.2)
    assert corpus_splits(tmp_path / "hf") == ["validation", "test"]
    with pytest.raises(ValueError, match=r"several splits \(validation, test\); name one as PATH:SPLIT"):
        parse_corpus(str(tmp_path / "hf"), "--eval_data")
    spec = parse_corpus(f"{tmp_path / 'hf'}:test", "--eval_data")
    assert [u.text for u in load_corpus(spec.path, spec.split)] == ["HELLO"]
    assert corpus_names([spec]) == ["test"]


def test_report_names_use_the_split_and_add_parents_only_to_tell_corpora_apart(tmp_path):
    make_librispeech(tmp_path / "a", "test-clean")
    make_librispeech(tmp_path / "b", "test-clean")
    shutil.move(tmp_path / "b" / "LibriSpeech" / "test-clean", tmp_path / "b" / "test-clean")
    make_librispeech(tmp_path / "a", "test-other")
    specs = parse_corpora(f"{tmp_path / 'a/LibriSpeech/test-clean'},{tmp_path / 'b/test-clean'},"
                          f"{tmp_path / 'a'}:test-other", "--eval_data")
    assert corpus_names(specs) == ["LibriSpeech-test-clean", "b-test-clean", "test-other"]
    make_librispeech(tmp_path / "c", "test-clean")
    specs = parse_corpora(f"{tmp_path / 'a/LibriSpeech'}:test-clean,"
                          f"{tmp_path / 'c/LibriSpeech'}:test-clean", "--eval_data")
    assert corpus_names(specs) == ["a-LibriSpeech-test-clean", "c-LibriSpeech-test-clean"]
    with pytest.raises(ValueError, match="are the same corpus"):
        parse_corpora(f"{tmp_path / 'a/LibriSpeech/test-clean'},"
                      f"{tmp_path / 'a/LibriSpeech'}:test-clean", "--eval_data")


def test_counts_say_what_the_corpus_held_and_what_was_left_out(tmp_path):
    split_dir = make_librispeech(tmp_path, "test-clean")
    (split_dir / "26" / "495" / "26-495-0000.flac").write_bytes(b"")          # 0.30 s, now empty
    utterances, counts = load_corpus_with_counts(split_dir, skip_bad_audio=True, max_duration=1.0)
    # 1.25 s is too long; the empty file is bad audio; 0.5, 0.75 and 1.0 s are kept
    assert counts == CorpusCounts(in_corpus=N, bad_audio=1, outside_duration=1)
    assert counts.kept == len(utterances) == 3
    assert load_corpus(split_dir, skip_bad_audio=True, max_duration=1.0) == utterances


def test_training_filters_apply_to_training_data_and_eval_scores_everything(tmp_path):
    split_dir = make_librispeech(tmp_path, "test-clean")
    asr = AsrConfig(max_duration=1.0, min_duration=0.4)
    assert len(speech_dataset(str(split_dir), asr, "--data_file")) == 3     # 0.3 s and 1.25 s dropped
    spec = parse_corpus(str(split_dir), "--eval_data")
    dataset, counts = eval_dataset(spec, asr, "--eval_data")
    assert len(dataset) == N and counts == CorpusCounts(N, 0, 0)
    dataset, counts = eval_dataset(spec, AsrConfig(eval_max_duration=0.6), "--eval_data")
    assert len(dataset) == 2 and counts == CorpusCounts(N, 0, 3)
    with pytest.raises(ValueError, match=r"--eval_data .*: none of its 5 utterances is left to score"):
        eval_dataset(spec, AsrConfig(eval_max_duration=0.1), "--eval_data")
