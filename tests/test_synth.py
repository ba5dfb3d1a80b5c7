"""Synthetic corpus: sentence selection, the plan (voices, hours, augmentation), and tiny corpora spoken
by espeak-ng, flite and festival."""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from pathlib import Path

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
    with pytest.raises(ValueError, match="42 dev and test utterances .* only 42 distinct sentences"):
        plan_corpus(config, _fake_sentences(42))


def test_config_is_checked():
    with pytest.raises(ValueError, match="must not be seen voices"):
        SynthConfig(voices=("flite:slt",), heldout_voices=("flite:slt",)).validate()
    with pytest.raises(ValueError, match="not 'espeak:<voice>', 'flite:<voice>' or 'festival:<voice>'"):
        SynthConfig(voices=("mbrola:en1",)).validate()
    with pytest.raises(ValueError, match="speeds"):
        SynthConfig(speeds=(0.0,)).validate()
    with pytest.raises(ValueError, match="--train.*--hours.*not both"):
        SynthConfig(train=10, hours=1.0).validate()
    with pytest.raises(ValueError, match="--voices all stands alone"):
        SynthConfig(voices=("all", "flite:slt")).validate()
    with pytest.raises(ValueError, match="snr_db is a range"):
        SynthConfig(snr_db=(30.0, 10.0)).validate()
    with pytest.raises(ValueError, match="pitches are semitone shifts"):
        SynthConfig(pitches=(24.0,)).validate()
    argv, stdin = synth.Tools().command(Voice.parse("espeak:en-gb+f3"), "hi", 2.0, Path("x.wav"))
    assert argv[1:5] == ["-v", "en-gb+f3", "-s", "350"] and stdin is None
    argv, _ = synth.Tools().command(Voice.parse("festival:kal_diphone"), 'say "hi"', 2.0, Path("x.wav"))
    assert argv[-3:] == ["(voice_kal_diphone)", "(Parameter.set 'Duration_Stretch 0.5000)",
                         '(utt.save.wave (utt.synth (Utterance Text "say \\"hi\\"")) "x.wav" (quote riff))']
    argv, _ = synth.Tools().command(Voice.parse("festival:cmu_us_slt_arctic_hts"), "hi", 2.0, Path("x.wav"))
    assert '(list "-r" 2.0000)' in argv[-2]


def test_new_options_at_their_defaults_keep_the_parameters_of_older_corpora():
    assert set(SynthConfig().params()) == {"train", "dev", "test_clean", "test_other", "seed", "voices",
                                           "heldout_voices", "speeds", "min_words", "max_words",
                                           "sample_rate", "format_version"}
    augmented = SynthConfig(train=0, hours=2.0, pitches=(-1.0, 1.0), snr_db=(5.0, 20.0)).params()
    assert augmented["snr_db"] == [5, 20] and augmented["hours"] == 2.0


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
def test_a_planned_corpus_has_its_transcripts_and_no_audio_and_is_spoken_later(tmp_path):
    from conrwkv.data.offline.lm_text import corpus_transcripts

    config = SynthConfig(**{**TINY.__dict__, "train": 2, "dev": 1, "test_clean": 1, "test_other": 1})
    planned = synthesize_corpus(tmp_path / "planned", config, progress=False, plan_only=True)
    assert not list(planned.rglob("*.flac"))
    assert json.loads((planned / "meta.json").read_text())["complete"] is False
    plan = plan_corpus(config, synth.load_sentences(config.min_words, config.max_words))
    test_text = corpus_transcripts(planned, ["dev", "test-clean", "test-other"])
    assert test_text and test_text == corpus_transcripts(
        synthesize_corpus(tmp_path / "spoken", config, workers=1, progress=False),
        ["dev", "test-clean", "test-other"])
    assert len(test_text) == sum(u.split != "train" for u in plan)
    # the same folder, run again without plan_only: the audio is spoken into it and it is complete
    synthesize_corpus(planned, config, workers=1, progress=False)
    assert json.loads((planned / "meta.json").read_text())["complete"] is True
    assert len(list(planned.rglob("*.flac"))) == len(plan)


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


