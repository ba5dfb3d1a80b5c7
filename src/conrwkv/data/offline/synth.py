"""A synthetic speech corpus in the LibriSpeech layout, spoken by espeak-ng, flite and festival,
so that the RWKV-ASR pipeline can be trained and evaluated offline (the layout:
docs/reference.md, "LibriSpeech").

Text: the example sentences of WordNet 3.0 ("the tennis fathers ruled in her favor"), read from
the Debian package `wordnet-base` (/usr/share/wordnet/data.{noun,verb,adj,adv}). Why this one:
it ships about 47,000 short, modern, everyday English sentences written by lexicographers,
short enough for fast synthesis; it is plain text that works offline once installed; and its
licence (the WordNet 3.0 licence of Princeton University, a permissive BSD-style licence: use,
copy, modify and distribute for any purpose, keeping the copyright notice) allows everything
done here. Sentences with digits, abbreviations, acronyms or other characters a synthesiser
might read differently from their spelling are left out, so the uppercase transcript is what
is said. The 39,569 sentences of 3-12 words last about 23 hours at the normal rate; a larger
training split (`hours`) speaks its sentences again, each time with another voice (see
plan_corpus), and meta.json says how often ("train_sentences").

Splits: train, dev and test-clean are spoken by the "seen" voices; test-other by held-out voices
that no other split uses, playing the role of LibriSpeech's harder test-other. Every split has
its own sentences. Voices, speeds and pitches are spread evenly over each split's utterances.
Speaker folders number the voices (seen first, then held-out) and chapter folders number the
speeds; meta.json records both mappings, and utterances.tsv each utterance's voice, speed,
pitch and noise.

Augmentation (optional, seeded, recorded): pitch shifts in semitones, made the same way for
every engine by asking the synthesiser for a rate 2^(st/12) times slower and playing the result
that much faster (pitch and formants move together, like a shorter or longer vocal tract;
the duration is the speed's); and additive white or pink Gaussian noise at a signal-to-noise
ratio drawn from a range (the ratio of the whole utterance's power, pauses included).

The corpus is deterministic for its parameters. meta.json holds them: a folder made with other
parameters is refused, one made with the same parameters is resumed (finished FLAC files, which
are written atomically, are kept). A complete one (meta.json says so, and every FLAC file and
transcript it promises is there) is reused as it is, without the synthesisers or WordNet, so a
corpus carried to a machine without them still serves. Missing tools are never installed from
here: synth stops and says which Debian packages to install, or uses a folder of unpacked
synthesisers made by synthkit.py (`tools`), which needs no installation at all.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from conrwkv.data.speech import SAMPLE_RATE, load_audio
from conrwkv.io import atomic_json_save, atomic_write_bytes, read_json, text_lines

from .digits import TEXT_SOURCE as DIGITS_TEXT_SOURCE
from .digits import digit_string_pairs, distinct_strings

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test-clean", "test-other")
WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
TEXT_SOURCE = "WordNet 3.0 example sentences (Debian package wordnet-base, WordNet 3.0 licence)"
ENGINES = ("espeak", "flite", "festival")
ALL_VOICES = "all"
DEFAULT_VOICES = ("espeak:en-us", "espeak:en-gb+f3", "espeak:en-029+m3", "espeak:en-gb-x-rp+f4",
                  "flite:slt", "flite:rms", "flite:kal")
DEFAULT_HELDOUT_VOICES = ("espeak:en-gb-scotland+f2", "espeak:en-us-nyc+m5", "flite:awb")
DEFAULT_SPEEDS = (0.8, 1.0, 1.25)
HELDOUT_EVERY = 8                  # with `all`, one voice in 8 of each engine is held out
ESPEAK_WORDS_PER_MINUTE = 175      # espeak-ng's default rate, scaled by the speed factor
# The Debian packages of the synthesisers and of festival's English voices (voice -> package),
# named in the message when one is missing.
APT_PACKAGES = {"espeak": "espeak-ng", "flite": "flite", "festival": "festival", "wordnet": "wordnet-base"}
ENGINE_PROGRAMS = {"espeak": "espeak-ng", "flite": "flite", "festival": "festival"}
FESTIVAL_VOICES = {"kal_diphone": "festvox-kallpc16k", "ked_diphone": "festvox-kdlpc16k",
                   "cmu_us_slt_arctic_hts": "festvox-us-slt-hts"}
# seconds = (LEAD + PER_WORD * words) / speed, fitted to the 1593 utterances (0.95 h) of an
# hour's target with --voices all: the estimate that turns an hours target into a number of
# utterances before any audio exists (meta.json records the measured hours after).
ESTIMATED_SECONDS_LEAD = 0.60
ESTIMATED_SECONDS_PER_WORD = 0.25
FORMAT_VERSION = 1
# Options added after the first corpora were made: left out of the recorded parameters while
# they have these values, so that those corpora still resume and are still reused.
LATER_DEFAULTS = {"hours": 0.0, "pitches": [0.0], "snr_db": None, "noise_fraction": 1.0, "text": "wordnet"}
# What the utterances say: WordNet's example sentences, or digit strings (digits.py), whose
# min_words..max_words count digits; the digit list holds this many distinct strings.
TEXTS = ("wordnet", "digits")
DIGIT_STRINGS = 20000

_SPEAKABLE = re.compile(r"[A-Za-z][A-Za-z' ,;:!?-]*[.!?]?")
_TWO_CAPITALS_IN_A_WORD = re.compile(r"[A-Z][A-Za-z']*[A-Z]")     # acronyms, Roman numerals, McNames
_WORD_SEPARATORS = re.compile(r"[\s-]+")
_TRANSCRIPT_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")


@dataclass(frozen=True)
class Voice:
    """A synthesiser voice written `engine:name`: `espeak:<voice>[+<variant>]` (espeak-ng -v),
    `flite:<voice>` (flite -voice; see `flite -lv`) or `festival:<voice>` (festival's
    (voice_<voice>), e.g. festival:kal_diphone)."""

    engine: str
    name: str

    @classmethod
    def parse(cls, spec: str) -> Voice:
        engine, _, name = spec.partition(":")
        if engine not in ENGINES or not name:
            raise ValueError(f"voice {spec!r} is not 'espeak:<voice>', 'flite:<voice>' or "
                             "'festival:<voice>'")
        return cls(engine, name)

    def __str__(self) -> str:
        return f"{self.engine}:{self.name}"


@dataclass(frozen=True)
class SynthConfig:
    """What a synthetic corpus is made of; all of it is stored in meta.json and compared on resume.

    voices may be ("all",): every English voice of the installed engines (see available_voices),
    with heldout_voices () meaning one in HELDOUT_EVERY of each engine's. hours > 0 sets the
    size of train instead of `train` (which must then be 0). snr_db (low, high) adds noise to
    a share noise_fraction of the utterances; pitches are semitone shifts."""

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
    hours: float = 0.0
    pitches: tuple[float, ...] = (0.0,)
    snr_db: tuple[float, float] | None = None
    noise_fraction: float = 1.0
    text: str = "wordnet"

    def counts(self) -> dict[str, int]:
        return {"train": self.train, "dev": self.dev, "test-clean": self.test_clean,
                "test-other": self.test_other}

    def validate(self) -> None:
        if any(n < 0 for n in self.counts().values()):
            raise ValueError(f"utterance counts must be >= 0, got {self.counts()}")
        if self.hours < 0 or (self.hours > 0 and self.train):
            raise ValueError(f"give the training split as utterances (--train) or as hours (--hours), "
                             f"not both: train={self.train}, hours={self.hours}")
        if not self.voices or (self.test_other and not self.heldout_voices and self.voices != (ALL_VOICES,)):
            raise ValueError("need at least one voice, and one held-out voice when test_other > 0")
        if ALL_VOICES in self.voices and self.voices != (ALL_VOICES,):
            raise ValueError(f"--voices {ALL_VOICES} stands alone, got {list(self.voices)}")
        overlap = set(self.voices) & set(self.heldout_voices)
        if overlap:
            raise ValueError(f"held-out voices must not be seen voices too: {sorted(overlap)}")
        for spec in (*self.voices, *self.heldout_voices):
            if spec != ALL_VOICES:
                Voice.parse(spec)
        if not self.speeds or any(s <= 0 for s in self.speeds):
            raise ValueError(f"speeds must be positive factors, got {self.speeds}")
        if not self.pitches or any(abs(p) > 12 for p in self.pitches):
            raise ValueError(f"pitches are semitone shifts within [-12, 12], got {self.pitches}")
        if self.snr_db is not None and (len(self.snr_db) != 2 or self.snr_db[0] > self.snr_db[1]):
            raise ValueError(f"snr_db is a range (low, high) with low <= high, got {self.snr_db}")
        if not 0 <= self.noise_fraction <= 1:
            raise ValueError(f"noise_fraction must be in [0, 1], got {self.noise_fraction}")
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(f"need 1 <= min_words <= max_words, got {self.min_words}, {self.max_words}")
        if self.text not in TEXTS:
            raise ValueError(f"text must be one of {', '.join(TEXTS)}, got {self.text!r}")
        if self.text == "digits" and distinct_strings(self.min_words, self.max_words) < 2 * DIGIT_STRINGS:
            raise ValueError(f"digit strings of {self.min_words}-{self.max_words} digits are too few for "
                             f"{DIGIT_STRINGS} distinct ones: allow longer strings (max_words)")

    def params(self) -> dict:
        """The parameters as they read back from JSON (tuples as lists), for comparison."""
        params = {**asdict(self), "sample_rate": SAMPLE_RATE, "format_version": FORMAT_VERSION}
        params = json.loads(json.dumps(params))
        return {k: v for k, v in params.items() if k not in LATER_DEFAULTS or v != LATER_DEFAULTS[k]}


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
    semitones: float = 0.0
    noise: str | None = None          # "white" or "pink"
    snr_db: float | None = None
    noise_seed: int | None = None

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


def estimated_seconds(words: int, speed: float) -> float:
    return (ESTIMATED_SECONDS_LEAD + ESTIMATED_SECONDS_PER_WORD * words) / speed


def plan_corpus(config: SynthConfig, sentences: list[tuple[str, str]]) -> list[PlannedUtterance]:
    """Every utterance of the corpus: split, id, voice, speed, pitch, noise and text, fixed by
    the seed. `config` names its voices (no `all`: see resolve_voices).

    dev and the test splits each take distinct sentences; train takes the rest. When train asks
    for more utterances than there are sentences left (a large `hours`), it goes through them
    again: pass p speaks each sentence with the voice p places further on in the voice list
    (and, after every voice, the next speed), so no sentence is said twice with the same voice
    and speed."""
    config.validate()
    if ALL_VOICES in config.voices:
        raise ValueError(f"plan_corpus needs the voices by name: resolve {ALL_VOICES!r} first "
                         "(resolve_voices)")
    counts = config.counts()
    n_eval = counts["dev"] + counts["test-clean"] + counts["test-other"]
    left = len(sentences) - n_eval
    if left < 0 or (left == 0 and (config.train or config.hours)):
        raise ValueError(f"{n_eval} dev and test utterances (plus at least one for train) asked for "
                         f"but only {len(sentences)} distinct sentences have {config.min_words}.."
                         f"{config.max_words} words; ask for fewer utterances or allow more words")
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(sentences))
    if config.hours:
        words = np.array([len(sentences[i][1].split()) for i in order[:left]])
        mean_seconds = np.mean([estimated_seconds(words.mean(), s) for s in config.speeds])
        counts["train"] = math.ceil(config.hours * 3600 / mean_seconds)
    # A separate generator, so that the voices and speeds of a corpus without augmentation
    # are those of corpora made before augmentation existed.
    aug_rng = np.random.default_rng([config.seed, 1])
    speaker_of = {v: i + 1 for i, v in enumerate((*config.voices, *config.heldout_voices))}
    plan, start, index = [], 0, 0
    for split in SPLITS:
        n = counts[split]
        distinct = min(n, left) if split == "train" else n
        voices = config.heldout_voices if split == "test-other" else config.voices
        passes = math.ceil(n / distinct) if distinct else 0
        if passes > len(voices) * len(config.speeds):
            raise ValueError(f"{n} training utterances from {distinct} sentences would say a sentence "
                             f"twice with one voice and speed ({len(voices)} voices, {len(config.speeds)} "
                             "speeds); add voices (--voices all) or speeds, or ask for fewer hours")
        # Cycled then shuffled: every voice and every speed gets an equal share of the split.
        voice_base = rng.permutation(np.arange(distinct) % len(voices))
        speed_base = rng.permutation(np.arange(distinct) % len(config.speeds))
        pitch_index = aug_rng.permutation(np.arange(n) % len(config.pitches))
        noisy = np.zeros(n, dtype=bool)
        if config.snr_db is not None:
            noisy = aug_rng.random(n) < config.noise_fraction
            snrs = aug_rng.uniform(config.snr_db[0], config.snr_db[1], n)
            pink = aug_rng.random(n) < 0.5
            noise_seeds = aug_rng.integers(2 ** 31, size=n)
        for j in range(n):
            p, i = divmod(j, distinct)
            spoken, transcript = sentences[order[start + i]]
            voice = voices[(voice_base[i] + p) % len(voices)]
            speed_index = (speed_base[i] + p // len(voices)) % len(config.speeds)
            speaker, chapter = speaker_of[voice], int(speed_index) + 1
            noise = {} if not noisy[j] else {
                "noise": "pink" if pink[j] else "white", "snr_db": round(float(snrs[j]), 2),
                "noise_seed": int(noise_seeds[j])}
            plan.append(PlannedUtterance(split=split, id=f"{speaker}-{chapter}-{index + j:04d}",
                                         speaker=speaker, chapter=chapter, voice=voice,
                                         speed=config.speeds[speed_index], spoken=spoken,
                                         transcript=transcript,
                                         semitones=float(config.pitches[pitch_index[j]]), **noise))
        start += distinct
        index += n
    return plan


def plan_summary(plan: list[PlannedUtterance]) -> dict:
    """What meta.json says of a plan: utterances per split, how often train repeats a sentence,
    and the estimated hours of each split."""
    summary = {"utterances": {s: 0 for s in SPLITS}, "estimated_hours": {s: 0.0 for s in SPLITS}}
    for utt in plan:
        summary["utterances"][utt.split] += 1
        summary["estimated_hours"][utt.split] += estimated_seconds(len(utt.transcript.split()),
                                                                   utt.speed) / 3600
    summary["estimated_hours"] = {s: round(h, 3) for s, h in summary["estimated_hours"].items()}
    train_texts = [u.transcript for u in plan if u.split == "train"]
    summary["train_sentences"] = {"utterances": len(train_texts), "distinct": len(set(train_texts)),
                                  "most_repeats": max(np.unique(train_texts, return_counts=True)[1],
                                                      default=0).item()}
    return summary


def write_utterance_table(plan: list[PlannedUtterance], path: Path) -> None:
    """utterances.tsv: id, split, voice, speed, semitones, noise, snr_db, noise_seed of every
    utterance ("-" for no noise), the per-utterance record of the augmentation."""
    rows = ["id\tsplit\tvoice\tspeed\tsemitones\tnoise\tsnr_db\tnoise_seed\n"]
    for u in plan:
        noise = (u.noise, str(u.snr_db), str(u.noise_seed)) if u.noise else ("-", "-", "-")
        rows.append("\t".join((u.id, u.split, u.voice, str(u.speed), str(u.semitones), *noise)) + "\n")
    atomic_write_bytes(path, lambda f: f.write("".join(rows).encode()))


# ---------------------------------------------------------------------------------------------
# Tools


@dataclass(frozen=True)
class Tools:
    """Where the synthesisers and the WordNet text are: installed (root None: found on PATH and
    in WORDNET_DIR) or unpacked by synthkit into the folder `root`, whose kit.json names its
    program, library and data folders. From
    a folder, every program runs by its full path with LD_LIBRARY_PATH, ESPEAK_DATA_PATH and
    festival's --libdir and --datadir pointing into it, so nothing installed on the machine is used but the
    C and C++ runtime libraries."""

    root: Path | None = None

    @cached_property
    def kit(self) -> dict:
        """kit.json, read once: every command line of every utterance looks into it."""
        return read_json(self.root / "kit.json", "synthesiser kit kit.json (from dataset2.py synthkit; "
                         "--tools)", ("bin", "library_path", "espeak_data_path", "festival_libdir",
                                      "wordnet_dir"))

    def wordnet_dir(self) -> Path:
        """Where the WordNet data files are: installed, or the kit's copy of wordnet-base."""
        return WORDNET_DIR if self.root is None else self.root / self.kit["wordnet_dir"]

    def program(self, name: str) -> str | None:
        """The full path of a program, None when it is not there."""
        if self.root is None:
            return shutil.which(name)
        path = self.root / self.kit["bin"] / name
        return str(path) if path.is_file() else None

    def env(self) -> dict[str, str] | None:
        """The environment the programs run in (None: this process's)."""
        if self.root is None:
            return None
        kit = self.kit
        libraries = ":".join(str(self.root / d) for d in kit["library_path"])
        return {**os.environ, "PATH": f"{self.root / kit['bin']}:{os.environ.get('PATH', '')}",
                "LD_LIBRARY_PATH": libraries,
                "ESPEAK_DATA_PATH": str(self.root / kit["espeak_data_path"])}

    def run(self, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, env=self.env())

    def command(self, voice: Voice, text: str, speed: float, wav_path: Path) -> tuple[list[str], str | None]:
        """The command line that speaks `text` into wav_path at `speed` times the normal rate,
        and what it reads on standard input."""
        if voice.engine == "espeak":
            rate = round(ESPEAK_WORDS_PER_MINUTE * speed)
            return [self.program("espeak-ng") or "espeak-ng", "-v", voice.name, "-s", str(rate),
                    "-w", str(wav_path), text], None
        if voice.engine == "flite":
            # flite stretches durations: a factor 1/speed speaks `speed` times as fast.
            return [self.program("flite") or "flite", "-voice", voice.name, "--setf",
                    f"duration_stretch={1 / speed:.4f}", "-t", text, "-o", str(wav_path)], None
        # festival's diphone voices stretch durations by Duration_Stretch; its HTS voices
        # (named *_hts) ignore that and take the speaking rate as the engine option -r.
        rate = (f"(set! hts_engine_params (cons (list \"-r\" {speed:.4f}) hts_engine_params))"
                if voice.name.endswith("_hts") else f"(Parameter.set 'Duration_Stretch {1 / speed:.4f})")
        # The text is a Scheme string: the sentences have no quotes or backslashes, but escape them.
        quoted = text.replace("\\", "\\\\").replace('"', '\\"')
        save = f'(utt.save.wave (utt.synth (Utterance Text "{quoted}")) "{wav_path}" (quote riff))'
        return [*self.festival(), "-b", f"(voice_{voice.name})", rate, save], None

    def festival(self) -> list[str]:
        """festival as a command; from a folder, told to read its Scheme library and data
        (voices, lexicons) from there. (Not its script text2wave: `festival --script` takes
        no options before the script, so it could not be pointed at the folder.)"""
        festival = self.program("festival") or "festival"
        if self.root is None:
            return [festival]
        libdir = str(self.root / self.kit["festival_libdir"])
        return [festival, "--libdir", libdir, "--datadir", libdir]

    def missing_packages(self, engines: set[str]) -> list[str]:
        return [APT_PACKAGES[e] for e in ENGINES if e in engines and self.program(ENGINE_PROGRAMS[e]) is None]

    def versions(self) -> dict[str, str]:
        versions = {}
        for tool, argv in (("espeak-ng", ["--version"]), ("flite", ["--version"]),
                           ("festival", ["--version"])):
            path = self.program(tool)
            if path:
                versions[tool] = " ".join(self.run([path, *argv]).stdout.split())[:120]
        return versions

    def where(self) -> str:
        return "installed" if self.root is None else f"from the folder {self.root}"


