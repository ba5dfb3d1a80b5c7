"""The oracle-prefix probe (--oracle_prefix): the transcript's own token embeddings in place of
the projected speech.

    [emb(transcript)][emb(separator)] -> RWKV-6 (frozen, trained time_state / conv) -> transcript, 0

A projector can at best hand the LLM what the transcript holds, as embeddings the LLM reads; here
it gets exactly the embeddings the LLM was trained on, so the LLM (steered by its trained state,
with or without the conv) has only to copy its prefix. The oracle's WER is therefore a floor for
any speech run with the same LLM and adapters. If the oracle learns to copy and a speech run does
not, the fault lies upstream (encoder, projector, data); if the oracle cannot copy either, the
LLM half cannot be steered this way (or has a bug), whatever the projector.

--oracle_noise and --oracle_dropout make the copy harder, so the probe can also measure how
clean a prefix must be. They act in training and evaluation alike, so a score measures the model
on the inputs it was trained for. In training every step draws fresh noise (torch's generator,
seeded by --seed at the start). In eval mode (validation, --op eval) each utterance draws from a
generator seeded by its transcript's token ids, on the CPU: a score is reproducible, the same in
any batch and on any device, and two noise levels see the same draw, scaled.

No rescaling by 1 / (1 - p) follows the dropout: a dropped token is information removed from the
prefix, not an activation to keep unbiased.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from torch import Tensor, nn

from ..config import AsrConfig

# The settings of the probe: the record keeps them (plan.TRAINED_AS), eval's summary shows them.
ORACLE_FIELDS = ("oracle_prefix", "oracle_noise", "oracle_dropout")


class OraclePrefix:
    """Turns transcripts into prefix embeddings, with the noise and dropout of the probe."""

    def __init__(self, noise: float = 0.0, dropout: float = 0.0):
        if not noise >= 0:                         # also refuses NaN
            raise ValueError(f"--oracle_noise must be >= 0 (a multiple of each embedding's RMS), "
                             f"got {noise}")
        if not 0 <= dropout < 1:
            raise ValueError(f"--oracle_dropout must be in [0, 1) (the probability that a prefix "
                             f"token is zeroed), got {dropout}")
        self.noise, self.dropout = float(noise), float(dropout)

    @classmethod
    def from_config(cls, asr: AsrConfig) -> OraclePrefix | None:
        """The probe that `asr` asks for, or None without --oracle_prefix."""
        if not asr.oracle_prefix:
            given = [f"--{name} {getattr(asr, name):g}" for name in ORACLE_FIELDS[1:] if getattr(asr, name)]
            if given:
                # A silent no-op would make a clean run look like a noisy probe.
                raise ValueError(f"{' and '.join(given)} act only on the oracle prefix: add "
                                 f"--oracle_prefix, or leave them out")
            return None
        if asr.encoder_trainable:
            raise ValueError("--oracle_prefix feeds no speech, so no encoder is loaded: leave out "
                             "--encoder_trainable")
        return cls(asr.oracle_noise, asr.oracle_dropout)

    def embed(self, emb: nn.Embedding, targets: list[list[int]], training: bool) -> list[Tensor]:
        """One [T_i, n_embd] prefix per transcript: its token embeddings, noised and dropped."""
        device = emb.weight.device
        prefixes = []
        for ids in targets:
            x = emb(torch.tensor(list(ids), dtype=torch.long, device=device))
            if self.noise or self.dropout:
                x = self._corrupt(x, ids, training)
            prefixes.append(x)
        return prefixes

    def _corrupt(self, x: Tensor, ids: list[int], training: bool) -> Tensor:
        shape = x.shape
        if training:
            noise = torch.randn(shape, device=x.device)
            keep = torch.rand(shape[0], device=x.device) >= self.dropout
        else:
            generator = torch.Generator().manual_seed(zlib.crc32(np.asarray(ids, dtype=np.int64).tobytes()))
            # Both draws always, in this order: a dropout mask does not depend on the noise level.
            noise = torch.randn(shape, generator=generator).to(x.device)
            keep = (torch.rand(shape[0], generator=generator) >= self.dropout).to(x.device)
        rms = x.float().pow(2).mean(-1, keepdim=True).sqrt()
        noisy = x.float() + self.noise * rms * noise
        return (noisy * keep[:, None]).to(x.dtype)


def oracle_label(asr: AsrConfig) -> str:
    """The probe's part of an eval folder name: oracle[-noise<s>][-drop<p>]."""
    parts = ["oracle"]
    if asr.oracle_noise:
        parts.append(f"noise{asr.oracle_noise:g}")
    if asr.oracle_dropout:
        parts.append(f"drop{asr.oracle_dropout:g}")
    return "-".join(parts)