def _sentences_of(words, n):
    return [(" ".join(f"w{i}x{k}" for k in range(words)), " ".join(f"W{i}X{k}" for k in range(words)))
            for i in range(n)]


def test_hours_target_plans_enough_speech_and_reuses_sentences_with_other_voices():
    config = SynthConfig(train=0, hours=0.2, dev=5, test_clean=5, test_other=5, seed=3,
                         voices=("espeak:a", "espeak:b", "flite:c"), heldout_voices=("flite:d",),
                         speeds=(0.8, 1.25))
    sentences = _sentences_of(6, 200)             # 185 left for train: about 0.12 h
    plan = plan_corpus(config, sentences)
    train = [u for u in plan if u.split == "train"]
    per_utterance = sum(synth.estimated_seconds(6, s) for s in config.speeds) / 2
    assert len(train) == math.ceil(0.2 * 3600 / per_utterance) > 185
    assert sum(synth.estimated_seconds(6, u.speed) for u in train) / 3600 >= 0.2 - 1e-3
    # Sentences are said again, each time with another voice; the test text stays unseen.
    said = Counter((u.transcript, u.voice, u.speed) for u in train)
    assert set(said.values()) == {1}
    repeats = Counter(u.transcript for u in train)
    assert set(repeats.values()) == {1, 2} and len(repeats) == 185
    for transcript, count in repeats.items():
        assert len({u.voice for u in train if u.transcript == transcript}) == count
    assert not {u.transcript for u in train} & {u.transcript for u in plan if u.split != "train"}
    assert len({u.id for u in plan}) == len(plan)
    summary = synth.plan_summary(plan)
    assert summary["utterances"]["train"] == len(train)
    assert summary["train_sentences"] == {"utterances": len(train), "distinct": 185, "most_repeats": 2}
    assert summary["estimated_hours"]["train"] >= 0.2
    assert plan_corpus(config, sentences) == plan
    too_many = SynthConfig(**{**config.__dict__, "hours": 5.0})    # > 3 voices x 2 speeds passes
    with pytest.raises(ValueError, match="twice with one voice and speed.*--voices all"):
        plan_corpus(too_many, sentences)


@pytest.mark.skipif(not all((synth.WORDNET_DIR / f).is_file() for f in synth.WORDNET_FILES),
                    reason="apt-get install wordnet-base")
def test_wordnet_supplies_forty_hours_of_training_speech_with_all_voices():
    sentences = synth.load_sentences()
    assert len(sentences) > 39000
    config = SynthConfig(train=0, hours=40, voices=tuple(f"espeak:v{i}" for i in range(101)),
                         heldout_voices=("flite:h",))
    summary = synth.plan_summary(plan_corpus(config, sentences))
    assert summary["estimated_hours"]["train"] >= 40
    assert summary["train_sentences"]["distinct"] == len(sentences) - 300
    assert summary["train_sentences"]["most_repeats"] == 2


def test_augmentation_is_planned_evenly_seeded_and_recorded(tmp_path):
    config = SynthConfig(train=60, dev=6, test_clean=6, test_other=6, seed=5, voices=("espeak:a", "flite:b"),
                         heldout_voices=("flite:c",), speeds=(1.0,), pitches=(-2.0, 0.0, 2.0),
                         snr_db=(5.0, 25.0), noise_fraction=0.5)
    plan = plan_corpus(config, _fake_sentences(100))
    train = [u for u in plan if u.split == "train"]
    assert set(Counter(u.semitones for u in train).values()) == {20}
    noisy = [u for u in plan if u.noise]
    assert 0.3 < len(noisy) / len(plan) < 0.7 and {u.noise for u in noisy} == {"white", "pink"}
    assert all(5 <= u.snr_db <= 25 and u.noise_seed is not None for u in noisy)
    assert plan_corpus(config, _fake_sentences(100)) == plan
    # Without augmentation the voices and speeds are those of the same seed without it.
    plain = plan_corpus(SynthConfig(**{**config.__dict__, "pitches": (0.0,), "snr_db": None}),
                        _fake_sentences(100))
    assert [(u.id, u.voice, u.speed) for u in plain] == [(u.id, u.voice, u.speed) for u in plan]
    synth.write_utterance_table(plan, tmp_path / "utterances.tsv")
    rows = [line.split("\t") for line in (tmp_path / "utterances.tsv").read_text().splitlines()]
    assert rows[0] == ["id", "split", "voice", "speed", "semitones", "noise", "snr_db", "noise_seed"]
    by_id = {u.id: u for u in plan}
    for row in rows[1:]:
        u = by_id[row[0]]
        assert row[1:5] == [u.split, u.voice, str(u.speed), str(u.semitones)]
        assert row[5:] == ([u.noise, str(u.snr_db), str(u.noise_seed)] if u.noise else ["-", "-", "-"])