def ensure_tools(voices: list[Voice], tools: Tools = Tools(), needs_wordnet: bool = True) -> None:
    """Stop, saying what to install, unless the synthesisers the voices need and (for its
    sentences) the WordNet text are there. A data tool never installs system packages itself."""
    missing = tools.missing_packages({v.engine for v in voices})
    if needs_wordnet and not all((tools.wordnet_dir() / name).is_file() for name in WORDNET_FILES):
        missing.append(APT_PACKAGES["wordnet"])
    if missing:
        where = "" if tools.root is None else f" (nor in --tools {tools.root})"
        raise FileNotFoundError(f"synth needs the Debian packages {', '.join(missing)}, which are "
                                f"not installed{where}: apt-get install {' '.join(missing)}")


def available_voices(tools: Tools = Tools()) -> dict[str, list[str]]:
    """Every English voice of each engine that is there, in a fixed order: espeak-ng's English
    voices (not the mbrola ones, which need mbrola), then each of its variants once, on the
    English voices in turn; flite's voices but the limited-domain ones (awb_time says only the
    time of day); festival's English voices of Debian (FESTIVAL_VOICES) that are installed."""
    voices = {engine: [] for engine in ENGINES}
    espeak = tools.program("espeak-ng")
    if espeak:
        # Rows of --voices=en with a file under mb/ are mbrola voices, under !v/ variants.
        languages = sorted({row[1] for row in espeak_listing(tools, [espeak, "--voices=en"])
                            if not row[4].startswith(("mb/", "!v/"))})
        variants = sorted({row[4].removeprefix("!v/")
                           for row in espeak_listing(tools, [espeak, "--voices=variant"])}, key=str.lower)
        # The variant-to-voice pairing turns one step further each round, so that one in
        # HELDOUT_EVERY (held out) is not always the same English voice.
        n = len(languages)
        voices["espeak"] = [f"espeak:{lang}" for lang in languages] + [
            f"espeak:{languages[(i + i // n) % n]}+{v}" for i, v in enumerate(variants)]
    flite = tools.program("flite")
    if flite:
        listing = tools.run([flite, "-lv"]).stdout.split(":", 1)[-1].split()
        voices["flite"] = [f"flite:{v}" for v in sorted(listing) if not v.endswith("_time")]
    if tools.program("festival"):
        installed = festival_voice_list(tools)
        voices["festival"] = [f"festival:{v}" for v in sorted(FESTIVAL_VOICES) if v in installed]
    return voices


