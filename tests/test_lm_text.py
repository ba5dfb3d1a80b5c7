"""The LM text builder on tiny fixtures of the Debian packages: normalisation, the eval-sentence
filter (exact and contained), deduplication across sources, copy documents, the token counts in
lmtext-meta.json, and the `dataset2.py lmtext` command line."""

from __future__ import annotations

import json
import re

import pytest
from speech_fixtures import dataset2_cli, make_librispeech
from text_fixtures import write_all_sources, write_dictd, write_wordnet

from conrwkv.data.binidx import BinidxReader
from conrwkv.data.offline.lm_text import (
    TranscriptFilter,
    corpus_transcripts,
    normalize_text,
    speakable_sentences,
    write_lm_text,
)
from conrwkv.data.tokenizer import WorldTokenizer

TOKENIZER = WorldTokenizer()
# What the fixture WordNet gives once normalised, in file order, duplicates once; the texts with
# digits are gone, "the cat's whiskers" and "and so on" are the corpus's dev sentences.
WORDNET_TEXTS = ["that which is perceived or known", "the cat's whiskers", "a long year passed",
                 "move fast by using one's feet", "don't run", "and so on", "without haste"]
EXCLUDED = {"the cat's whiskers", "and so on"}
TRAIN = [t for t in WORDNET_TEXTS if t not in EXCLUDED]


def documents(prefix) -> list[list[int]]:
    reader = BinidxReader(prefix)
    return [reader[i].tolist() for i in range(len(reader))]


def texts(prefix) -> list[str]:
    return [TOKENIZER.decode(doc[:-1]) for doc in documents(prefix)]


def plain(text: str) -> list[int]:
    return TOKENIZER.encode(text) + [0]


def copy_doc(text: str, separator: str = "#") -> list[int]:
    return TOKENIZER.encode(text) + TOKENIZER.encode(separator) + TOKENIZER.encode(text) + [0]


@pytest.fixture
def wordnet(tmp_path):
    return write_wordnet(tmp_path / "wordnet")


@pytest.mark.parametrize("text,expected", [
    ("The Cat's Whiskers!", "the cat's whiskers"),
    ("  rock-and-roll,   (music)  ", "rock and roll music"),
    ("'quoted' words' end", "quoted words end"),          # apostrophes kept only inside words
    ("don't -- won't; o'clock", "don't won't o'clock"),
    ("in 1920 he left", "in he left"),                    # digits are not letters (sentences skip them)
    ("...!?", ""),
    ("''", ""),
])
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


def test_sentences_with_digits_are_dropped():
    assert speakable_sentences("First of all. Born in 1920!  Then? (1996-05-29). Fine; ok.") == [
        "first of all", "then", "fine ok"]
    assert speakable_sentences("In 1920.") == []


@pytest.mark.parametrize("sentences,text,found", [
    ({"long year"}, "long year", "exact"),
    ({"long year"}, "a long year passed", "containing"),
    ({"year"}, "a long year passed", "containing"),          # one-word sentences too
    ({"passed"}, "a long year passed", "containing"),
    ({"a long"}, "a long year passed", "containing"),
    ({"ear passed"}, "a long year passed", None),            # whole words only
    ({"long year passed by"}, "a long year passed", None),
    ({"year long"}, "a long year passed", None),
    (set(), "a long year passed", None),
])
def test_transcript_filter(sentences, text, found):
    assert TranscriptFilter(sentences).match(text) == found


def test_corpus_transcripts_are_normalised(tmp_path):
    make_librispeech(tmp_path, "dev")
    found = corpus_transcripts(tmp_path / "LibriSpeech", ["dev"])
    assert found == {"northanger abbey", "this little work was finished in the year eighteen o three",
                     "it was not long before he came", "the cat's whiskers", "and so on"}
    with pytest.raises(FileNotFoundError, match=r"no \*.trans.txt transcripts under .*test-other"):
        corpus_transcripts(tmp_path / "LibriSpeech", ["dev", "test-other"])
    trans = tmp_path / "LibriSpeech" / "dev" / "26" / "495" / "26-495.trans.txt"
    trans.write_bytes(trans.read_bytes() + b"26-495-0002 NA\xefVE\n")
    with pytest.raises(ValueError, match=r"26-495\.trans\.txt:3: not UTF-8 text"):
        corpus_transcripts(tmp_path / "LibriSpeech", ["dev"])