@pytest.mark.parametrize("colour", ["white", "pink"])
def test_noise_is_added_at_the_asked_snr_and_reproducibly(colour):
    speech = (0.3 * np.sin(np.arange(32000) * 0.05)).astype(np.float32)
    noisy = synth.add_noise(speech, 10.0, colour, seed=11)
    noise = noisy.astype(np.float64) - speech
    snr = 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean(noise ** 2))
    assert snr == pytest.approx(10, abs=0.01)
    assert np.array_equal(noisy, synth.add_noise(speech, 10.0, colour, seed=11))
    assert not np.array_equal(noisy, synth.add_noise(speech, 10.0, colour, seed=12))
    assert np.abs(synth.add_noise(speech * 3, -10.0, colour, seed=1)).max() <= 0.99 + 1e-6
    spectrum = np.abs(np.fft.rfft(noise)) ** 2
    low, high = spectrum[100:1000].mean(), spectrum[10000:15000].mean()
    assert (low / high > 5) if colour == "pink" else (0.7 < low / high < 1.4)


def test_all_voices_hold_out_one_in_eight_of_each_engine(monkeypatch):
    listing = {"espeak": [f"espeak:v{i}" for i in range(20)], "flite": ["flite:a", "flite:b"],
               "festival": ["festival:k"]}
    monkeypatch.setattr(synth, "available_voices", lambda tools: listing)
    named = synth.resolve_voices(SynthConfig(voices=("all",), heldout_voices=()))
    assert named.heldout_voices == ("espeak:v0", "espeak:v8", "espeak:v16", "flite:a")   # festival:k alone
    assert set(named.voices) == {v for vs in listing.values() for v in vs} - set(named.heldout_voices)
    given = synth.resolve_voices(SynthConfig(voices=("all",), heldout_voices=("espeak:v3",)))
    assert given.heldout_voices == ("espeak:v3",) and len(given.voices) == 22
    assert synth.resolve_voices(TINY) == TINY


HAVE = {engine: shutil.which(program) is not None for engine, program in synth.ENGINE_PROGRAMS.items()}


@needs_tools
def test_every_english_voice_is_listed_and_speaks(tmp_path):
    voices = synth.available_voices()
    assert len(voices["espeak"]) >= 30 and "espeak:en-us" in voices["espeak"]
    assert {"flite:slt", "flite:awb", "flite:kal"} <= set(voices["flite"])
    assert "flite:awb_time" not in voices["flite"]                                 # speaks only times
    assert all(not v.startswith("espeak:en-uk") for v in voices["espeak"])          # mbrola: not installed
    named = synth.resolve_voices(SynthConfig(voices=("all",), heldout_voices=()))
    assert not set(named.voices) & set(named.heldout_voices)
    assert len(named.voices) + len(named.heldout_voices) == sum(len(v) for v in voices.values())
    for engine in ("espeak", "flite", *(("festival",) if HAVE["festival"] else ())):
        assert any(v.startswith(engine) for v in named.heldout_voices)
        assert any(v.startswith(engine) for v in named.voices) or engine == "festival"
    synth.check_voices([Voice.parse(v) for v in (*named.voices, *named.heldout_voices)])