def espeak_listing(tools: Tools, argv: list[str]) -> list[list[str]]:
    """The rows of an espeak-ng --voices listing (its header left out) as columns: priority,
    language, age/gender, name, file, other languages."""
    result = tools.run(argv)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return [line.split() for line in result.stdout.splitlines()[1:] if len(line.split()) >= 5]


def festival_voice_list(tools: Tools) -> list[str]:
    return tools.run([*tools.festival(), "-b", "(print (voice.list))"]).stdout.strip().strip("()").split()


def resolve_voices(config: SynthConfig, tools: Tools = Tools()) -> SynthConfig:
    """config with its voices by name: `all` becomes every available voice (available_voices)
    but the held-out ones, and with no held-out voices given, one in HELDOUT_EVERY of each
    engine with more than one voice (the first, the ninth, ...) is held out, so no voice is in
    both sides."""
    if config.voices != (ALL_VOICES,):
        return config
    seen, heldout = [], list(config.heldout_voices)
    for specs in available_voices(tools).values():
        for i, spec in enumerate(specs):
            if spec in config.heldout_voices:
                continue
            # An engine's only voice stays seen: held out, the engine would never be trained on.
            held = not config.heldout_voices and i % HELDOUT_EVERY == 0 and len(specs) > 1
            (heldout if held else seen).append(spec)
    if not seen:
        raise FileNotFoundError(f"--voices {ALL_VOICES} found no voice: install espeak-ng, flite or "
                                "festival, or pass --tools")
    return replace(config, voices=tuple(seen), heldout_voices=tuple(heldout))


