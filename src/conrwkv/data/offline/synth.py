"""A synthetic speech corpus in the LibriSpeech layout, spoken by espeak-ng and flite, so that the
RWKV-ASR pipeline can be trained and evaluated offline (the layout: docs/reference.md, "LibriSpeech").

Text: the example sentences of WordNet 3.0 ("the tennis fathers ruled in her favor"), read from
the Debian package `wordnet-base` (/usr/share/wordnet/data.{noun,verb,adj,adv}). Why this one:
it ships about 47,000 short, modern, everyday English sentences written by lexicographers, far
more than a corpus needs and short enough for fast synthesis; it is plain text that works
offline once installed; and its licence (the WordNet 3.0 licence of Princeton University, a
permissive BSD-style licence: use, copy, modify and distribute for any purpose, keeping the
copyright notice) allows everything done here. Sentences with digits, abbreviations, acronyms
or other characters a synthesiser might read differently from their spelling are left out, so
the uppercase transcript is what is said.

Splits: train, dev and test-clean are spoken by the "seen" voices; test-other by held-out voices
that no other split uses, playing the role of LibriSpeech's harder test-other. Every split has
its own sentences. Voices and speeds are spread evenly over each split's utterances. Speaker
folders number the voices (seen first, then held-out) and chapter folders number the speeds;
meta.json records both mappings.

The corpus is deterministic for its parameters. meta.json holds them: a folder made with other
parameters is refused, one made with the same parameters is resumed (finished FLAC files, which
are written atomically, are kept). A complete one (meta.json says so, and every FLAC file and
transcript it promises is there) is reused as it is, without the synthesisers or WordNet, so a
corpus carried to a machine without them still serves. Missing tools are never installed from
here: synth stops and says which Debian packages to install.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from conrwkv.data.speech import SAMPLE_RATE, load_audio
from conrwkv.io import atomic_json_save, atomic_write_bytes, read_json, text_lines

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test-clean", "test-other")
WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
TEXT_SOURCE = "WordNet 3.0 example sentences (Debian package wordnet-base, WordNet 3.0 licence)"
DEFAULT_VOICES = ("espeak:en-us", "espeak:en-gb+f3", "espeak:en-029+m3", "espeak:en-gb-x-rp+f4",
                  "flite:slt", "flite:rms", "flite:kal")
DEFAULT_HELDOUT_VOICES = ("espeak:en-gb-scotland+f2", "espeak:en-us-nyc+m5", "flite:awb")
DEFAULT_SPEEDS = (0.8, 1.0, 1.25)
ESPEAK_WORDS_PER_MINUTE = 175      # espeak-ng's default rate, scaled by the speed factor
APT_PACKAGES = {"espeak-ng": "espeak-ng", "flite": "flite", "wordnet": "wordnet-base"}
FORMAT_VERSION = 1

_SPEAKABLE = re.compile(r"[A-Za-z][A-Za-z' ,;:!?-]*[.!?]?")
_TWO_CAPITALS_IN_A_WORD = re.compile(r"[A-Z][A-Za-z']*[A-Z]")     # acronyms, Roman numerals, McNames
_WORD_SEPARATORS = re.compile(r"[\s-]+")
_TRANSCRIPT_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")


@dataclass(frozen=True)
class Voice:
    """A synthesiser voice written `engine:name`: `espeak:<voice>[+<variant>]` (espeak-ng -v) or
    `flite:<voice>` (flite -voice; see `flite -lv`)."""

    engine: str
    name: str

    @classmethod
    def parse(cls, spec: str) -> Voice:
        engine, _, name = spec.partition(":")
        if engine not in ("espeak", "flite") or not name:
            raise ValueError(f"voice {spec!r} is not 'espeak:<voice>' or 'flite:<voice>'")
        return cls(engine, name)

    def __str__(self) -> str:
        return f"{self.engine}:{self.name}"

    def command(self, text: str, speed: float, wav_path: Path) -> list[str]:
        if self.engine == "espeak":
            rate = round(ESPEAK_WORDS_PER_MINUTE * speed)
            return ["espeak-ng", "-v", self.name, "-s", str(rate), "-w", str(wav_path), text]
        # flite stretches durations: a factor 1/speed speaks `speed` times as fast.
        return ["flite", "-voice", self.name, "--setf", f"duration_stretch={1 / speed:.4f}",
                "-t", text, "-o", str(wav_path)]


@dataclass(frozen=True)
class SynthConfig:
    """What a synthetic corpus is made of; all of it is stored in meta.json and compared on resume."""

    train: int = 1000
    dev: int = 100
    test_clean: int = 100
    test_other: int = 100
    seed: int = 0
    voices: tuple[str, ...] = DEFAULT_VOICES
    heldout_voices: tuple[str, ...] = DEFAULT_HELDOUT_VOICES
    speeds: tuple[float, ...] = DEFAULT_SPEEDS
    min_words: int = 3
    max_words: int = 12

    def counts(self) -> dict[str, int]:
        return {"train": self.train, "dev": self.dev, "test-clean": self.test_clean,
                "test-other": self.test_other}

    def validate(self) -> None:
        if any(n < 0 for n in self.counts().values()):
            raise ValueError(f"utterance counts must be >= 0, got {self.counts()}")
        if not self.voices or (self.test_other and not self.heldout_voices):
            raise ValueError("need at least one voice, and one held-out voice when test_other > 0")
        overlap = set(self.voices) & set(self.heldout_voices)
        if overlap:
            raise ValueError(f"held-out voices must not be seen voices too: {sorted(overlap)}")
        for spec in (*self.voices, *self.heldout_voices):
            Voice.parse(spec)
        if not self.speeds or any(s <= 0 for s in self.speeds):
            raise ValueError(f"speeds must be positive factors, got {self.speeds}")
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(f"need 1 <= min_words <= max_words, got {self.min_words}, {self.max_words}")

    def params(self) -> dict:
        """The parameters as they read back from JSON (tuples as lists), for comparison."""
        params = {**asdict(self), "sample_rate": SAMPLE_RATE, "format_version": FORMAT_VERSION}
        return json.loads(json.dumps(params))


@dataclass(frozen=True)
class PlannedUtterance:
    split: str
    id: str
    speaker: int
    chapter: int
    voice: str
    speed: float
    spoken: str
    transcript: str

    def flac_path(self, root: Path) -> Path:
        return root / self.split / str(self.speaker) / str(self.chapter) / f"{self.id}.flac"


# ---------------------------------------------------------------------------------------------
# Text


def speakable_sentence(sentence: str) -> tuple[str, str] | None:
    """(text to speak, UPPERCASE transcript), or None when a synthesiser might say something
    other than the words: digits, inner periods (abbreviations), symbols, acronyms."""
    sentence = " ".join(sentence.split())
    if not _SPEAKABLE.fullmatch(sentence) or _TWO_CAPITALS_IN_A_WORD.search(sentence):
        return None
    words = [w for w in (w.strip(",;:!?.'") for w in _WORD_SEPARATORS.split(sentence)) if w]
    # Punctuation inside a word ("a:b", "yes,no") is spoken as a symbol name or not at all.
    if not words or not all(_TRANSCRIPT_WORD.fullmatch(w) for w in words):
        return None
    return sentence.replace("-", " "), " ".join(words).upper()


def load_sentences(min_words: int = 3, max_words: int = 12,
                   wordnet_dir: Path = WORDNET_DIR) -> list[tuple[str, str]]:
    """Speakable WordNet example sentences as (spoken, transcript), in file order, one per
    distinct transcript, with min_words..max_words words."""
    sentences, seen = [], set()
    for gloss in wordnet_glosses(wordnet_dir):
        for example in re.findall(r'"([^"]+)"', gloss):
            pair = speakable_sentence(example)
            if pair is None or pair[1] in seen:
                continue
            if min_words <= len(pair[1].split()) <= max_words:
                seen.add(pair[1])
                sentences.append(pair)
    return sentences


def wordnet_glosses(wordnet_dir: Path = WORDNET_DIR) -> Iterator[str]:
    """The gloss of every synset in the WordNet data files, in file order: its definition(s)
    separated by ";" and its quoted example sentences."""
    for name in WORDNET_FILES:
        path = Path(wordnet_dir) / name
        if not path.is_file():
            raise FileNotFoundError(f"WordNet file {path} is missing: install the Debian package "
                                    "wordnet-base")
        for line in path.read_text(encoding="latin-1").splitlines():
            # Lines starting with spaces are the licence header; the gloss follows " | ".
            if line.startswith(" ") or " | " not in line:
                continue
            yield line.split(" | ", 1)[1]


# ---------------------------------------------------------------------------------------------
# Plan


def plan_corpus(config: SynthConfig, sentences: list[tuple[str, str]]) -> list[PlannedUtterance]:
    """Every utterance of the corpus: split, id, voice, speed and text, fixed by the seed."""
    config.validate()
    counts = config.counts()
    if sum(counts.values()) > len(sentences):
        raise ValueError(f"{sum(counts.values())} utterances asked for but only {len(sentences)} distinct "
                         f"sentences have {config.min_words}..{config.max_words} words; ask for fewer "
                         "utterances or allow more words")
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(sentences))
    speaker_of = {v: i + 1 for i, v in enumerate((*config.voices, *config.heldout_voices))}
    plan, start = [], 0
    for split in SPLITS:
        n = counts[split]
        voices = config.heldout_voices if split == "test-other" else config.voices
        # Cycled then shuffled: every voice and every speed gets an equal share of the split.
        voice_index = rng.permutation(np.arange(n) % len(voices))
        speed_index = rng.permutation(np.arange(n) % len(config.speeds))
        for j in range(n):
            spoken, transcript = sentences[order[start + j]]
            voice = voices[voice_index[j]]
            speaker, chapter = speaker_of[voice], int(speed_index[j]) + 1
            plan.append(PlannedUtterance(split=split, id=f"{speaker}-{chapter}-{start + j:04d}",
                                         speaker=speaker, chapter=chapter, voice=voice,
                                         speed=config.speeds[speed_index[j]], spoken=spoken,
                                         transcript=transcript))
        start += n
    return plan


# ---------------------------------------------------------------------------------------------
# Tools


def ensure_tools(voices: list[Voice]) -> None:
    """Stop, saying what to install, unless the synthesisers the voices need and the WordNet
    text are installed. A data tool never installs system packages itself."""
    missing = _missing_packages(voices)
    if missing:
        raise FileNotFoundError(f"synth needs the Debian packages {', '.join(missing)}, which are "
                                f"not installed: apt-get install {' '.join(missing)}")


def _missing_packages(voices: list[Voice]) -> list[str]:
    missing = []
    engines = {v.engine for v in voices}
    if "espeak" in engines and shutil.which("espeak-ng") is None:
        missing.append(APT_PACKAGES["espeak-ng"])
    if "flite" in engines and shutil.which("flite") is None:
        missing.append(APT_PACKAGES["flite"])
    if not all((WORDNET_DIR / name).is_file() for name in WORDNET_FILES):
        missing.append(APT_PACKAGES["wordnet"])
    return missing


def check_voices(voices: list[Voice]) -> None:
    """Refuse voices the installed synthesisers do not have, before any audio is made (flite
    would silently fall back to its default voice)."""
    flite_voices = None
    for voice in voices:
        if voice.engine == "flite":
            if flite_voices is None:
                listing = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout
                flite_voices = listing.split(":", 1)[-1].split()
            if voice.name not in flite_voices:
                raise ValueError(f"flite has no voice {voice.name!r} (it has: {' '.join(flite_voices)})")
        else:
            probe = subprocess.run(["espeak-ng", "-q", "-v", voice.name, "a"], capture_output=True, text=True)
            if probe.returncode != 0:
                raise ValueError(f"espeak-ng has no voice {voice.name!r} ({probe.stderr.strip()}); "
                                 "see espeak-ng --voices=en and --voices=variant")


def tool_versions() -> dict[str, str]:
    versions = {}
    for tool, flag in (("espeak-ng", "--version"), ("flite", "--version")):
        if shutil.which(tool):
            out = subprocess.run([tool, flag], capture_output=True, text=True).stdout
            versions[tool] = " ".join(out.split())[:120]
    return versions


# ---------------------------------------------------------------------------------------------
# Synthesis


def synthesize(voice: Voice, text: str, speed: float, work_dir: Path,
               sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One utterance as float32 mono at sample_rate (espeak-ng speaks at 22.05 kHz, flite's kal
    at 8 kHz, its other voices at 16 kHz: all are resampled here)."""
    with tempfile.NamedTemporaryFile(suffix=".wav", dir=work_dir) as tmp:
        result = subprocess.run(voice.command(text, speed, Path(tmp.name)), capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{voice} failed on {text!r} (exit {result.returncode}): "
                               f"{result.stderr.strip()}")
        audio = load_audio(tmp.name, f"{voice} output for {text!r}", sample_rate)
    if len(audio) < sample_rate // 10:
        raise RuntimeError(f"{voice} produced {len(audio)} samples for {text!r}: too short to be speech")
    return audio