ONE_PER_ENGINE = [
    pytest.param("espeak:en-us+f3", marks=pytest.mark.skipif(not HAVE["espeak"],
                                                             reason="apt-get install espeak-ng")),
    pytest.param("flite:slt", marks=pytest.mark.skipif(not HAVE["flite"], reason="apt-get install flite")),
    pytest.param("festival:kal_diphone", marks=pytest.mark.skipif(
        not (HAVE["festival"] and Path("/usr/share/festival/voices/english/kal_diphone").is_dir()),
        reason="apt-get install festival festvox-kallpc16k")),
    pytest.param("festival:cmu_us_slt_arctic_hts", marks=pytest.mark.skipif(
        not (HAVE["festival"] and Path("/usr/share/festival/voices/us/cmu_us_slt_arctic_hts").is_dir()),
        reason="apt-get install festival festvox-us-slt-hts")),
]


@pytest.mark.parametrize("spec", ONE_PER_ENGINE)
def test_each_engine_speaks_at_its_speed_and_pitch(tmp_path, spec):
    voice, text = Voice.parse(spec), "the tennis fathers ruled in her favor"
    normal = synth.synthesize(voice, text, 1.0, tmp_path)
    fast = synth.synthesize(voice, text, 1.5, tmp_path)
    higher = synth.synthesize(voice, text, 1.0, tmp_path, semitones=4.0)
    assert 1.0 < len(normal) / 16000 < 5 and np.sqrt(np.mean(normal ** 2)) > 0.005
    assert 0.55 < len(fast) / len(normal) < 0.8
    assert 0.85 < len(higher) / len(normal) < 1.15        # a pitch shift keeps the duration
    assert np.array_equal(normal, synth.synthesize(voice, text, 1.0, tmp_path))


@needs_tools
def test_hours_and_augmented_corpus_is_recorded_resumed_and_reproducible(tmp_path):
    config = SynthConfig(train=0, hours=0.004, dev=1, test_clean=1, test_other=1, seed=2,
                         voices=("espeak:en-us", "flite:slt"), heldout_voices=("flite:awb",), speeds=(1.0,),
                         pitches=(-2.0, 2.0), snr_db=(10.0, 20.0), noise_fraction=0.5, max_words=6)
    out = synthesize_corpus(tmp_path / "a", config, workers=2, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    plan = plan_corpus(config, synth.load_sentences(config.min_words, config.max_words))
    assert meta["complete"] and meta["params"]["pitches"] == [-2.0, 2.0]
    assert meta["params"]["snr_db"] == [10, 20] and meta["params"]["noise_fraction"] == 0.5
    assert meta["utterances"]["train"] == sum(u.split == "train" for u in plan) >= 5
    assert 0.002 < meta["hours"]["train"] < 0.008 and meta["utterance_table"] == "utterances.tsv"
    rows = (out / "utterances.tsv").read_text().splitlines()[1:]
    assert sorted(r.split("\t")[0] for r in rows) == sorted(u.id for u in plan)
    assert len(load_corpus(out, "train")) == meta["utterances"]["train"]
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.flac")}
    synthesize_corpus(out, config, progress=False)                   # complete: reused as it is
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.flac")} == stamps
    next(out.glob("train/*/*/*.flac")).unlink()
    synthesize_corpus(out, config, workers=1, progress=False)        # resumed: only the missing one
    assert len(list(out.rglob("*.flac"))) == len(stamps)
    again = synthesize_corpus(tmp_path / "b", config, workers=1, progress=False)
    for flac in out.rglob("*.flac"):
        assert flac.read_bytes() == (again / flac.relative_to(out)).read_bytes()


def test_train_and_hours_together_are_refused_by_flag(capsys, tmp_path):
    assert dataset2_cli().main(["synth", "--out", str(tmp_path / "x"), "--train", "5", "--hours", "1"]) == 2
    assert capsys.readouterr().err.strip() == ("dataset2.py: error: give the training split as --train or "
                                               "as --hours, not both")
