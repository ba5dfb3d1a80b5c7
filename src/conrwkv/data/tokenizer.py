"""The RWKV World tokenizer (vocabulary rwkv_vocab_v20230424, 65536 ids), from the `rwkv` package.

Greedy longest-match over bytes, as the package's own TRIE tokenizer does; we use that class and
its vocabulary file rather than a copy. Id 0 is not a vocabulary entry: the World models use it
as end of text, so decoding stops there.
"""

from __future__ import annotations

import functools
from importlib import resources

END_OF_TEXT = 0
VOCAB_FILE = "rwkv_vocab_v20230424.txt"


@functools.lru_cache(maxsize=1)
def _trie_tokenizer():
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    return TRIE_TOKENIZER(str(resources.files("rwkv") / VOCAB_FILE))


class WorldTokenizer:
    vocab_size = 65536
    eot_id = END_OF_TEXT

    def __init__(self):
        self._tok = _trie_tokenizer()     # building the trie takes ~1 s; done once per process

    def encode(self, text: str) -> list[int]:
        return self._tok.encodeBytes(text.encode("utf-8"))

    def decode(self, ids) -> str:
        """Text of `ids` up to the first end-of-text; invalid UTF-8 becomes U+FFFD."""
        ids = [int(i) for i in ids]
        if END_OF_TEXT in ids:
            ids = ids[: ids.index(END_OF_TEXT)]
        return self._tok.decodeBytes(ids).decode("utf-8", errors="replace")
