"""Audio for RWKV-ASR: any file or bytes soundfile decodes, as 16 kHz mono float32 numpy.

Multi-channel audio is averaged to mono and other rates are resampled with
scipy.signal.resample_poly (a polyphase FIR filter; torchaudio does not import beside the
project's torch). A missing, empty or undecodable file raises AudioError, naming the file and the
problem; the readers above it skip such a file only when the user asked for that.
"""

from __future__ import annotations

import io
from math import gcd
from pathlib import Path
from typing import Protocol

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

SAMPLE_RATE = 16000
# What soundfile (libsndfile >= 1.1) decodes and the tools look for, in the order LibriSpeech-style
# folders are searched for an utterance's file.
AUDIO_SUFFIXES = (".flac", ".wav", ".mp3", ".ogg", ".opus")


class AudioError(ValueError):
    """An audio file that cannot be used: missing, empty, or not decodable."""


class StoredAudio(Protocol):
    """Audio kept elsewhere and read on demand (a row of a saved dataset, corpora.ArrowAudio)."""

    name: str

    def read(self) -> bytes | str: ...


AudioSource = str | bytes | StoredAudio


def checked_source(audio: AudioSource, name: str) -> tuple[io.BytesIO | str, str]:
    """Check that the audio exists and is not empty; return something soundfile opens."""
    if hasattr(audio, "read"):                  # audio kept inside a dataset (corpora.ArrowAudio)
        audio = audio.read()
    if isinstance(audio, (bytes, bytearray, memoryview)):
        if len(audio) == 0:
            raise AudioError(f"audio {name} is empty (0 bytes)")
        return io.BytesIO(bytes(audio)), name
    path = Path(audio)
    if not path.is_file():
        raise AudioError(f"audio file {path} is missing")
    if path.stat().st_size == 0:
        raise AudioError(f"audio file {path} is empty (0 bytes)")
    return str(path), str(path)


def audio_duration(audio: AudioSource, name: str | None = None) -> float:
    """Duration in seconds from the file header (soundfile.info), without decoding samples."""
    source, name = checked_source(audio, name or _default_name(audio))
    try:
        info = sf.info(source)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"audio {name} cannot be read as audio: {err}") from err
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError(f"audio {name} contains no samples")
    return info.frames / info.samplerate


def load_audio(audio: AudioSource, name: str | None = None, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode to a 1-D float32 array at `sample_rate`: channels averaged, other rates resampled."""
    source, name = checked_source(audio, name or _default_name(audio))
    try:
        samples, rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"audio {name} cannot be decoded: {err}") from err
    if samples.shape[0] == 0:
        raise AudioError(f"audio {name} contains no samples")
    if not np.isfinite(samples).all():
        raise AudioError(f"audio {name} contains NaN or infinite samples (corrupt float data)")
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    return resample(mono, rate, sample_rate)


def resample(samples: np.ndarray, rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling by the reduced ratio target/rate; output length ceil(n * target / rate)."""
    if rate == target_rate:
        return np.ascontiguousarray(samples, dtype=np.float32)
    common = gcd(int(rate), int(target_rate))
    out = resample_poly(samples.astype(np.float64), target_rate // common, int(rate) // common)
    return out.astype(np.float32)


def _default_name(audio: AudioSource) -> str:
    if hasattr(audio, "read"):
        return audio.name
    return "<audio bytes>" if isinstance(audio, (bytes, bytearray, memoryview)) else str(audio)