def test_train_val_and_meta(wordnet, tmp_path):
    val = ["and so on", "the cat's whiskers", "and so on"]
    meta = write_lm_text(tmp_path / "lm", ["wordnet"], exclude=EXCLUDED | {"long year"}, val_texts=val,
                         folders={"wordnet": wordnet})
    train = documents(tmp_path / "lm" / "train")
    expected = [t for t in TRAIN if t != "a long year passed"]
    assert train == [plain(t) for t in expected]              # order kept, duplicates once, no copies
    assert all(doc[-1] == 0 and 0 not in doc[:-1] for doc in train)
    assert documents(tmp_path / "lm" / "val") == [plain("and so on"), plain("the cat's whiskers")]
    counts = {"documents": len(expected), "tokens": sum(len(d) for d in train), "copy_documents": 0,
              "copy_tokens": 0, "duplicates": 2, "excluded_exact": 2, "excluded_containing": 1}
    assert meta["sources"] == {"wordnet": {"package": "wordnet-base", "licence": meta["sources"]["wordnet"][
        "licence"], "folder": str(wordnet), **counts}}
    assert meta["total"] == counts and meta["train_tokens"] == counts["tokens"]
    assert meta["val_documents"] == 2 and meta["excluded_sentences"] == 3
    assert json.loads((tmp_path / "lm" / "lmtext-meta.json").read_text()) == meta
    assert BinidxReader(tmp_path / "lm" / "train").n_tokens == meta["train_tokens"]

    meta = write_lm_text(tmp_path / "no_val", ["wordnet"], exclude=set(), folders={"wordnet": wordnet})
    assert not (tmp_path / "no_val" / "val.bin").exists() and "val_documents" not in meta
    assert texts(tmp_path / "no_val" / "train") == WORDNET_TEXTS


def test_all_sources_deduplicated_across_sources(tmp_path):
    folders = write_all_sources(tmp_path)
    write_dictd(folders["devil"], "devil", [(["haste"], "HASTE, n.  Without haste.\n"),
                                            (["new"], "NEW, adj.  Without any haste at all.\n")])
    meta = write_lm_text(tmp_path / "lm", list(folders), exclude={"any haste"}, folders=folders)
    assert meta["sources"]["devil"]["duplicates"] == 1              # WordNet came first
    assert meta["sources"]["devil"]["excluded_containing"] == 1
    assert meta["sources"]["devil"]["documents"] == 0
    written = texts(tmp_path / "lm" / "train")
    assert len(written) == len(set(written)) == meta["total"]["documents"]
    assert "to expose to the chemical action of air" in written                   # gcide
    assert "this usage has been carried over to mail" in written                  # jargon
    assert "a set of criteria specified by the federal government" in " ".join(written)   # foldoc
    assert "read this twice" in written                                           # fortunes
    assert all(re.fullmatch(r"[a-z']+( [a-z']+)+", t) for t in written)
    for counts in meta["sources"].values():
        assert counts["tokens"] == sum(len(TOKENIZER.encode(t)) + 1 for t in written[:counts["documents"]])
        written = written[counts["documents"]:]
    assert meta["train_tokens"] == BinidxReader(tmp_path / "lm" / "train").n_tokens


@pytest.mark.parametrize("separator", ["#", " | "])
def test_every_document_gets_a_copy_at_fraction_one(wordnet, tmp_path, separator):
    meta = write_lm_text(tmp_path / "lm", ["wordnet"], exclude=EXCLUDED, folders={"wordnet": wordnet},
                         copy_fraction=1.0, separator=separator)
    train = documents(tmp_path / "lm" / "train")
    assert train == [doc for text in TRAIN for doc in (plain(text), copy_doc(text, separator))]
    counts = meta["total"]
    assert counts["copy_documents"] == counts["documents"] == len(TRAIN)
    assert counts["copy_tokens"] == sum(len(copy_doc(t, separator)) for t in TRAIN)
    assert meta["train_tokens"] == sum(len(d) for d in train)


def test_copy_documents_repeat_one_sentence_of_their_document(tmp_path):
    write_dictd(tmp_path, "devil", [(["x"], "X, n.  First one here. Second one there. Go.\n")])
    write_lm_text(tmp_path / "lm", ["devil"], exclude=set(), folders={"devil": tmp_path}, copy_fraction=1.0)
    document, copy = documents(tmp_path / "lm" / "train")
    assert document == plain("first one here second one there go")
    assert copy in (copy_doc("first one here"), copy_doc("second one there"))   # "go": one word


