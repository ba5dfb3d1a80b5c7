"""Builders for tiny speech models that the ASR tests make themselves (nothing is downloaded):
HuBERT / HuBERT-CTC / wav2vec 2.0 folders saved with save_pretrained beside their own feature
extractor, random audio, and a tiny SpeechRWKV on a random official-format RWKV checkpoint."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from factories import random_checkpoint

from conrwkv.asr import SpeechRWKV
from conrwkv.config import AsrConfig


@contextlib.contextmanager
def one_torch_thread():
    """Run tiny models on one thread: their ops are so small that a second OpenMP thread only adds
    synchronisation, and on a shared, busy 2-core machine it made these tests up to 7x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# The real 7-layer conv front end (320x down-sampling: 50 frames/s at 16 kHz) at a tiny width.
_TINY_ENCODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


def _save_extractor(folder: Path, attention_mask: bool) -> None:
    from transformers import Wav2Vec2FeatureExtractor

    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=attention_mask).save_pretrained(folder)


def tiny_hubert_folder(folder: Path, seed: int = 0, ctc: bool = False) -> Path:
    """A HuBERT (LayerNorm conv front end, takes an attention mask) or a HubertForCTC folder."""
    from transformers import HubertConfig, HubertForCTC, HubertModel

    config = HubertConfig(**_TINY_ENCODER, feat_extract_norm="layer", vocab_size=32)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = HubertForCTC(config) if ctc else HubertModel(config)
    model.save_pretrained(folder)
    _save_extractor(folder, attention_mask=True)
    return folder


def tiny_wav2vec2_folder(folder: Path, seed: int = 0, attention_mask: bool = False) -> Path:
    """A wav2vec2-base style folder: GroupNorm conv front end, extractor without attention mask
    (attention_mask=True: one that returns a mask, as WavLM-base's does)."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(**_TINY_ENCODER, feat_extract_norm="group")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Wav2Vec2Model(config)
    model.save_pretrained(folder)
    _save_extractor(folder, attention_mask=attention_mask)
    return folder


def random_audio(seconds: list[float], seed: int = 0) -> list[np.ndarray]:
    """Noise-like float32 16 kHz waveforms of the given durations."""
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in seconds]


def tiny_speech_rwkv(tmp_path: Path, conv_kernel: int = 0, projector: str = "linear",
                     encoder_trainable: bool = False, seed: int = 0, **asr) -> SpeechRWKV:
    """A SpeechRWKV on a tiny HuBERT and a random 2-layer RWKV-6 (vocab 97, n_embd 32).

    The separator "#" is World token 36, inside the tiny vocabulary."""
    encoder = tmp_path / "encoder"
    if not encoder.exists():
        tiny_hubert_folder(encoder, seed=seed)
    llm_path = tmp_path / f"llm-{seed}.pth"
    if not llm_path.exists():
        random_checkpoint(llm_path, seed=seed, vocab_size=97, n_embd=32, head_size=16)
    config = AsrConfig(encoder=str(encoder), encoder_trainable=encoder_trainable, projector=projector,
                       projector_hidden=48, **asr)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return SpeechRWKV.from_pretrained(llm_path, config, conv_kernel=conv_kernel)
