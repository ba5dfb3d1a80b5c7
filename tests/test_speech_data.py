"""Speech corpora: the three on-disk forms, audio loading, bad files, batching and sharding."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from speech_fixtures import (
    LIBRISPEECH_UTTERANCES,
    dataset2_cli,
    make_librispeech,
    save_dataset_dict,
    tone,
    utt_id,
    write_tone,
)

from conrwkv.data.speech import (
    AudioError,
    LengthBucketBatchSampler,
    SpeechDataset,
    Utterance,
    collate_speech,
    detect_format,
    filter_by_duration,
    load_audio,
    load_corpus,
    load_manifest,
    write_manifest,
)

EXPECTED = {utt_id(s, c, u): (text, seconds) for s, c, u, text, seconds in LIBRISPEECH_UTTERANCES}


def _by_id(utterances):
    return {u.id: u for u in utterances}


# ------------------------------------------------------------------------------------------- forms


def test_librispeech_layout_is_parsed(tmp_path):
    split_dir = make_librispeech(tmp_path)
    for source, split in ((split_dir, None), (tmp_path / "LibriSpeech", "test-clean"),
                          (tmp_path, "test-clean")):
        assert detect_format(source, split) == "librispeech"
        utts = _by_id(load_corpus(source, split))
        assert set(utts) == set(EXPECTED)
        for uid, (text, seconds) in EXPECTED.items():
            assert utts[uid].text == text
            assert utts[uid].duration == pytest.approx(seconds)
            speaker, chapter, _ = uid.split("-")
            assert utts[uid].audio == str(split_dir / speaker / chapter / f"{uid}.flac")


def test_librispeech_unknown_split_and_unlisted_audio(tmp_path, caplog):
    split_dir = make_librispeech(tmp_path)
    with pytest.raises(ValueError, match="dev-clean"):
        load_corpus(tmp_path / "LibriSpeech", "dev-clean")
    write_tone(split_dir / "19" / "198" / "19-198-0099.flac", 0.2)
    with caplog.at_level(logging.WARNING):
        utts = load_corpus(split_dir)
    assert len(utts) == len(EXPECTED)
    assert "1 audio files" in caplog.text and "no transcript" in caplog.text


def test_librispeech_bad_transcript_line_names_file_and_line(tmp_path):
    split_dir = make_librispeech(tmp_path)
    trans = split_dir / "26" / "495" / "26-495.trans.txt"
    trans.write_text(trans.read_text() + "26-495-0002\n")
    with pytest.raises(ValueError, match=r"26-495\.trans\.txt:3: .*no transcript"):
        load_corpus(split_dir)


def test_non_utf8_transcripts_and_manifests_name_the_file_and_line(tmp_path):
    split_dir = make_librispeech(tmp_path)
    trans = split_dir / "19" / "198" / "19-198.trans.txt"
    trans.write_bytes(trans.read_bytes().replace(b"LITTLE", b"L\xcdTTLE"))     # Latin-1, line 2
    with pytest.raises(ValueError, match=r"19-198\.trans\.txt:2: not UTF-8 text \(byte 0xcd at column 19\)"):
        load_corpus(split_dir)
    write_tone(tmp_path / "a.wav", 0.2)
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b'{"audio": "a.wav", "text": "A"}\n{"audio": "a.wav", "text": "CAF\xc9"}\n')
    with pytest.raises(ValueError, match=r"m\.jsonl:2: not UTF-8 text \(byte 0xc9 at column 32\)"):
        load_corpus(manifest)


def test_manifest_and_disk_dataset_read_the_same_utterances(tmp_path):
    datasets = pytest.importorskip("datasets", reason="pip install datasets (requirements.txt)")
    reference = load_corpus(make_librispeech(tmp_path))

    manifest = write_manifest(reference, tmp_path / "LibriSpeech" / "test-clean.jsonl")
    first = json.loads(manifest.read_text().splitlines()[0])
    assert not first["audio"].startswith("/")                 # stored relative to the manifest
    from_manifest = load_corpus(manifest)

    rows = {"id": [u.id for u in reference], "sentence": [u.text for u in reference],
            "audio": [{"path": f"{u.id}.flac", "bytes": open(u.audio, "rb").read()} for u in reference]}
    table = datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio(decode=False))
    table.save_to_disk(str(tmp_path / "hf_single"))
    datasets.DatasetDict({"test": table}).save_to_disk(str(tmp_path / "hf_dict"))
    assert detect_format(tmp_path / "hf_single") == "disk_dataset"
    from_single = load_corpus(tmp_path / "hf_single")
    from_dict = load_corpus(tmp_path / "hf_dict", "test")

    for other in (from_manifest, from_single, from_dict):
        assert [u.id for u in other] == [u.id for u in reference]
        for a, b in zip(reference, other):
            assert b.text == a.text
            assert b.duration == pytest.approx(a.duration, abs=1e-4)
            np.testing.assert_array_equal(load_audio(b.audio), load_audio(a.audio))

    # Bytes inside a dataset are written out beside a manifest made from it.
    exported = load_manifest(write_manifest(from_dict, tmp_path / "out" / "test.jsonl"))
    assert all(u.audio.startswith(str(tmp_path / "out" / "test_audio")) for u in exported)
    np.testing.assert_array_equal(load_audio(exported[0].audio), load_audio(reference[0].audio))


def test_disk_dataset_text_column_and_split_errors(tmp_path):
    pytest.importorskip("datasets", reason="pip install datasets (requirements.txt)")
    save_dataset_dict(tmp_path / "hf", ("train", "test"), text_column="words")
    with pytest.raises(ValueError, match="has splits"):
        load_corpus(tmp_path / "hf")
    with pytest.raises(ValueError, match=r"none of the text columns .*words"):
        load_corpus(tmp_path / "hf", "test")
    utts = load_corpus(tmp_path / "hf", "test", text_column="words")
    assert [(u.id, u.text) for u in utts] == [("test-0000000", "HELLO")]
    assert utts[0].duration == pytest.approx(0.1)


def test_manifest_relative_paths_and_missing_durations(tmp_path):
    write_tone(tmp_path / "audio" / "a.wav", 0.4)
    write_tone(tmp_path / "audio" / "b.flac", 0.6)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": "audio/a.wav", "text": "A"}) + "\n\n"
                        + json.dumps({"audio": str(tmp_path / "audio" / "b.flac"), "text": "B",
                                      "duration": 0.6, "id": "bee"}) + "\n")
    utts = load_corpus(manifest)
    assert [(u.id, u.text, round(u.duration, 3)) for u in utts] == [("a", "A", 0.4), ("bee", "B", 0.6)]
    assert utts[0].audio == str(tmp_path / "audio" / "a.wav")
    manifest.write_text('{"audio": "audio/a.wav", "text": "A"}\n{"text": "B"}\n')
    with pytest.raises(ValueError, match=r"m\.jsonl:2: \"audio\""):
        load_corpus(manifest)
    with pytest.raises(ValueError, match="cannot tell"):
        detect_format(tmp_path / "audio")


# ------------------------------------------------------------------------------------------- audio


@pytest.mark.parametrize("rate", [8000, 22050, 44100])
def test_other_rates_come_back_16k_with_the_right_length_and_pitch(tmp_path, rate):
    seconds, freq = 0.5, 440.0
    path = tmp_path / f"tone_{rate}.wav"
    write_tone(path, seconds, rate=rate, freq=freq)
    audio = load_audio(str(path))
    n_in = round(seconds * rate)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == math.ceil(n_in * 16000 / rate)
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.fft.rfftfreq(len(audio), 1 / 16000)[spectrum.argmax()] == pytest.approx(freq, abs=4)
    np.testing.assert_allclose(audio[2000:6000], tone(seconds, 16000, freq)[2000:6000], atol=0.02)


def test_stereo_is_averaged_to_mono(tmp_path):
    path = tmp_path / "stereo.flac"
    stereo = write_tone(path, 0.25, rate=16000, channels=2)
    audio = load_audio(str(path))
    assert audio.shape == (4000,)
    np.testing.assert_allclose(audio, stereo.mean(axis=1), atol=1e-4)    # 16-bit FLAC rounding
    stereo_8k = tmp_path / "stereo8k.wav"
    write_tone(stereo_8k, 0.25, rate=8000, channels=2)
    assert load_audio(str(stereo_8k)).shape == (4000,)


def _break_files(split_dir):
    """One corrupt, one empty, one missing file; returns their paths."""
    corrupt = split_dir / "19" / "198" / "19-198-0000.flac"
    corrupt.write_bytes(b"this is not a flac file at all" * 10)
    empty = split_dir / "19" / "227" / "19-227-0000.flac"
    empty.write_bytes(b"")
    missing = split_dir / "26" / "495" / "26-495-0001.flac"
    missing.unlink()
    return corrupt, empty, missing


def test_bad_audio_raises_naming_the_file_or_is_skipped_and_counted(tmp_path, caplog):
    split_dir = make_librispeech(tmp_path)
    corrupt, empty, missing = _break_files(split_dir)
    for path, problem in ((corrupt, "cannot be decoded"), (empty, "empty"), (missing, "missing")):
        with pytest.raises(AudioError, match=problem) as err:
            load_audio(str(path))
        assert str(path) in str(err.value)
    with pytest.raises(AudioError, match=str(corrupt)):
        load_corpus(split_dir)
    with caplog.at_level(logging.WARNING):
        kept = load_corpus(split_dir, skip_bad_audio=True)
    assert {u.id for u in kept} == {"19-198-0001", "26-495-0000"}
    assert "skipped 3 of 5 utterances with bad audio" in caplog.text
    for path in (corrupt, empty, missing):
        assert str(path) in caplog.text


def test_bad_audio_found_when_decoding_is_skipped_by_the_dataset(tmp_path, caplog):
    utts = load_corpus(make_librispeech(tmp_path))
    _break_files(tmp_path / "LibriSpeech" / "test-clean")        # broken after the corpus was read
    with pytest.raises(AudioError, match="19-198-0000.flac"):
        SpeechDataset(utts)[[u.id for u in utts].index("19-198-0000")]
    dataset = SpeechDataset(utts, skip_bad_audio=True)
    with caplog.at_level(logging.WARNING):
        items = [dataset[i] for i in range(len(dataset))]
    assert dataset.skipped == 3 and "bad audio 3 so far" in caplog.text
    batch = collate_speech(items)
    assert sorted(batch["ids"]) == ["19-198-0001", "26-495-0000"] and batch["skipped"] == 3


def test_truncated_flac_passes_the_header_check_but_not_decoding(tmp_path):
    split_dir = make_librispeech(tmp_path)
    path = split_dir / "19" / "198" / "19-198-0001.flac"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    utts = load_corpus(split_dir)                                  # header intact: duration read
    index = [u.id for u in utts].index("19-198-0001")
    with pytest.raises(AudioError, match=f"{path} cannot be decoded"):
        SpeechDataset(utts)[index]
    assert SpeechDataset(utts, skip_bad_audio=True)[index] is None


def test_bytes_audio_errors_name_their_origin():
    utt = Utterance("x", b"", "TEXT", origin="corpus.arrow row 7")
    with pytest.raises(AudioError, match="corpus.arrow row 7 is empty"):
        SpeechDataset([utt])[0]


# ------------------------------------------------------------------------------------------- batches


def test_dataset_collate_and_dataloader_batch_format(tmp_path):
    utts = load_corpus(make_librispeech(tmp_path))
    dataset = SpeechDataset(utts)
    item = dataset[0]
    assert set(item) == {"id", "audio", "text"}
    assert item["audio"].dtype == np.float32 and item["audio"].shape == (round(utts[0].duration * 16000),)
    sampler = LengthBucketBatchSampler(dataset.durations(), batch_size=2, shuffle=False)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_speech)
    batches = list(loader)
    assert [len(b["ids"]) for b in batches] == [2, 2, 1]
    for batch in batches:
        assert set(batch) == {"ids", "audio", "texts", "skipped"} and batch["skipped"] == 0
        assert all(isinstance(a, np.ndarray) and a.ndim == 1 for a in batch["audio"])
        assert [EXPECTED[i][0] for i in batch["ids"]] == batch["texts"]
    assert [i for b in batches for i in b["ids"]][:2] == ["19-198-0001", "26-495-0001"]   # longest first


def test_duration_filter(tmp_path):
    utts = load_corpus(make_librispeech(tmp_path), min_duration=0.5, max_duration=1.0)
    assert sorted(u.id for u in utts) == ["19-198-0000", "19-227-0000", "26-495-0001"]
    assert len(filter_by_duration(utts, None, 0.9)) == 2
    with pytest.raises(ValueError, match="needs durations"):
        filter_by_duration([Utterance("a", "x.flac", "A")], 0.0, 1.0)


def _shards(durations, batch_size, replicas, **kwargs):
    samplers = [LengthBucketBatchSampler(durations, batch_size, num_replicas=replicas, rank=r, **kwargs)
                for r in range(replicas)]
    return samplers, [list(s) for s in samplers]


@pytest.mark.parametrize("replicas", [1, 2, 3])
@pytest.mark.parametrize("n,batch_size", [(23, 4), (30, 5), (7, 8), (100, 3)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_shards_are_disjoint_complete_and_equal(replicas, n, batch_size, shuffle):
    durations = np.random.default_rng(n).uniform(1, 20, n)
    samplers, shards = _shards(durations, batch_size, replicas, shuffle=shuffle, bucket_batches=4)
    counts = {len(s) for s in shards}
    assert len(counts) == 1 and counts == {len(samplers[0])}
    indices = [i for shard in shards for batch in shard for i in batch]
    assert sorted(indices) == list(range(n))                             # complete and disjoint
    assert all(1 <= len(batch) <= batch_size for shard in shards for batch in shard)


def test_batches_hold_similar_durations():
    durations = np.random.default_rng(0).uniform(1, 20, 400)
    sampler = LengthBucketBatchSampler(durations, 8, seed=1, bucket_batches=50)
    bucketed = np.mean([np.ptp(durations[b]) for b in sampler])
    random_batches = np.random.default_rng(1).permutation(400).reshape(50, 8)
    assert bucketed < 0.2 * np.mean([np.ptp(durations[b]) for b in random_batches])


def test_set_epoch_changes_the_order_and_is_reproducible():
    durations = np.random.default_rng(0).uniform(1, 20, 60)
    sampler = LengthBucketBatchSampler(durations, 4, num_replicas=2, rank=1, seed=3)
    epoch0 = list(sampler)
    assert list(sampler) == epoch0
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0
    again = LengthBucketBatchSampler(durations, 4, num_replicas=2, rank=1, seed=3)
    again.set_epoch(1)
    assert list(again) == epoch1
    assert list(LengthBucketBatchSampler(durations, 4, num_replicas=2, rank=1, seed=4)) != epoch0


def test_evaluation_order_is_fixed_and_longest_first():
    durations = np.random.default_rng(0).uniform(1, 20, 25)
    sampler = LengthBucketBatchSampler(durations, 4, shuffle=False)
    first = list(sampler)
    sampler.set_epoch(5)
    assert list(sampler) == first
    flat = [i for b in first for i in b]
    assert flat == sorted(range(25), key=lambda i: -durations[i])


def test_batch_size_one_and_too_few_utterances(caplog):
    with caplog.at_level(logging.WARNING):
        samplers, shards = _shards([1.0] * 10, 1, 3)
    assert "1 of 10 utterances are left out" in caplog.text
    assert [len(s) for s in shards] == [3, 3, 3]
    with pytest.raises(ValueError, match="cannot be shared by 3 ranks"):
        LengthBucketBatchSampler([1.0, 2.0], 4, num_replicas=3, rank=0)
    with pytest.raises(ValueError, match="rank 2"):
        LengthBucketBatchSampler([1.0] * 5, 4, num_replicas=2, rank=2)


def test_flac_bytes_in_memory_decode(tmp_path):
    path = tmp_path / "a.flac"
    write_tone(path, 0.3, rate=8000)
    audio = load_audio(path.read_bytes(), name="bytes")
    assert audio.shape == (4800,)
    assert sf.info(str(path)).samplerate == 8000


def test_manifest_command_line(tmp_path):
    make_librispeech(tmp_path)
    out = tmp_path / "manifests" / "test-clean.jsonl"
    dataset2_cli().main(["manifest", "--source", str(tmp_path / "LibriSpeech"), "--split", "test-clean",
                         "--out", str(out), "--max_duration", "1.0"])
    entries = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(entries) == 4 and {"id", "audio", "text", "duration"} <= set(entries[0])
    assert {e["id"] for e in entries} == {k for k, (_, s) in EXPECTED.items() if s <= 1.0}
    assert [u.text for u in load_corpus(out)] == [e["text"] for e in entries]
