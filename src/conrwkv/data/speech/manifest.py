"""JSONL manifests of a speech corpus: one {"id", "audio", "text", "duration"} per line, which
corpora.load_manifest reads back; audio stored inside a dataset is written out beside it."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import soundfile as sf

from conrwkv.io import atomic_write_bytes

from .audio import AudioError
from .corpora import ArrowAudio, Utterance


def write_manifest(utterances: Sequence[Utterance], path: str | os.PathLike) -> Path:
    """Write a JSONL manifest (id, audio, text, duration). Audio paths under the manifest's folder
    are stored relative to it, others absolute. Audio held as bytes (HF datasets) is written,
    as stored, to `<manifest stem>_audio/<id>.<format>` beside the manifest."""
    path = Path(path).resolve()
    audio_dir = path.parent / f"{path.stem}_audio"
    lines = []
    for utt in utterances:
        if utt.duration is None:
            raise ValueError(f"utterance {utt.id} has no duration; run check_audio first")
        audio = utt.audio.read() if isinstance(utt.audio, ArrowAudio) else utt.audio
        if isinstance(audio, str):
            audio_path = Path(audio).resolve()
        else:
            audio_path = _export_audio_bytes(audio, audio_dir, utt)
        stored = (audio_path.relative_to(path.parent) if audio_path.is_relative_to(path.parent)
                  else audio_path)
        lines.append(json.dumps({"id": utt.id, "audio": str(stored), "text": utt.text,
                                 "duration": round(utt.duration, 4)}, ensure_ascii=False))
    text = "".join(line + "\n" for line in lines)
    return atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def _export_audio_bytes(data: bytes, folder: Path, utt: Utterance) -> Path:
    try:
        file_format = sf.info(io.BytesIO(data)).format
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"audio {utt.audio_name} cannot be read as audio: {err}") from err
    target = folder / f"{utt.id}.{file_format.lower()}"
    atomic_write_bytes(target, lambda f: f.write(data))
    return target
