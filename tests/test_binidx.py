"""binidx files against the layout written down in docs/reference.md, "binidx", and window sampling."""

import struct

import numpy as np
import pytest

from conrwkv.data import binidx
from conrwkv.data.binidx import BinidxReader, dtype_for_vocab, write_binidx
from conrwkv.data.sampling import DocumentDataset, WindowDataset, is_prime, magic_prime


def parse_idx_from_spec(path):
    """An independent parser, written from the table in docs/reference.md, "binidx", not from our reader."""
    raw = open(path, "rb").read()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    version, = struct.unpack_from("<Q", raw, 9)
    code, = struct.unpack_from("<B", raw, 17)
    n_items, = struct.unpack_from("<Q", raw, 18)
    n_doc, = struct.unpack_from("<Q", raw, 26)
    sizes = struct.unpack_from(f"<{n_items}i", raw, 34)
    pointers = struct.unpack_from(f"<{n_items}q", raw, 34 + 4 * n_items)
    doc_idx = struct.unpack_from(f"<{n_doc}q", raw, 34 + 12 * n_items)
    assert len(raw) == 34 + 12 * n_items + 8 * n_doc
    return version, code, list(sizes), list(pointers), list(doc_idx)


def test_round_trip_and_official_layout(tmp_path):
    docs = [np.array([5, 6, 7]), np.array([65535]), np.array([1, 2, 3, 4, 0])]
    write_binidx(tmp_path / "d", docs, vocab_size=65536)
    version, code, sizes, pointers, doc_idx = parse_idx_from_spec(tmp_path / "d.idx")
    assert (version, code) == (1, 8)                       # uint16
    assert sizes == [3, 1, 5] and pointers == [0, 6, 8] and doc_idx == [0, 1, 2, 3]
    assert np.fromfile(tmp_path / "d.bin", dtype="<u2").tolist() == [5, 6, 7, 65535, 1, 2, 3, 4, 0]
    reader = BinidxReader(tmp_path / "d")
    assert len(reader) == 3 and reader.n_tokens == 9
    for i, doc in enumerate(docs):
        assert reader[i].tolist() == doc.tolist()


def test_dtype_by_vocab_and_out_of_range_tokens(tmp_path):
    assert dtype_for_vocab(2) == np.uint8 and dtype_for_vocab(65536) == np.uint16
    assert dtype_for_vocab(65537) == np.int32
    with pytest.raises(ValueError, match="token ids must lie in \\[0, 256\\)"):
        write_binidx(tmp_path / "x", [np.array([1, 300])], vocab_size=256)


def test_truncated_files_are_refused_by_name(tmp_path):
    write_binidx(tmp_path / "d", [np.arange(10), np.arange(7)], vocab_size=100)
    idx, bin_ = (tmp_path / "d.idx").read_bytes(), (tmp_path / "d.bin").read_bytes()
    (tmp_path / "d.bin").write_bytes(bin_[:-3])
    with pytest.raises(ValueError, match=r"d\.bin: 14 bytes, but d\.idx describes 17"):
        BinidxReader(tmp_path / "d")
    (tmp_path / "d.bin").write_bytes(bin_)
    (tmp_path / "d.idx").write_bytes(idx[:-8])
    with pytest.raises(ValueError, match=r"d\.idx: .*truncated"):
        BinidxReader(tmp_path / "d")
    (tmp_path / "d.idx").write_bytes(b"NOTANIDX" + idx[8:])
    with pytest.raises(ValueError, match="not a binidx index"):
        BinidxReader(tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="nothere.idx"):
        BinidxReader(tmp_path / "nothere")


