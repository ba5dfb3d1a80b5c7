"""The World tokenizer wrapper over the `rwkv` package's vocabulary."""

import pytest

from conrwkv.data.tokenizer import WorldTokenizer


@pytest.fixture(scope="module")
def tok():
    return WorldTokenizer()


@pytest.mark.parametrize("text", [
    "HE HAD BEEN A WEAVER'S SON, said the man.",
    "Grüße aus Köln — 你好，世界！ こんにちは 🎉 naïve café",
    "  leading spaces\nand\ttabs  ",
])
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert all(0 < i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_known_ids_and_end_of_text(tok):
    ids = tok.encode("Hello world")
    assert ids == [33155, 40213]                 # greedy longest match in rwkv_vocab_v20230424
    assert tok.decode(ids + [0] + tok.encode(" ignored")) == "Hello world"


def test_partial_utf8_is_replaced_not_raised(tok):
    first_byte_of_euro = 0xE2 + 1            # ids 1..256 are the single bytes 0..255
    assert tok.decode(tok.encode("a") + [first_byte_of_euro]) == "a\ufffd"
