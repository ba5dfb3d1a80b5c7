"""Tiny audio corpora written by the tests: sine tones in FLAC/WAV, a LibriSpeech-layout folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

# (speaker, chapter, utterance, transcript, seconds)
LIBRISPEECH_UTTERANCES = (
    (19, 198, 0, "NORTHANGER ABBEY", 0.50),
    (19, 198, 1, "THIS LITTLE WORK WAS FINISHED IN THE YEAR EIGHTEEN O THREE", 1.25),
    (19, 227, 0, "IT WAS NOT LONG BEFORE HE CAME", 0.75),
    (26, 495, 0, "THE CAT'S WHISKERS", 0.30),
    (26, 495, 1, "AND SO ON", 1.00),
)


def tone(seconds: float, rate: int = 16000, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    """A sine tone, [frames] or [frames, channels] with channel c at amplitude 0.5 / (c + 1)."""
    t = np.arange(round(seconds * rate)) / rate
    wave = np.sin(2 * np.pi * freq * t).astype(np.float32)
    if channels == 1:
        return 0.5 * wave
    return np.stack([0.5 / (c + 1) * wave for c in range(channels)], axis=1)


def write_tone(path: Path, seconds: float, rate: int = 16000, freq: float = 440.0,
               channels: int = 1) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = tone(seconds, rate, freq, channels)
    sf.write(str(path), samples, rate)
    return samples


def utt_id(speaker: int, chapter: int, utterance: int) -> str:
    return f"{speaker}-{chapter}-{utterance:04d}"


def make_librispeech(root: Path, split: str = "test-clean") -> Path:
    """root/LibriSpeech/<split>/<speaker>/<chapter>/ with FLAC tones and .trans.txt; returns the
    split folder. Each utterance's tone has its own frequency, so files can be told apart."""
    split_dir = root / "LibriSpeech" / split
    lines: dict[Path, list[str]] = {}
    for i, (speaker, chapter, utt, text, seconds) in enumerate(LIBRISPEECH_UTTERANCES):
        folder = split_dir / str(speaker) / str(chapter)
        write_tone(folder / f"{utt_id(speaker, chapter, utt)}.flac", seconds, freq=200.0 + 100 * i)
        lines.setdefault(folder / f"{speaker}-{chapter}.trans.txt", []).append(
            f"{utt_id(speaker, chapter, utt)} {text}")
    for path, entries in lines.items():
        path.write_text("\n".join(entries) + "\n")
    return split_dir


def save_dataset_dict(folder: Path, splits: tuple[str, ...], text_column: str = "text",
                      seconds: float = 0.1) -> Path:
    """A `datasets` DatasetDict saved with save_to_disk in `folder`: every split one row, a path
    to a tone and the transcript HELLO under `text_column`."""
    import datasets

    audio = folder.parent / f"{folder.name}-tone.flac"
    write_tone(audio, seconds)
    table = datasets.Dataset.from_dict({"audio": [str(audio)], text_column: ["HELLO"]})
    datasets.DatasetDict({split: table for split in splits}).save_to_disk(str(folder))
    return folder


def dataset2_cli():
    """The repository's dataset2.py as a module (it sits at the root, outside the package)."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "dataset2.py"
    spec = importlib.util.spec_from_file_location("dataset2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