def _write_utterance(utt: PlannedUtterance, root: Path, work_dir: Path, sample_rate: int) -> bool:
    """Synthesise and write one FLAC unless it exists already; True when written."""
    path = utt.flac_path(root)
    if path.exists():
        return False
    audio = synthesize(Voice.parse(utt.voice), utt.spoken, utt.speed, work_dir, sample_rate)
    atomic_write_bytes(path, lambda f: sf.write(f, audio, sample_rate, format="FLAC", subtype="PCM_16"))
    return True


def _write_transcripts(plan: list[PlannedUtterance], root: Path) -> None:
    chapters: dict[tuple[str, int, int], list[PlannedUtterance]] = {}
    for utt in plan:
        chapters.setdefault((utt.split, utt.speaker, utt.chapter), []).append(utt)
    for (split, speaker, chapter), utts in chapters.items():
        text = "".join(f"{u.id} {u.transcript}\n" for u in sorted(utts, key=lambda u: u.id))
        path = root / split / str(speaker) / str(chapter) / f"{speaker}-{chapter}.trans.txt"
        atomic_write_bytes(path, lambda f, data=text: f.write(data.encode()))


def _prepare_folder(root: Path, config: SynthConfig) -> dict | None:
    """Refuse a folder made with other parameters or by something else; return the meta.json of
    one made with these parameters (None for a new or empty folder)."""
    meta_path = root / "meta.json"
    if not root.exists() or not any(root.iterdir()):
        return None
    if not meta_path.is_file():
        raise FileExistsError(f"{root} is not empty and has no meta.json, so it was not made by "
                              "synth; choose a new --out")
    meta = read_json(meta_path, "synthetic corpus meta.json", ("params",))
    old, new = meta["params"] if isinstance(meta["params"], dict) else {}, config.params()
    if old != new:
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        details = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in changed)
        raise FileExistsError(f"{root} was made with other parameters ({details}); choose a new --out "
                              "or repeat the original parameters to resume")
    return meta


