"""Pack a LibriSpeech-layout corpus into one small tar of Opus audio, and unpack it back to FLAC.

Why: the GPU machine has no speech synthesiser and at most 64 MiB travels with a call, while a
synthetic corpus of ten thousand utterances is about 400 MB of 16 kHz FLAC. Opus at libsndfile's
highest compression level (about 10 kbit/s for 16 kHz speech) makes it about 25 MB.

The codec is lossy: unpacked audio is not bit-identical to the original. Everything trained and
evaluated from one unpacked copy sees the same audio, and `meta.json` of the unpacked corpus
records the round trip under "transport", so results can say what they were measured on.

    pack:   <corpus>/<split>/<spk>/<chap>/*.flac + *.trans.txt + meta.json -> corpus.tar
    unpack: corpus.tar -> <out>/... (FLAC, 16-bit, the original sample rate)
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from conrwkv.io import atomic_json_save, atomic_write_bytes, parse_json, require_keys

log = logging.getLogger(__name__)

PACKED_SUFFIX = ".opus"
PACK_FORMAT_VERSION = 1
MANIFEST_NAME = "pack.json"
MANIFEST_KEYS = ("format_version", "codec", "compression_level", "utterances")


def _corpus_files(corpus: Path) -> tuple[list[Path], list[Path]]:
    """(audio files, other files to copy as they are) under `corpus`, relative, sorted."""
    if not corpus.is_dir():
        raise FileNotFoundError(f"corpus folder {corpus} does not exist")
    audio, other = [], []
    for path in sorted(corpus.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(corpus).parts):
            continue
        rel = path.relative_to(corpus)
        if path.suffix == ".flac":
            audio.append(rel)
        elif path.suffix in (".txt", ".json"):
            other.append(rel)
    if not audio:
        raise ValueError(f"corpus folder {corpus} holds no .flac files")
    return audio, other


def _encode_opus(path: Path, compression_level: float) -> bytes:
    samples, rate = sf.read(path, dtype="float32")
    if samples.ndim != 1 or not len(samples):
        raise ValueError(f"{path}: expected non-empty mono audio, got shape {samples.shape}")
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="OGG", subtype="OPUS", compression_level=compression_level)
    return buffer.getvalue()


def _encode_job(args: tuple[Path, float]) -> bytes:
    return _encode_opus(*args)


def pack_corpus(corpus: str | os.PathLike, out: str | os.PathLike, compression_level: float = 1.0,
                workers: int | None = None, progress: bool = True) -> Path:
    """Write every FLAC under `corpus` as Opus, plus its transcripts and meta.json, to the tar `out`."""
    corpus, out = Path(corpus), Path(out)
    if not 0.0 <= compression_level <= 1.0:
        raise ValueError(f"compression_level must be in [0, 1] (1: smallest), got {compression_level}")
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or choose another name")
    audio, other = _corpus_files(corpus)
    manifest = {"format_version": PACK_FORMAT_VERSION, "codec": "ogg/opus",
                "compression_level": compression_level, "utterances": len(audio)}
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with tarfile.open(tmp, "w") as tar, ProcessPoolExecutor(workers or os.cpu_count()) as pool:
            _add_bytes(tar, MANIFEST_NAME, json.dumps(manifest, indent=2).encode())
            for rel in other:
                tar.add(corpus / rel, arcname=str(rel))
            jobs = [(corpus / rel, compression_level) for rel in audio]
            encoded = pool.map(_encode_job, jobs, chunksize=32)
            for rel, data in tqdm(zip(audio, encoded), total=len(audio), desc="pack", unit="utt",
                                  disable=not progress):
                _add_bytes(tar, str(rel.with_suffix(PACKED_SUFFIX)), data)
    except BaseException:
        tmp.unlink(missing_ok=True)      # a half-written pack must not be mistaken for one
        raise
    os.replace(tmp, out)
    log.info("packed %d utterances of %s into %s (%.1f MB)", len(audio), corpus, out,
             out.stat().st_size / 1e6)
    return out


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _decode_to_flac(args: tuple[bytes, Path, str]) -> None:
    data, path, name = args
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    except (RuntimeError, sf.LibsndfileError) as err:
        raise ValueError(f"{name}: cannot decode the packed Opus audio: {err}") from err
    # Opus can overshoot full scale slightly; FLAC's 16-bit PCM would wrap, so clip.
    samples = np.clip(samples, -1.0, 1.0)
    atomic_write_bytes(path, lambda f: sf.write(f, samples, rate, format="FLAC", subtype="PCM_16"))


def unpack_corpus(pack: str | os.PathLike, out: str | os.PathLike, workers: int | None = None,
                  progress: bool = True) -> Path:
    """Extract `pack` (made by pack_corpus) to `out` with the audio decoded back to FLAC."""
    pack, out = Path(pack), Path(out)
    if not pack.is_file():
        raise FileNotFoundError(f"corpus pack {pack} does not exist")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; unpack into a new folder")
    try:
        tar = tarfile.open(pack, "r")
    except tarfile.TarError as err:
        raise ValueError(f"{pack} is not a tar file made by pack: {err}") from err
    with tar, ProcessPoolExecutor(workers or os.cpu_count()) as pool:
        members = tar.getmembers()
        names = {m.name for m in members}
        if MANIFEST_NAME not in names:
            raise ValueError(f"{pack} has no {MANIFEST_NAME}: it was not made by pack")
        manifest_source = f"{pack}:{MANIFEST_NAME}"
        manifest = parse_json(tar.extractfile(MANIFEST_NAME).read(), manifest_source, "pack manifest",
                              ("format_version",))
        if manifest.get("format_version") != PACK_FORMAT_VERSION:
            raise ValueError(f"{pack}: pack format {manifest.get('format_version')} is not the "
                             f"supported {PACK_FORMAT_VERSION}")
        require_keys(manifest, MANIFEST_KEYS, manifest_source, "pack manifest")
        # Every name and the corpus meta.json are checked before anything is written.
        for member in members:
            rel = Path(member.name)
            if rel.is_absolute() or ".." in rel.parts:
                raise ValueError(f"{pack}: unsafe member name {member.name!r}")
        meta = None
        if "meta.json" in names:
            meta = parse_json(tar.extractfile("meta.json").read(), f"{pack}:meta.json", "corpus meta.json")
        jobs = []
        for member in members:
            rel = Path(member.name)
            if not member.isfile() or member.name in (MANIFEST_NAME, "meta.json"):
                continue
            data = tar.extractfile(member).read()
            if rel.suffix == PACKED_SUFFIX:
                jobs.append((data, out / rel.with_suffix(".flac"), member.name))
            else:
                atomic_write_bytes(out / rel, lambda f, d=data: f.write(d))
        if len(jobs) != manifest["utterances"]:
            raise ValueError(f"{pack}: holds {len(jobs)} audio files, its {MANIFEST_NAME} says "
                             f"{manifest['utterances']} (truncated copy?)")
        for path in {p.parent for _, p, _ in jobs}:
            path.mkdir(parents=True, exist_ok=True)
        list(tqdm(pool.map(_decode_to_flac, jobs, chunksize=32), total=len(jobs), desc="unpack",
                  unit="utt", disable=not progress))
    # meta.json last: a corpus folder counts as complete only when it is there.
    transport = {"codec": manifest["codec"], "compression_level": manifest["compression_level"]}
    atomic_json_save({**(meta or {}), "transport": transport}, out / "meta.json")
    log.info("unpacked %d utterances from %s into %s", len(jobs), pack, out)
    return out
