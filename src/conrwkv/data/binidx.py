"""binidx token files, the data format of the RWKV trainers (Megatron's MMapIndexedDataset).

A `<prefix>.bin` holds every token of every document back to back; `<prefix>.idx` indexes it
(docs/reference.md, "binidx"; all little-endian):

    magic b"MMIDIDX\\x00\\x00" | version u64 = 1 | dtype code u8 | n_items u64 | n_doc_idx u64 |
    sizes int32[n_items] | pointers int64[n_items] (byte offsets) | doc_idx int64[n_doc_idx]

The reader checks every length against the file sizes, so a truncated .idx or .bin is refused
with its name instead of yielding garbage tokens. The layout also has float dtype codes (6, 7);
a file of floats holds no token ids anyone can train on, so the reader refuses it.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from ..io import atomic_write_bytes

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float32,
               7: np.float64, 8: np.uint16}
CODE_OF_DTYPE = {np.dtype(v): k for k, v in DTYPE_CODES.items()}
RANGE_CHUNK = 1 << 24        # tokens per step of token_range: its temporaries stay small
_HEADER = struct.Struct("<9sQBQQ")


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype the official readers accept that holds ids < vocab_size."""
    if vocab_size <= 256:
        return np.dtype(np.uint8)
    if vocab_size <= 65536:
        return np.dtype(np.uint16)
    if vocab_size <= 2**31:
        return np.dtype(np.int32)
    raise ValueError(f"vocab_size {vocab_size} does not fit any binidx token dtype")


def write_binidx(prefix: str | os.PathLike, documents, vocab_size: int) -> tuple[Path, Path]:
    """Write documents (iterables of token ids) as `<prefix>.bin` / `<prefix>.idx`, atomically.

    One item per document, and doc_idx = 0..n_items as the official tools write it."""
    prefix = Path(prefix)
    dtype = dtype_for_vocab(vocab_size)
    sizes: list[int] = []

    def write_bin(f):
        for doc in documents:
            arr = np.asarray(doc)
            if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
                raise ValueError(f"{prefix}.bin: token ids must lie in [0, {vocab_size}); "
                                 f"document {len(sizes)} has {int(arr.min())}..{int(arr.max())}")
            f.write(arr.astype(dtype, copy=False).tobytes(order="C"))
            sizes.append(arr.size)

    bin_path = atomic_write_bytes(f"{prefix}.bin", write_bin)
    sizes_arr = np.asarray(sizes, dtype=np.int32)
    pointers = np.zeros(len(sizes), dtype=np.int64)
    if len(sizes) > 1:
        pointers[1:] = np.cumsum(sizes_arr[:-1].astype(np.int64)) * dtype.itemsize
    doc_idx = np.arange(len(sizes) + 1, dtype=np.int64)

    def write_idx(f):
        f.write(_HEADER.pack(MAGIC, VERSION, CODE_OF_DTYPE[dtype], len(sizes), len(doc_idx)))
        f.write(sizes_arr.tobytes())
        f.write(pointers.tobytes())
        f.write(doc_idx.tobytes())

    idx_path = atomic_write_bytes(f"{prefix}.idx", write_idx)
    return bin_path, idx_path


class BinidxReader:
    """Memory-mapped access to a binidx pair: `len(reader)` documents, `reader[i]` a document."""

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = Path(prefix)
        idx_path, bin_path = Path(f"{self.prefix}.idx"), Path(f"{self.prefix}.bin")
        for path in (idx_path, bin_path):
            if not path.is_file():
                raise FileNotFoundError(f"binidx file {path} does not exist")
        idx_bytes = idx_path.stat().st_size
        if idx_bytes < _HEADER.size:
            raise ValueError(f"{idx_path}: truncated ({idx_bytes} bytes, shorter than the header)")
        with open(idx_path, "rb") as f:
            magic, version, code, n_items, n_doc = _HEADER.unpack(f.read(_HEADER.size))
        if magic != MAGIC:
            raise ValueError(f"{idx_path}: not a binidx index (magic {magic!r}, expected {MAGIC!r})")
        if version != VERSION:
            raise ValueError(f"{idx_path}: unsupported version {version} (expected {VERSION})")
        if code not in DTYPE_CODES:
            raise ValueError(f"{idx_path}: unknown dtype code {code}")
        self.dtype = np.dtype(DTYPE_CODES[code])
        if self.dtype.kind == "f":
            raise ValueError(f"{idx_path}: dtype code {code} ({self.dtype.name}) holds floating-point "
                             f"values, not token ids; write token files with an integer dtype")
        expected = _HEADER.size + 4 * n_items + 8 * n_items + 8 * n_doc
        if idx_bytes != expected:
            raise ValueError(f"{idx_path}: {idx_bytes} bytes, but its header ({n_items} items, "
                             f"{n_doc} doc_idx entries) needs {expected}: truncated or corrupt")
        index = np.memmap(idx_path, mode="r", dtype=np.uint8)
        offset = _HEADER.size
        self.sizes = np.frombuffer(index, dtype=np.int32, count=n_items, offset=offset)
        offset += 4 * n_items
        self.pointers = np.frombuffer(index, dtype=np.int64, count=n_items, offset=offset)
        offset += 8 * n_items
        self.doc_idx = np.frombuffer(index, dtype=np.int64, count=n_doc, offset=offset)

        bin_bytes = bin_path.stat().st_size
        needed = int(self.sizes.astype(np.int64).sum()) * self.dtype.itemsize
        if bin_bytes != needed:
            raise ValueError(f"{bin_path}: {bin_bytes} bytes, but {idx_path.name} describes "
                             f"{needed}: truncated or from another index")
        self.bin_path = bin_path
        self.tokens = (np.memmap(bin_path, mode="r", dtype=self.dtype) if bin_bytes
                       else np.zeros(0, dtype=self.dtype))
        self._range: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        start = int(self.pointers[i]) // self.dtype.itemsize
        return self.tokens[start:start + int(self.sizes[i])]

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    def token_range(self) -> tuple[int, int]:
        """(smallest, largest) token id in the file, computed once in one chunked pass over the
        memory map; a ValueError when the file holds no tokens."""
        if self._range is None:
            if not self.n_tokens:
                raise ValueError(f"{self.bin_path} holds no tokens")
            lows, highs = [], []
            for start in range(0, self.n_tokens, RANGE_CHUNK):
                chunk = self.tokens[start:start + RANGE_CHUNK]
                lows.append(int(chunk.min()))
                highs.append(int(chunk.max()))
            self._range = (min(lows), max(highs))
        return self._range

    def distinct_tokens(self) -> np.ndarray:
        """The sorted distinct token ids of the file, in one chunked pass over the memory map."""
        seen = np.zeros(0, dtype=np.int64)
        for start in range(0, self.n_tokens, RANGE_CHUNK):
            seen = np.union1d(seen, self.tokens[start:start + RANGE_CHUNK].astype(np.int64))
        return seen