def test_magic_prime():
    p = magic_prime(100_000, 64)                            # 1562 windows
    assert is_prime(p) and p % 3 == 2 and p < 100_000 // 64 - 1
    assert not any(is_prime(q) and q % 3 == 2 for q in range(p + 1, 100_000 // 64 - 1))
    assert sorted(pow(x, 3, p) for x in range(p)) == list(range(p))   # a bijection
    with pytest.raises(ValueError, match="too few windows"):
        magic_prime(100, 64)


def test_window_dataset_visits_each_window_once(tmp_path):
    tokens = np.arange(4000) % 251
    write_binidx(tmp_path / "c", [tokens], vocab_size=256)
    ds = WindowDataset(BinidxReader(tmp_path / "c"), ctx_len=32)
    starts = [ds.window_start(i) for i in range(len(ds))]
    assert len(set(starts)) == len(ds) == ds.prime
    assert max(starts) + 33 <= 4000
    sample = ds[3]
    assert sample["input"].tolist() == tokens[starts[3]:starts[3] + 32].tolist()
    assert sample["target"].tolist() == tokens[starts[3] + 1:starts[3] + 33].tolist()
    # Subset and samplers index with numpy integers (a validation subset did once crash here).
    assert ds[np.int64(3)]["input"].tolist() == sample["input"].tolist()


def test_document_dataset_truncates_and_masks(tmp_path):
    write_binidx(tmp_path / "m", [np.arange(10), np.arange(4)], vocab_size=16)
    ds = DocumentDataset(BinidxReader(tmp_path / "m"), ctx_len=6)
    long, short = ds[0], ds[1]
    assert long["input"].tolist() == [0, 1, 2, 3, 4, 5] and long["mask"].all()
    assert short["target"][:3].tolist() == [1, 2, 3]
    assert short["mask"].tolist() == [True, True, True, False, False, False]
    assert short["index"] == 1



def write_by_hand(prefix, code, dtype, docs):
    """A binidx pair of any dtype code, written from the layout (write_binidx refuses these)."""
    sizes = np.array([len(d) for d in docs], dtype=np.int32)
    pointers = np.concatenate([[0], np.cumsum(sizes[:-1])]).astype(np.int64) * np.dtype(dtype).itemsize
    with open(f"{prefix}.idx", "wb") as f:
        f.write(struct.pack("<9sQBQQ", b"MMIDIDX\x00\x00", 1, code, len(docs), len(docs) + 1))
        f.write(sizes.tobytes() + pointers.tobytes() + np.arange(len(docs) + 1, dtype=np.int64).tobytes())
    np.concatenate(docs).astype(dtype).tofile(f"{prefix}.bin")


@pytest.mark.parametrize("code,dtype", [(6, np.float32), (7, np.float64)])
def test_float_token_files_are_refused_by_name(tmp_path, code, dtype):
    # The layout has float dtype codes, but a float "token" cannot index an embedding.
    write_by_hand(tmp_path / "f", code, dtype, [np.array([0.5, 1.0, 2.0])])
    with pytest.raises(ValueError, match=rf"f\.idx: dtype code {code} \({np.dtype(dtype).name}\) "
                                         "holds floating-point values, not token ids"):
        BinidxReader(tmp_path / "f")


def test_token_range_is_the_smallest_and_largest_id(tmp_path, monkeypatch):
    write_by_hand(tmp_path / "s", 3, np.int16, [np.array([-5, 3, 7]), np.array([120, -100, 0])])
    assert BinidxReader(tmp_path / "s").token_range() == (-100, 120)
    # in chunks: the answer must not depend on where the chunks end
    monkeypatch.setattr(binidx, "RANGE_CHUNK", 2)
    assert BinidxReader(tmp_path / "s").token_range() == (-100, 120)
    write_binidx(tmp_path / "u", [np.array([65535, 4]), np.array([9])], vocab_size=65536)
    low, high = BinidxReader(tmp_path / "u").token_range()
    assert (low, high) == (4, 65535) and type(low) is int and type(high) is int
    write_binidx(tmp_path / "e", [np.array([], dtype=np.int64)], vocab_size=16)
    with pytest.raises(ValueError, match=r"e\.bin holds no tokens"):
        BinidxReader(tmp_path / "e").token_range()
