"""WordNet LM text on a tiny fake WordNet: normalisation, the texts read from the data files, the
train/val binidx files (excluded sentences left out, deduplicated, each document ending in token 0),
the "text # text" copy documents, and the `dataset2.py lmtext` command line."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
from speech_fixtures import dataset2_cli, make_librispeech

from conrwkv.data.binidx import BinidxReader
from conrwkv.data.offline.synth import WORDNET_FILES
from conrwkv.data.offline.wordnet_text import (
    corpus_transcripts,
    normalize_text,
    wordnet_texts,
    write_wordnet_lm_data,
)
from conrwkv.data.tokenizer import WorldTokenizer

# Lines in the format of WordNet 3.0's data.* files: the licence header (lines starting with two
# spaces, which may hold " | " and quotes too), then `offset ... | gloss; "example"; ...`.
HEADER = ('  1 This software and database is being provided to you, the LICENSEE, by  \n'
          '  16 THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON | header text; "not me"  \n'
          '  29 Princeton University and LICENSEE agrees to preserve same.  \n')
FAKE_WORDNET = {
    "data.noun": [
        '00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived or known; '
        '"the cat\'s whiskers"; "The Cat\'s Whiskers!"  ',
        '00002000 03 n 01 thing 0 000 | a separate and self-contained entity (living or nonliving)  ',
        '00002100 03 n 01 year 0 000 | a period of 365 days; "in 1920 he left"; "a long year passed"  ',
        '00002200 03 n 01 word 0 000 | word; "\'Twas brillig, and the slithy toves"  ',
        'a line without a gloss separator',
    ],
    "data.verb": [
        '00003000 29 v 01 run 0 000 | move fast by using one\'s feet; "a long year passed"; "Don\'t run!"  ',
    ],
    "data.adj": [
        '00004000 00 a 01 quick 0 000 | Moving QUICKLY -- or with speed; "She\'s quick."  ',
        '00004100 00 a 01 slow 0 000 | and so on; "and so on"  ',
    ],
    "data.adv": [
        '00005000 02 r 01 slowly 0 000 | without haste  ',
    ],
}
# What wordnet_texts reads from FAKE_WORDNET, in file order (definitions before examples).
TEXTS = [
    "that which is perceived or known", "the cat's whiskers", "the cat's whiskers",
    "a separate and self contained entity living or nonliving",
    "a long year passed",
    "twas brillig and the slithy toves",
    "move fast by using one's feet", "a long year passed", "don't run",
    "moving quickly or with speed", "she's quick",
    "and so on", "and so on",
    "without haste",
]
EXCLUDED = {"the cat's whiskers", "and so on"}
TRAIN = ["that which is perceived or known", "a separate and self contained entity living or nonliving",
         "a long year passed", "twas brillig and the slithy toves", "move fast by using one's feet",
         "don't run", "moving quickly or with speed", "she's quick", "without haste"]
TOKENIZER = WorldTokenizer()


@pytest.fixture
def wordnet(tmp_path) -> Path:
    folder = tmp_path / "wordnet"
    folder.mkdir()
    assert set(FAKE_WORDNET) == set(WORDNET_FILES)
    for name, lines in FAKE_WORDNET.items():
        (folder / name).write_text(HEADER + "\n".join(lines) + "\n", encoding="latin-1")
    return folder


def documents(prefix: Path) -> list[list[int]]:
    reader = BinidxReader(prefix)
    return [reader[i].tolist() for i in range(len(reader))]


def plain(text: str) -> list[int]:
    return TOKENIZER.encode(text) + [0]


def copy_doc(text: str, separator: str = "#") -> list[int]:
    return TOKENIZER.encode(text) + TOKENIZER.encode(separator) + TOKENIZER.encode(text) + [0]


@pytest.mark.parametrize("text,expected", [
    ("The Cat's Whiskers!", "the cat's whiskers"),
    ("  rock-and-roll,   (music)  ", "rock and roll music"),
    ("'quoted' words' end", "quoted words end"),          # apostrophes kept only inside words
    ("don't -- won't; o'clock", "don't won't o'clock"),
    ("in 1920 he left", "in he left"),                    # digits are not letters (texts skip them)
    ("...!?", ""),
    ("''", ""),
])
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


def test_wordnet_texts_read_definitions_and_examples(wordnet):
    assert list(wordnet_texts(wordnet)) == TEXTS
    (wordnet / "data.adv").unlink()
    with pytest.raises(FileNotFoundError, match=r"data.adv is missing: install the Debian package"):
        list(wordnet_texts(wordnet))


def test_corpus_transcripts_are_normalised(tmp_path):
    make_librispeech(tmp_path, "dev")
    texts = corpus_transcripts(tmp_path / "LibriSpeech", ["dev"])
    assert texts == {"northanger abbey", "this little work was finished in the year eighteen o three",
                     "it was not long before he came", "the cat's whiskers", "and so on"}
    with pytest.raises(FileNotFoundError, match=r"no \*.trans.txt transcripts under .*test-other"):
        corpus_transcripts(tmp_path / "LibriSpeech", ["dev", "test-other"])
    trans = tmp_path / "LibriSpeech" / "dev" / "26" / "495" / "26-495.trans.txt"
    trans.write_bytes(trans.read_bytes() + b"26-495-0002 NA\xefVE\n")
    with pytest.raises(ValueError, match=r"26-495\.trans\.txt:3: not UTF-8 text"):
        corpus_transcripts(tmp_path / "LibriSpeech", ["dev"])


def test_train_and_val_files(wordnet, tmp_path):
    val = ["and so on", "the cat's whiskers", "and so on"]
    counts = write_wordnet_lm_data(tmp_path / "lm", exclude=EXCLUDED, val_texts=val, wordnet_dir=wordnet)
    train = documents(tmp_path / "lm" / "train")
    assert train == [plain(t) for t in TRAIN]                 # order kept, duplicates once, no copies
    assert all(doc[-1] == 0 and 0 not in doc[:-1] for doc in train)
    decoded = [TOKENIZER.decode(doc[:-1]) for doc in train]
    assert not any(excluded in text for text in decoded for excluded in EXCLUDED)
    assert len(set(decoded)) == len(decoded)
    assert documents(tmp_path / "lm" / "val") == [plain("and so on"), plain("the cat's whiskers")]
    assert counts == {"train_documents": len(TRAIN), "copy_documents": 0,
                      "train_tokens": sum(len(d) for d in train), "excluded_occurrences": 4,
                      "val_documents": 2}
    assert BinidxReader(tmp_path / "lm" / "train").n_tokens == counts["train_tokens"]

    counts = write_wordnet_lm_data(tmp_path / "no_val", exclude=set(), wordnet_dir=wordnet)
    assert not (tmp_path / "no_val" / "val.bin").exists() and "val_documents" not in counts
    assert counts["excluded_occurrences"] == 0
    assert [TOKENIZER.decode(d[:-1]) for d in documents(tmp_path / "no_val" / "train")] == list(
        dict.fromkeys(TEXTS))


@pytest.mark.parametrize("separator", ["#", " | "])
def test_every_text_gets_a_copy_document_at_fraction_one(wordnet, tmp_path, separator):
    counts = write_wordnet_lm_data(tmp_path / "lm", exclude=EXCLUDED, wordnet_dir=wordnet,
                                   copy_fraction=1.0, separator=separator)
    expected = [doc for text in TRAIN for doc in (plain(text), copy_doc(text, separator))]
    train = documents(tmp_path / "lm" / "train")
    assert train == expected
    assert counts["copy_documents"] == counts["train_documents"] == len(TRAIN)
    assert counts["train_tokens"] == sum(len(d) for d in train)
    assert not any(excluded in TOKENIZER.decode(d[:-1]) for d in train for excluded in EXCLUDED)


def test_a_share_of_texts_gets_copies_reproducibly(wordnet, tmp_path):
    counts = write_wordnet_lm_data(tmp_path / "a", exclude=EXCLUDED, wordnet_dir=wordnet,
                                   copy_fraction=0.5, seed=3)
    train = documents(tmp_path / "a" / "train")
    # Each text is followed by its copy or by the next text; nothing else is written.
    texts, copies, rest = list(TRAIN), 0, list(train)
    while rest:
        assert rest.pop(0) == plain(texts[0])
        if rest and rest[0] == copy_doc(texts[0]):
            rest.pop(0)
            copies += 1
        texts.pop(0)
    assert not texts
    assert counts["copy_documents"] == copies and 0 < copies < len(TRAIN)
    assert counts["train_tokens"] == sum(len(d) for d in train)
    again = write_wordnet_lm_data(tmp_path / "b", exclude=EXCLUDED, wordnet_dir=wordnet,
                                  copy_fraction=0.5, seed=3)
    assert again == counts
    assert (tmp_path / "a" / "train.bin").read_bytes() == (tmp_path / "b" / "train.bin").read_bytes()


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan")])
def test_copy_fraction_outside_zero_one_is_refused(wordnet, tmp_path, fraction):
    with pytest.raises(ValueError, match=r"copy_fraction must be in \[0, 1\]"):
        write_wordnet_lm_data(tmp_path / "lm", exclude=set(), wordnet_dir=wordnet, copy_fraction=fraction)
    assert not (tmp_path / "lm").exists()


def test_lmtext_command_line(wordnet, tmp_path, monkeypatch, capsys):
    for split in ("dev", "test-clean", "test-other"):
        make_librispeech(tmp_path, split)
    corpus = tmp_path / "LibriSpeech"
    cli = dataset2_cli()
    # The command reads the system WordNet; point it at the fake one.
    monkeypatch.setattr(cli, "write_wordnet_lm_data",
                        functools.partial(write_wordnet_lm_data, wordnet_dir=wordnet))
    cli.main(["lmtext", "--corpus", str(corpus), "--out", str(tmp_path / "lm"), "--copy_fraction", "1",
              "--separator", "#"])
    assert documents(tmp_path / "lm" / "train") == [
        doc for text in TRAIN for doc in (plain(text), copy_doc(text))]
    assert documents(tmp_path / "lm" / "val") == [plain(t) for t in sorted(
        corpus_transcripts(corpus, ["dev"]))]

    cli.main(["lmtext", "--corpus", str(corpus), "--out", str(tmp_path / "lm2"), "--exclude_splits", "dev",
              "--val_splits"])
    assert documents(tmp_path / "lm2" / "train") == [plain(t) for t in TRAIN]
    assert not (tmp_path / "lm2" / "val.idx").exists()
    capsys.readouterr()
    assert cli.main(["lmtext", "--corpus", str(corpus), "--out", str(tmp_path / "lm3"),
                     "--exclude_splits", "nowhere"]) == 2
    assert re.fullmatch(r"dataset2.py: error: no .*transcripts under .*nowhere\n", capsys.readouterr().err)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["lmtext", "--out", str(tmp_path / "lm4")])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["lmtext", "--corpus", str(corpus), "--out", str(tmp_path / "lm5"), "--copy_fraction", "x"])