def is_complete(root: Path, meta: dict, config: SynthConfig) -> bool:
    """Whether the corpus in `root` is finished: meta.json says so, each split has its number of
    FLAC files, and each chapter folder has a transcript listing exactly its FLAC files. Only
    names are compared (cheap); the audio is not decoded."""
    if meta.get("complete") is not True:
        return False
    for split, count in config.counts().items():
        flacs = list((root / split).glob("*/*/*.flac"))
        if len(flacs) != count:
            return False
        ids_by_chapter: dict[Path, set[str]] = {}
        for flac in flacs:
            ids_by_chapter.setdefault(flac.parent, set()).add(flac.stem)
        for chapter, ids in ids_by_chapter.items():
            transcript = chapter / f"{chapter.parent.name}-{chapter.name}.trans.txt"
            if not transcript.is_file():
                return False
            if {line.split(" ", 1)[0] for _, line in text_lines(transcript) if line.strip()} != ids:
                return False
    return True


def synthesize_corpus(out: str | os.PathLike, config: SynthConfig, workers: int | None = None,
                      progress: bool = True) -> Path:
    """Write the corpus under `out` (out/<split>/<speaker>/<chapter>/..., meta.json) and return
    out; a complete corpus with these parameters is returned as it is."""
    config.validate()
    root = Path(out)
    existing = _prepare_folder(root, config)
    if existing is not None and is_complete(root, existing, config):
        log.info("the synthetic corpus in %s is complete (same parameters): reused as it is", root)
        return root
    if existing is not None:
        log.info("resuming the synthetic corpus in %s (same parameters)", root)
    voices = [Voice.parse(v) for v in (*config.voices, *config.heldout_voices)]
    ensure_tools(voices)
    check_voices(voices)
    plan = plan_corpus(config, load_sentences(config.min_words, config.max_words))
    speakers = {str(i + 1): v for i, v in enumerate((*config.voices, *config.heldout_voices))}
    meta = {"params": config.params(), "text_source": TEXT_SOURCE, "speakers": speakers,
            "chapters": {str(i + 1): s for i, s in enumerate(config.speeds)},
            "heldout_speakers": [k for k, v in speakers.items() if v in config.heldout_voices],
            "utterances": config.counts(), "tools": tool_versions(),
            "complete": False}
    root.mkdir(parents=True, exist_ok=True)
    atomic_json_save(meta, root / "meta.json")
    workers = workers or os.cpu_count() or 1
    written = 0
    # Threads suffice: the synthesisers are separate processes, and most of the rest is numpy.
    with tempfile.TemporaryDirectory(prefix=".synth-", dir=root) as work_dir, \
            ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(plan), desc="synth", unit="utt", disable=not progress) as bar:
        futures = [pool.submit(_write_utterance, u, root, Path(work_dir), SAMPLE_RATE) for u in plan]
        try:
            for future in as_completed(futures):
                written += future.result()
                bar.update()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    _write_transcripts(plan, root)
    atomic_json_save({**meta, "complete": True}, root / "meta.json")
    log.info("synthetic corpus in %s: %d utterances (%d written now, %d already there)",
             root, len(plan), written, len(plan) - written)
    return root
