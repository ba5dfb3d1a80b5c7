"""Corpus pack: a LibriSpeech-layout corpus through pack (Opus in a tar) and unpack (16-bit FLAC)
keeps its utterances, transcripts, speakers, durations and meta.json; bad packs are clear errors."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from speech_fixtures import LIBRISPEECH_UTTERANCES, dataset2_cli, make_librispeech, utt_id, write_tone

from conrwkv.data.offline.corpus_pack import pack_corpus, unpack_corpus
from conrwkv.data.speech import load_corpus

SPLITS = ("train", "test-clean")
META = {"complete": True, "params": {"seed": 7}, "heldout_speakers": ["26"]}
TRANSPORT = {"codec": "ogg/opus", "compression_level": 1.0}
# utterance id -> (speaker, transcript, seconds, tone frequency) as make_librispeech writes them
EXPECTED = {utt_id(spk, chap, utt): (str(spk), text, seconds, 200.0 + 100 * i)
            for i, (spk, chap, utt, text, seconds) in enumerate(LIBRISPEECH_UTTERANCES)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pack")
    for split in SPLITS:
        make_librispeech(root, split)
    corpus = root / "LibriSpeech"
    (corpus / "meta.json").write_text(json.dumps(META))
    # Neither hidden folders nor files other than FLAC, .txt and .json travel.
    write_tone(corpus / ".cache" / "train" / "1" / "2" / "1-2-0000.flac", 0.2)
    (corpus / "notes.md").write_text("not packed")
    return corpus


@pytest.fixture(scope="module")
def packed(corpus) -> tuple[Path, Path]:
    """(the pack, the folder it was unpacked into)."""
    pack = pack_corpus(corpus, corpus.parent / "corpus.tar", workers=1, progress=False)
    return pack, unpack_corpus(pack, corpus.parent / "unpacked", workers=1, progress=False)


def _peak_hz(samples: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


def test_pack_holds_opus_transcripts_meta_and_manifest(corpus, packed):
    pack, _ = packed
    with tarfile.open(pack) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("pack.json").read())
        opus = {n: tar.extractfile(n).read() for n in names if n.endswith(".opus")}
    n_utts = len(SPLITS) * len(LIBRISPEECH_UTTERANCES)
    assert manifest == {"format_version": 1, "codec": "ogg/opus", "compression_level": 1.0,
                        "utterances": n_utts}
    expected_audio = {f"{split}/{spk}/{chap}/{utt_id(spk, chap, utt)}.opus"
                      for split in SPLITS for spk, chap, utt, _, _ in LIBRISPEECH_UTTERANCES}
    assert set(opus) == expected_audio
    assert all(data[:4] == b"OggS" for data in opus.values())
    transcripts = {str(p.relative_to(corpus)) for p in corpus.glob("*/*/*/*.trans.txt")}
    assert len(transcripts) == 3 * len(SPLITS)          # 3 chapters per split
    assert set(names) == {"pack.json", "meta.json"} | transcripts | expected_audio   # no .cache, no .md
    flac_bytes = sum(p.stat().st_size for split in SPLITS for p in (corpus / split).rglob("*.flac"))
    assert sum(len(d) for d in opus.values()) < flac_bytes


def test_unpack_restores_utterances_transcripts_and_audio(corpus, packed):
    _, out = packed
    assert json.loads((out / "meta.json").read_text()) == {**META, "transport": TRANSPORT}
    assert not (out / ".cache").exists() and not (out / "notes.md").exists()
    assert not list(out.rglob("*.opus"))
    for split in SPLITS:
        original = {u.id: u for u in load_corpus(corpus, split)}
        restored = load_corpus(out, split)
        assert sorted(u.id for u in restored) == sorted(original) == sorted(EXPECTED)
        for utt in restored:
            speaker, text, seconds, freq = EXPECTED[utt.id]
            assert utt.text == original[utt.id].text == text
            assert Path(utt.audio).relative_to(out / split).parts[0] == speaker
            assert utt.duration == pytest.approx(seconds, abs=0.02)        # Opus keeps the length
            info = sf.info(utt.audio)
            assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16",
                                                                                  16000, 1)
            before, _ = sf.read(original[utt.id].audio, dtype="float32")
            after, _ = sf.read(utt.audio, dtype="float32")
            n = min(len(before), len(after))
            # Lossy but the same tone: same pitch, closely correlated, no file swapped for another.
            assert _peak_hz(after) == pytest.approx(freq, abs=5.0)
            assert np.corrcoef(before[:n], after[:n])[0, 1] > 0.95
            assert np.sqrt(np.mean((before[:n] - after[:n]) ** 2)) < 0.1


def test_command_line_round_trip_matches_the_functions(corpus, packed, tmp_path):
    _, out = packed
    cli = dataset2_cli()
    cli.main(["pack", "--corpus", str(corpus), "--out", str(tmp_path / "c.tar"), "--workers", "1",
              "--no_progress"])
    cli.main(["unpack", "--pack", str(tmp_path / "c.tar"), "--out", str(tmp_path / "c"), "--workers", "1",
              "--no_progress"])
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "c") for p in (tmp_path / "c").rglob("*") if p.is_file())
    for rel in files:          # Opus encoding and decoding are deterministic
        assert (tmp_path / "c" / rel).read_bytes() == (out / rel).read_bytes(), rel


def test_unpack_without_meta_json_records_the_transport_only(tmp_path):
    write_tone(tmp_path / "corpus" / "dev" / "5" / "6" / "5-6-0000.flac", 0.4)
    (tmp_path / "corpus" / "dev" / "5" / "6" / "5-6.trans.txt").write_text("5-6-0000 HELLO THERE\n")
    pack = pack_corpus(tmp_path / "corpus", tmp_path / "c.tar", compression_level=0.5, workers=1,
                       progress=False)
    out = unpack_corpus(pack, tmp_path / "out", workers=1, progress=False)
    assert json.loads((out / "meta.json").read_text()) == {
        "transport": {"codec": "ogg/opus", "compression_level": 0.5}}
    [utt] = load_corpus(out, "dev")
    assert (utt.id, utt.text) == ("5-6-0000", "HELLO THERE")


def _rewrite(pack: Path, target: Path, keep=lambda name: True, extra: dict[str, bytes] | None = None,
             replace: dict[str, bytes] | None = None) -> Path:
    """A copy of `pack` with members left out, replaced or added."""
    with tarfile.open(pack) as src, tarfile.open(target, "w") as dst:
        members = [(m.name, src.extractfile(m).read()) for m in src.getmembers() if keep(m.name)]
        for name, data in [*members, *(extra or {}).items()]:
            data = (replace or {}).get(name, data)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    return target


def test_unpack_errors(packed, tmp_path):
    pack, _ = packed
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"busy is not empty"):
        unpack_corpus(pack, busy, workers=1, progress=False)
    assert sorted(p.name for p in busy.iterdir()) == ["x.txt"]
    with pytest.raises(FileNotFoundError, match="nothing.tar does not exist"):
        unpack_corpus(tmp_path / "nothing.tar", tmp_path / "a", workers=1, progress=False)
    (tmp_path / "text.tar").write_text("this is not a tar file at all\n" * 40)
    with pytest.raises(ValueError, match="text.tar is not a tar file made by pack"):
        unpack_corpus(tmp_path / "text.tar", tmp_path / "b", workers=1, progress=False)

    no_manifest = _rewrite(pack, tmp_path / "no_manifest.tar", keep=lambda n: n != "pack.json")
    with pytest.raises(ValueError, match="has no pack.json"):
        unpack_corpus(no_manifest, tmp_path / "c", workers=1, progress=False)
    first_opus = [True]

    def drop_one_opus(name):
        if name.endswith(".opus") and first_opus[0]:
            first_opus[0] = False
            return False
        return True

    truncated = _rewrite(pack, tmp_path / "truncated.tar", keep=drop_one_opus)
    with pytest.raises(ValueError, match=r"holds 9 audio files, its pack.json says 10 \(truncated"):
        unpack_corpus(truncated, tmp_path / "d", workers=1, progress=False)
    future = _rewrite(pack, tmp_path / "future.tar",
                      replace={"pack.json": json.dumps({"format_version": 99}).encode()})
    with pytest.raises(ValueError, match="pack format 99 is not the supported 1"):
        unpack_corpus(future, tmp_path / "e", workers=1, progress=False)
    unsafe = _rewrite(pack, tmp_path / "unsafe.tar", extra={"../escape.txt": b"x"})
    with pytest.raises(ValueError, match=r"unsafe member name '../escape.txt'"):
        unpack_corpus(unsafe, tmp_path / "f", workers=1, progress=False)
    assert not (tmp_path / "escape.txt").exists()
    with tarfile.open(pack) as tar:
        name = next(n for n in tar.getnames() if n.endswith(".opus"))
    corrupt = _rewrite(pack, tmp_path / "corrupt.tar", replace={name: b"not opus audio" * 10})
    with pytest.raises(ValueError, match="cannot decode the packed Opus audio"):
        unpack_corpus(corrupt, tmp_path / "g", workers=1, progress=False)


def test_malformed_json_in_a_pack_is_named_before_anything_is_written(packed, tmp_path):
    pack, _ = packed
    broken_meta = _rewrite(pack, tmp_path / "meta.tar", replace={"meta.json": b'{"params": '})
    with pytest.raises(ValueError, match=r"meta\.tar:meta\.json: corpus meta\.json is not valid JSON"):
        unpack_corpus(broken_meta, tmp_path / "a", workers=1, progress=False)
    assert not (tmp_path / "a").exists()
    no_count = _rewrite(pack, tmp_path / "manifest.tar", replace={"pack.json": json.dumps(
        {"format_version": 1, "codec": "ogg/opus", "compression_level": 1.0}).encode()})
    with pytest.raises(ValueError, match=r"manifest\.tar:pack\.json: pack manifest lacks the keys "
                                         r"\['utterances'\]"):
        unpack_corpus(no_count, tmp_path / "b", workers=1, progress=False)
    not_json = _rewrite(pack, tmp_path / "text.tar", replace={"pack.json": b"format_version = 1"})
    with pytest.raises(ValueError, match=r"text\.tar:pack\.json: pack manifest is not valid JSON"):
        unpack_corpus(not_json, tmp_path / "c", workers=1, progress=False)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_pack_errors(corpus, packed, tmp_path):
    pack, _ = packed
    with pytest.raises(FileExistsError, match="corpus.tar exists"):
        pack_corpus(corpus, pack, workers=1, progress=False)
    with pytest.raises(ValueError, match=r"compression_level must be in \[0, 1\]"):
        pack_corpus(corpus, tmp_path / "a.tar", compression_level=1.5, workers=1, progress=False)
    with pytest.raises(FileNotFoundError, match="missing does not exist"):
        pack_corpus(tmp_path / "missing", tmp_path / "b.tar", workers=1, progress=False)
    (tmp_path / "empty" / "dev").mkdir(parents=True)
    (tmp_path / "empty" / "dev" / "x.trans.txt").write_text("x-0 HI\n")
    with pytest.raises(ValueError, match="holds no .flac files"):
        pack_corpus(tmp_path / "empty", tmp_path / "c.tar", workers=1, progress=False)
    write_tone(tmp_path / "stereo" / "dev" / "1" / "2" / "1-2-0000.flac", 0.2, channels=2)
    with pytest.raises(ValueError, match="expected non-empty mono audio"):
        pack_corpus(tmp_path / "stereo", tmp_path / "d.tar", workers=1, progress=False)
    assert not (tmp_path / "a.tar").exists() and not (tmp_path / "d.tar").exists()
    assert not (tmp_path / ".d.tar.tmp").exists()                  # no half-written pack left behind