def check_voices(voices: list[Voice], tools: Tools = Tools()) -> None:
    """Refuse voices the synthesisers do not have, before any audio is made (flite would
    silently fall back to its default voice, festival to its default one)."""
    flite_voices = festival_voices = None
    for voice in voices:
        if voice.engine == "flite":
            if flite_voices is None:
                flite_voices = tools.run([tools.program("flite"), "-lv"]).stdout.split(":", 1)[-1].split()
            if voice.name not in flite_voices:
                raise ValueError(f"flite has no voice {voice.name!r} (it has: {' '.join(flite_voices)})")
        elif voice.engine == "festival":
            if festival_voices is None:
                festival_voices = festival_voice_list(tools)
            if voice.name not in festival_voices:
                package = FESTIVAL_VOICES.get(voice.name)
                hint = f"apt-get install {package}" if package else "see festival's (voice.list)"
                raise ValueError(f"festival has no voice {voice.name!r} (it has: "
                                 f"{' '.join(festival_voices)}); {hint}")
        else:
            probe = tools.run([tools.program("espeak-ng"), "-q", "-v", voice.name, "a"])
            if probe.returncode != 0:
                raise ValueError(f"espeak-ng has no voice {voice.name!r} ({probe.stderr.strip()}); "
                                 "see espeak-ng --voices=en and --voices=variant")


