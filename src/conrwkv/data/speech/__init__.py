"""Speech data for RWKV-ASR, one concept per module:

- audio.py: decoding any file or bytes to 16 kHz mono float32, with clear errors;
- corpora.py: LibriSpeech folders, saved HF datasets and JSONL manifests as one list of
  utterances, their splits, duration filters and bad-audio handling;
- manifest.py: writing a corpus as a JSONL manifest;
- batching.py: the dataset, the batch format and length-bucketed, sharded, resumable batches.
"""

from .audio import AUDIO_SUFFIXES, SAMPLE_RATE, AudioError, audio_duration, load_audio, resample
from .batching import LengthBucketBatchSampler, SpeechDataset, collate_speech
from .corpora import (
    ArrowAudio,
    CorpusCounts,
    Utterance,
    check_audio,
    corpus_splits,
    detect_format,
    filter_by_duration,
    load_corpus,
    load_corpus_with_counts,
    load_disk_dataset,
    load_librispeech,
    load_manifest,
)
from .manifest import write_manifest

__all__ = [
    "AUDIO_SUFFIXES", "SAMPLE_RATE", "ArrowAudio", "AudioError", "CorpusCounts",
    "LengthBucketBatchSampler", "SpeechDataset", "Utterance", "audio_duration", "check_audio",
    "collate_speech", "corpus_splits", "detect_format", "filter_by_duration", "load_audio",
    "load_corpus", "load_corpus_with_counts", "load_disk_dataset", "load_librispeech",
    "load_manifest", "resample", "write_manifest",
]