def test_a_share_of_documents_gets_copies_reproducibly(wordnet, tmp_path):
    meta = write_lm_text(tmp_path / "a", ["wordnet"], exclude=EXCLUDED, folders={"wordnet": wordnet},
                         copy_fraction=0.5, seed=3)
    rest = documents(tmp_path / "a" / "train")
    copies = 0
    for text in TRAIN:        # each text is followed by its copy or by the next text
        assert rest.pop(0) == plain(text)
        if rest and rest[0] == copy_doc(text):
            rest.pop(0)
            copies += 1
    assert not rest
    assert meta["total"]["copy_documents"] == copies and 0 < copies < len(TRAIN)
    again = write_lm_text(tmp_path / "b", ["wordnet"], exclude=EXCLUDED, folders={"wordnet": wordnet},
                          copy_fraction=0.5, seed=3)
    assert again["total"] == meta["total"]
    assert (tmp_path / "a" / "train.bin").read_bytes() == (tmp_path / "b" / "train.bin").read_bytes()


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan")])
def test_copy_fraction_outside_zero_one_is_refused(wordnet, tmp_path, fraction):
    with pytest.raises(ValueError, match=r"copy_fraction must be in \[0, 1\]"):
        write_lm_text(tmp_path / "lm", ["wordnet"], exclude=set(), copy_fraction=fraction)
    assert not (tmp_path / "lm").exists()


@pytest.mark.parametrize("sources,folders", [([], {}), (["bible"], {}), (["wordnet", "wordnet"], {}),
                                             (["wordnet"], {"gcid": "x"})])
def test_bad_sources_are_refused(tmp_path, sources, folders):
    with pytest.raises(ValueError, match=r"each at most once, at least one, from wordnet, gcide"):
        write_lm_text(tmp_path / "lm", sources, exclude=set(), folders=folders)
    assert not (tmp_path / "lm").exists()


def test_lmtext_command_line(tmp_path, capsys):
    for split in ("dev", "test-clean", "test-other"):
        make_librispeech(tmp_path, split)
    corpus = tmp_path / "LibriSpeech"
    folders = write_all_sources(tmp_path / "packages")
    source_dirs = [f for name, folder in folders.items() for f in ("--source_dir", f"{name}={folder}")]
    cli = dataset2_cli()
    assert cli.main(["lmtext", "--corpus", str(corpus), "--out", str(tmp_path / "lm"), *source_dirs]) == 0
    printed = capsys.readouterr().out
    meta = json.loads((tmp_path / "lm" / "lmtext-meta.json").read_text())
    assert list(meta["sources"]) == list(folders)
    for name in (*folders, "total"):
        assert re.search(rf"^ *{name}: +\d+ documents +\d+ tokens", printed, re.MULTILINE)
    assert f"lmtext: {meta['train_tokens']} train tokens" in printed
    dev = sorted(corpus_transcripts(corpus, ["dev"]))
    assert documents(tmp_path / "lm" / "val") == [plain(t) for t in dev]
    assert not set(texts(tmp_path / "lm" / "train")) & EXCLUDED

    assert cli.main(["lmtext", "--corpus", str(corpus), "--out", str(tmp_path / "lm2"),
                     "--sources", "wordnet", "--source_dir", f"wordnet={folders['wordnet']}",
                     "--exclude_splits", "dev", "--val_splits", "--copy_fraction", "1",
                     "--separator", "#"]) == 0
    assert documents(tmp_path / "lm2" / "train") == [doc for t in TRAIN for doc in (plain(t), copy_doc(t))]
    assert not (tmp_path / "lm2" / "val.idx").exists()

    capsys.readouterr()
    for flags, message in [(["--exclude_splits", "nowhere"], r"no .*transcripts under .*nowhere"),
                           (["--source_dir", "wordnet"], r"--source_dir 'wordnet': expected SOURCE=FOLDER"),
                           (["--sources", "gcide", "--source_dir", f"gcide={tmp_path}"],
                            r".*gcide\.index is missing: install the Debian package with "
                            r"`apt-get install dict-gcide`.*")]:
        assert cli.main(["lmtext", "--corpus", str(corpus), "--out", str(tmp_path / "lm3"), *flags]) == 2
        assert re.fullmatch(rf"dataset2.py: error: {message}\n", capsys.readouterr().err)
    for flags in (["--sources", "bible"], ["--copy_fraction", "x"], []):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["lmtext", "--out", str(tmp_path / "lm4"), *(["--corpus", str(corpus)] if flags else []),
                      *flags])
        assert exit_info.value.code == 2
