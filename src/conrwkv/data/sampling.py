"""Training samples from binidx files: fixed windows for token corpora, whole documents for chains.

Window sampling follows the RWKV trainers (docs/reference.md, "Window sampling"): window m covers tokens
[m * ctx_len, m * ctx_len + ctx_len] (ctx_len + 1 tokens: inputs and shifted targets), and the
windows are visited once each in a pseudo-random order given by x -> x^3 mod p, a bijection on
0..p-1 when p is prime and p % 3 == 2. p, the "magic prime", is the largest such prime below
n_windows - 1; it is computed here so that nobody has to work it out by hand.

Samples are dicts: input and target token ids [ctx_len], a loss mask, and the sample's index
(which names the document, so evaluation can line results up with per-document references).

Document sampling gives one document (for Markov ICL: one chain, one transition table) per
sample, truncated to ctx_len + 1 tokens or padded with a mask, so no window straddles a change
of transition table without a delimiter.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .binidx import BinidxReader


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def magic_prime(n_tokens: int, ctx_len: int) -> int:
    """Largest prime p < n_tokens // ctx_len - 1 with p % 3 == 2."""
    limit = n_tokens // ctx_len - 1
    for p in range(limit - 1, 1, -1):
        if p % 3 == 2 and is_prime(p):
            return p
    raise ValueError(f"{n_tokens} tokens hold too few windows of ctx_len {ctx_len} for window "
                     f"sampling (need at least 4); use a shorter ctx_len or more data")


class WindowDataset(Dataset):
    """ctx_len + 1 token windows of a token corpus; index i -> window (i + offset)^3 mod p.

    Read in index order (no shuffling sampler), an epoch visits every window once."""

    def __init__(self, reader: BinidxReader, ctx_len: int, seed: int = 0):
        self.reader, self.ctx_len = reader, ctx_len
        self.prime = magic_prime(reader.n_tokens, ctx_len)
        self.offset = seed % self.prime          # another seed, another (equally complete) order

    def __len__(self) -> int:
        return self.prime

    def window_start(self, i: int) -> int:
        # int(): samplers and Subset hand out numpy integers, which three-argument pow refuses.
        return pow((int(i) + self.offset) % self.prime, 3, self.prime) * self.ctx_len

    def targets(self, indices: list[int]) -> int:
        """Loss targets (mask entries set) of these samples: ctx_len each."""
        return self.ctx_len * len(indices)

    def __getitem__(self, i: int):
        start = self.window_start(i)
        tokens = torch.from_numpy(self.reader.tokens[start:start + self.ctx_len + 1].astype(np.int64))
        return {"input": tokens[:-1], "target": tokens[1:],
                "mask": torch.ones(self.ctx_len, dtype=torch.bool), "index": i}


class DocumentDataset(Dataset):
    """One document per sample: its first ctx_len + 1 tokens, right padded with a loss mask."""

    def __init__(self, reader: BinidxReader, ctx_len: int):
        self.reader, self.ctx_len = reader, ctx_len
        if len(reader) == 0:
            raise ValueError(f"{reader.prefix}: no documents")
        too_short = int((reader.sizes < 2).sum())
        if too_short:
            raise ValueError(f"{reader.prefix}: {too_short} documents have fewer than 2 tokens")

    def __len__(self) -> int:
        return len(self.reader)

    def targets(self, indices: list[int]) -> int:
        """Loss targets (mask entries set) of these samples: a document's predictions, at most ctx_len."""
        sizes = self.reader.sizes[np.asarray(indices, dtype=np.int64)]
        return int((np.minimum(sizes, self.ctx_len + 1) - 1).sum())

    def __getitem__(self, i: int):
        doc = self.reader[i][: self.ctx_len + 1].astype(np.int64)
        tokens = torch.zeros(self.ctx_len + 1, dtype=torch.int64)
        tokens[: len(doc)] = torch.from_numpy(doc)
        mask = torch.zeros(self.ctx_len, dtype=torch.bool)
        mask[: len(doc) - 1] = True
        return {"input": tokens[:-1], "target": tokens[1:], "mask": mask, "index": i}
