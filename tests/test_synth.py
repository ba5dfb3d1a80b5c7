"""Synthetic corpus: sentence selection, the plan, and a tiny corpus spoken by espeak-ng and flite."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest
from speech_fixtures import dataset2_cli, write_tone

from conrwkv.data.offline import synth
from conrwkv.data.offline.synth import SynthConfig, Voice, plan_corpus, speakable_sentence, synthesize_corpus
from conrwkv.data.speech import load_audio, load_corpus

HAVE_TOOLS = bool(shutil.which("espeak-ng") and shutil.which("flite")
                  and all((synth.WORDNET_DIR / f).is_file() for f in synth.WORDNET_FILES))
needs_tools = pytest.mark.skipif(not HAVE_TOOLS, reason="needs espeak-ng, flite and wordnet-base: "
                                 "apt-get install -y espeak-ng flite wordnet-base")

TINY = SynthConfig(train=4, dev=1, test_clean=2, test_other=2, seed=7,
                   voices=("espeak:en-us", "flite:kal", "flite:slt"), heldout_voices=("espeak:en-gb+f3",),
                   speeds=(0.9, 1.3), max_words=5)


@pytest.mark.parametrize("sentence,expected", [
    ("the tennis fathers ruled in her favor", ("the tennis fathers ruled in her favor",
                                               "THE TENNIS FATHERS RULED IN HER FAVOR")),
    ("Play it again, Sam", ("Play it again, Sam", "PLAY IT AGAIN SAM")),
    ("a well-known fact.", ("a well known fact.", "A WELL KNOWN FACT")),
    ("I don't know!", ("I don't know!", "I DON'T KNOW")),
    ("he joined the FBI", None),                 # acronym: spoken letter by letter
    ("Louis XIV was king", None),                # Roman numeral
    ("he paid 3 dollars", None),                 # digits
    ("Dr. Smith came", None),                    # abbreviation
    ("a...b", None),
    ("the ratio of a:b is b:a", None),           # inner colon: read as a symbol
    ("yes,no or maybe", None),
    ("caf\u00e9 au lait", None),                 # outside ASCII letters
])
def test_speakable_sentences(sentence, expected):
    assert speakable_sentence(sentence) == expected


def _fake_sentences(n):
    return [(f"sentence number {w} here", f"SENTENCE NUMBER {w.upper()} HERE")
            for w in (f"w{i}" for i in range(n))]


def test_plan_splits_voices_speeds_and_seed():
    config = SynthConfig(train=60, dev=12, test_clean=12, test_other=18, seed=1,
                         voices=("espeak:a", "espeak:b", "flite:c"), heldout_voices=("flite:d", "espeak:e"),
                         speeds=(0.8, 1.0, 1.2))
    plan = plan_corpus(config, _fake_sentences(200))
    by_split = {s: [u for u in plan if u.split == s] for s in synth.SPLITS}
    assert {s: len(u) for s, u in by_split.items()} == config.counts()
    texts = [{u.transcript for u in utts} for utts in by_split.values()]
    assert sum(len(t) for t in texts) == len(set().union(*texts)) == 102     # no sentence in two splits
    assert {u.voice for u in by_split["test-other"]} == {"flite:d", "espeak:e"}
    seen_splits = ("train", "dev", "test-clean")
    assert not {u.voice for s in seen_splits for u in by_split[s]} & {"flite:d", "espeak:e"}
    assert set(Counter(u.voice for u in by_split["train"]).values()) == {20}  # evenly spread
    assert set(Counter(u.speed for u in by_split["train"]).values()) == {20}
    assert len({u.id for u in plan}) == len(plan)
    for u in plan:
        assert u.id.startswith(f"{u.speaker}-{u.chapter}-") and config.speeds[u.chapter - 1] == u.speed
    assert plan_corpus(config, _fake_sentences(200)) == plan
    other_seed = SynthConfig(**{**config.__dict__, "seed": 2})
    assert plan_corpus(other_seed, _fake_sentences(200)) != plan
    with pytest.raises(ValueError, match="only 101 distinct sentences"):
        plan_corpus(config, _fake_sentences(101))


def test_config_is_checked():
    with pytest.raises(ValueError, match="must not be seen voices"):
        SynthConfig(voices=("flite:slt",), heldout_voices=("flite:slt",)).validate()
    with pytest.raises(ValueError, match="not 'espeak:<voice>'"):
        SynthConfig(voices=("festival:kal",)).validate()
    with pytest.raises(ValueError, match="speeds"):
        SynthConfig(speeds=(0.0,)).validate()
    assert Voice.parse("espeak:en-gb+f3").command("hi", 2.0, "x.wav")[:5] == [
        "espeak-ng", "-v", "en-gb+f3", "-s", "350"]


def _without_tools(monkeypatch, tmp_path):
    """As on a GPU machine: no synthesiser, no WordNet, and any command run is a failure here."""
    def no_commands(*args, **kwargs):
        raise AssertionError(f"ran {args}")

    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    monkeypatch.setattr(synth, "WORDNET_DIR", tmp_path / "no-wordnet")
    monkeypatch.setattr(synth.subprocess, "run", no_commands)


def test_missing_tools_stop_with_the_apt_get_line_and_are_never_installed(monkeypatch, tmp_path):
    _without_tools(monkeypatch, tmp_path)
    monkeypatch.setattr(synth.os, "geteuid", lambda: 0)          # even as root with apt-get there
    monkeypatch.setattr(synth.shutil, "which", lambda name: "/usr/bin/apt-get" if name == "apt-get" else None)
    with pytest.raises(FileNotFoundError, match=r"synth needs the Debian packages espeak-ng, flite, "
                                                r"wordnet-base, which are not installed: "
                                                r"apt-get install espeak-ng flite wordnet-base$"):
        synth.ensure_tools([Voice.parse("espeak:en-us"), Voice.parse("flite:slt")])
    with pytest.raises(FileNotFoundError, match=r": apt-get install flite wordnet-base$"):
        synth.ensure_tools([Voice.parse("flite:slt")])


def _hand_made_corpus(root, config):
    """A corpus in the layout synth writes, made without synthesisers: what a finished corpus
    carried to another machine looks like to the completeness check."""
    start = 0
    for split, count in config.counts().items():
        for chapter, ids in ((1, range(start, start + count, 2)), (2, range(start + 1, start + count, 2))):
            folder = root / split / "1" / str(chapter)
            lines = [f"1-{chapter}-{i:04d} SENTENCE {i}\n" for i in ids]
            for i in ids:
                write_tone(folder / f"1-{chapter}-{i:04d}.flac", 0.1)
            if lines:
                (folder / f"1-{chapter}.trans.txt").write_text("".join(lines))
        start += count
    (root / "meta.json").write_text(json.dumps({"params": config.params(), "complete": True}))
    return root


TINY_FLAGS = ["--train", "4", "--dev", "1", "--test_clean", "2", "--test_other", "2", "--seed", "7",
              "--voices", *TINY.voices, "--heldout_voices", *TINY.heldout_voices, "--speeds", "0.9", "1.3",
              "--max_words", "5", "--no_progress"]


def test_complete_corpus_is_reused_without_the_tools(monkeypatch, tmp_path, capsys):
    _without_tools(monkeypatch, tmp_path)
    root = _hand_made_corpus(tmp_path / "corpus", TINY)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert synthesize_corpus(root, TINY, progress=False) == root
    assert dataset2_cli().main(["synth", "--out", str(root), *TINY_FLAGS]) == 0
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps

    # Anything missing means a resume, which needs the tools: stop and say what to install.
    next(root.glob("test-other/*/*/*.flac")).unlink()
    assert dataset2_cli().main(["synth", "--out", str(root), *TINY_FLAGS]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == ("dataset2.py: error: synth needs the Debian packages espeak-ng, flite, "
                                    "wordnet-base, which are not installed: "
                                    "apt-get install espeak-ng flite wordnet-base")
    assert "Traceback" not in err, err


@pytest.mark.parametrize("damage", ["incomplete", "no transcript", "transcript of other ids"])
def test_an_unfinished_corpus_is_not_taken_for_complete(tmp_path, damage):
    root = _hand_made_corpus(tmp_path / "corpus", TINY)
    meta = json.loads((root / "meta.json").read_text())
    assert synth.is_complete(root, meta, TINY)
    transcript = root / "train" / "1" / "1" / "1-1.trans.txt"
    if damage == "incomplete":
        meta["complete"] = False
    elif damage == "no transcript":
        transcript.unlink()
    else:
        transcript.write_text(transcript.read_text().replace("1-1-0002", "1-1-0003"))
    assert not synth.is_complete(root, meta, TINY)


def test_a_malformed_meta_json_is_refused_by_name(tmp_path):
    root = _hand_made_corpus(tmp_path / "corpus", TINY)
    (root / "meta.json").write_text('{"params": ')
    with pytest.raises(ValueError, match=r"corpus/meta\.json: synthetic corpus meta\.json is not valid JSON"):
        synthesize_corpus(root, TINY, progress=False)
    (root / "meta.json").write_text('{"complete": true}')
    with pytest.raises(ValueError, match=r"corpus/meta\.json: synthetic corpus meta\.json lacks the keys "
                                         r"\['params'\]"):
        synthesize_corpus(root, TINY, progress=False)


@needs_tools
def test_tiny_corpus_in_librispeech_layout(tmp_path):
    out = synthesize_corpus(tmp_path / "synth", TINY, workers=2, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["complete"] and meta["params"] == TINY.params()
    plan = plan_corpus(TINY, synth.load_sentences(TINY.min_words, TINY.max_words))
    for split, count in TINY.counts().items():
        utts = load_corpus(out, split)
        assert len(utts) == count
        expected = {u.id: u for u in plan if u.split == split}
        for utt in utts:
            planned = expected[utt.id]
            assert utt.text == planned.transcript and utt.text == utt.text.upper()
            folder = out / split / str(planned.speaker) / str(planned.chapter)
            assert utt.audio == str(folder / f"{utt.id}.flac")
            audio = load_audio(utt.audio)
            assert 0.3 < utt.duration < 6 and len(audio) == round(utt.duration * 16000)
            assert 0.005 < np.sqrt(np.mean(audio ** 2)) and np.abs(audio).max() <= 1.0
        if split == "test-other":
            assert {u.id.split("-")[0] for u in utts} == set(meta["heldout_speakers"])

    # Same parameters: resumed, nothing rewritten. Other parameters, or a foreign folder: refused.
    flac = next(out.glob("train/*/*/*.flac"))
    before = flac.stat().st_mtime_ns
    synthesize_corpus(out, TINY, workers=2, progress=False)
    assert flac.stat().st_mtime_ns == before
    with pytest.raises(FileExistsError, match="other parameters.*seed: 7 there, 8 now"):
        synthesize_corpus(out, SynthConfig(**{**TINY.__dict__, "seed": 8}), progress=False)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="no meta.json"):
        synthesize_corpus(tmp_path / "foreign", TINY, progress=False)


@needs_tools
def test_synthesis_is_deterministic_and_checks_voices(tmp_path):
    config = SynthConfig(**{**TINY.__dict__, "train": 2, "dev": 0, "test_clean": 0, "test_other": 1})
    a = synthesize_corpus(tmp_path / "a", config, workers=1, progress=False)
    dataset2_cli().main(["synth", "--out", str(tmp_path / "b"), "--train", "2", "--dev", "0",
                         "--test_clean", "0", "--test_other", "1", "--seed", "7",
                         "--voices", *config.voices, "--heldout_voices", *config.heldout_voices,
                         "--speeds", "0.9", "1.3", "--max_words", "5", "--no_progress"])
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != "meta.json")
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*")
                     if p.is_file() and p.name != "meta.json")
    assert files_a == files_b and len(files_a) > 3
    for rel in files_a:
        assert (a / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    with pytest.raises(ValueError, match="flite has no voice 'nobody'"):
        synth.check_voices([Voice.parse("flite:nobody")])
    with pytest.raises(ValueError, match="espeak-ng has no voice 'xx-nowhere'"):
        synth.check_voices([Voice.parse("espeak:xx-nowhere")])