# ---------------------------------------------------------------------------------------------
# Synthesis and augmentation


def synthesize(voice: Voice, text: str, speed: float, work_dir: Path, semitones: float = 0.0,
               tools: Tools = Tools(), sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One utterance as float32 mono at sample_rate (espeak-ng speaks at 22.05 kHz, flite's kal
    at 8 kHz, festival's HTS voice at 32 kHz, the others at 16 kHz: all are resampled here).
    A pitch shift asks for a rate 2^(semitones/12) times slower and resamples to that much
    fewer samples, so that played at sample_rate the audio is that much faster and higher."""
    shift = 2 ** (semitones / 12)
    # A multiple of 50 Hz keeps the resampling ratio small (e.g. 22050 -> 14250 is 95/147).
    rate = sample_rate if semitones == 0 else round(sample_rate / shift / 50) * 50
    with tempfile.NamedTemporaryFile(suffix=".wav", dir=work_dir) as tmp:
        argv, stdin = tools.command(voice, text, speed / shift, Path(tmp.name))
        result = tools.run(argv, stdin)
        # festival reports a Scheme error on stderr and still exits with 0.
        if result.returncode != 0 or "SIOD ERROR" in result.stderr:
            raise RuntimeError(f"{voice} failed on {text!r} (exit {result.returncode}): "
                               f"{result.stderr.strip()}")
        audio = load_audio(tmp.name, f"{voice} output for {text!r}", rate)
    if len(audio) < sample_rate // 10:
        raise RuntimeError(f"{voice} produced {len(audio)} samples for {text!r}: too short to be speech")
    return audio


def add_noise(audio: np.ndarray, snr_db: float, colour: str, seed: int) -> np.ndarray:
    """audio plus Gaussian noise (white, or pink: power falling as 1/f) at snr_db below the
    utterance's mean power, scaled down together if the sum would clip."""
    noise = np.random.default_rng(seed).standard_normal(len(audio))
    if colour == "pink":
        spectrum = np.fft.rfft(noise)
        spectrum[0] = 0
        spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
        noise = np.fft.irfft(spectrum, len(audio))
    power = np.mean(audio.astype(np.float64) ** 2)
    noise *= np.sqrt(power / 10 ** (snr_db / 10) / np.mean(noise ** 2))
    mixed = audio + noise
    peak = np.abs(mixed).max()
    return (mixed * (0.99 / peak if peak > 0.99 else 1.0)).astype(np.float32)


def _write_utterance(utt: PlannedUtterance, root: Path, work_dir: Path, tools: Tools) -> bool:
    """Synthesise and write one FLAC unless it exists already; True when written."""
    path = utt.flac_path(root)
    if path.exists():
        return False
    audio = synthesize(Voice.parse(utt.voice), utt.spoken, utt.speed, work_dir, utt.semitones, tools)
    if utt.noise:
        audio = add_noise(audio, utt.snr_db, utt.noise, utt.noise_seed)
    atomic_write_bytes(path, lambda f: sf.write(f, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16"))
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
    FLAC files (the parameters' counts, or for an hours target the planned ones meta.json
    records), and each chapter folder has a transcript listing exactly its FLAC files. Only
    names are compared (cheap); the audio is not decoded."""
    if meta.get("complete") is not True:
        return False
    counts = config.counts()
    if config.hours:
        counts = meta.get("utterances")
        if not isinstance(counts, dict) or set(counts) != set(SPLITS):
            return False
    for split, count in counts.items():
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


def measured_hours(plan: list[PlannedUtterance], root: Path) -> dict[str, float]:
    """Hours of audio of each split, from the FLAC headers."""
    seconds = {s: 0.0 for s in SPLITS}
    for utt in plan:
        info = sf.info(str(utt.flac_path(root)))
        seconds[utt.split] += info.frames / info.samplerate
    return {s: round(v / 3600, 3) for s, v in seconds.items()}


def synthesize_corpus(out: str | os.PathLike, config: SynthConfig, workers: int | None = None,
                      progress: bool = True, tools: str | os.PathLike | None = None,
                      plan_only: bool = False) -> Path:
    """Write the corpus under `out` (out/<split>/<speaker>/<chapter>/..., meta.json,
    utterances.tsv) and return out; a complete corpus with these parameters is returned as it
    is. tools: a folder made by synthkit to run the synthesisers from (None: the installed ones).
    plan_only: write meta.json (not complete), utterances.tsv and the transcripts but no audio,
    so that what the corpus will say is known before it is spoken (the LM text that must leave
    out its test sentences can be made on a machine that will not synthesise it); a later call
    without it speaks the audio into the same folder."""
    config.validate()
    root = Path(out)
    existing = _prepare_folder(root, config)
    if existing is not None and is_complete(root, existing, config):
        log.info("the synthetic corpus in %s is complete (same parameters): reused as it is", root)
        return root
    if existing is not None:
        log.info("resuming the synthetic corpus in %s (same parameters)", root)
    kit = Tools(None if tools is None else Path(tools))
    if kit.root is not None:           # a wrong --tools folder is named before anything else
        log.info("synthesisers from the kit %s: %s", kit.root, ", ".join(kit.kit.get("engines", ())))
    named = resolve_voices(config, kit)
    voices = [Voice.parse(v) for v in (*named.voices, *named.heldout_voices)]
    ensure_tools(voices, kit, needs_wordnet=config.text == "wordnet")
    check_voices(voices, kit)
    if config.text == "digits":
        sentences = digit_string_pairs(DIGIT_STRINGS, config.min_words, config.max_words, config.seed)
    else:
        sentences = load_sentences(config.min_words, config.max_words, kit.wordnet_dir())
    plan = plan_corpus(named, sentences)
    speakers = {str(i + 1): v for i, v in enumerate((*named.voices, *named.heldout_voices))}
    if existing is not None and existing.get("speakers", speakers) != speakers:
        raise FileExistsError(f"{root} was started with other voices than the synthesisers {kit.where()} "
                              f"have now ({len(existing.get('speakers', {}))} there, {len(speakers)} "
                              "now); finish it where it was started, or choose a new --out")
    text_source = DIGITS_TEXT_SOURCE if config.text == "digits" else TEXT_SOURCE
    meta = {"params": config.params(), "text_source": text_source, "speakers": speakers,
            "chapters": {str(i + 1): s for i, s in enumerate(config.speeds)},
            "heldout_speakers": [k for k, v in speakers.items() if v in named.heldout_voices],
            **plan_summary(plan), "utterance_table": "utterances.tsv", "tools": kit.versions(),
            "complete": False}
    root.mkdir(parents=True, exist_ok=True)
    atomic_json_save(meta, root / "meta.json")
    write_utterance_table(plan, root / "utterances.tsv")
    if plan_only:
        _write_transcripts(plan, root)
        log.info("planned corpus in %s: %d utterances, no audio yet", root, len(plan))
        return root
    workers = workers or os.cpu_count() or 1
    written = 0
    # Threads suffice: the synthesisers are separate processes, and most of the rest is numpy.
    with tempfile.TemporaryDirectory(prefix=".synth-", dir=root) as work_dir, \
            ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(plan), desc="synth", unit="utt", disable=not progress) as bar:
        futures = [pool.submit(_write_utterance, u, root, Path(work_dir), kit) for u in plan]
        try:
            for future in as_completed(futures):
                written += future.result()
                bar.update()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    _write_transcripts(plan, root)
    hours = measured_hours(plan, root)
    atomic_json_save({**meta, "hours": hours, "complete": True}, root / "meta.json")
    log.info("synthetic corpus in %s: %d utterances, %.2f h of training speech (%d written now, "
             "%d already there)", root, len(plan), hours["train"], written, len(plan) - written)
    return root
