"""The speech encoder of SLAM-ASR (Ma et al. 2024, "An Embarrassingly Simple Approach for LLM
with Strong ASR Capacity") and RWKV-ASR: a self-supervised HuggingFace model (HuBERT, wav2vec 2.0,
WavLM; base, large or xlarge; CTC-fine-tuned or not) that turns 16 kHz audio into 50 frames/s.

    encoder = SpeechEncoder("models/hubert-xlarge-ls960-ft")   # a local save_pretrained folder
    features, frame_counts = encoder([audio_a, audio_b])       # [B, F, D], LongTensor [B]

The folder's own feature extractor prepares the audio (RWKV-ASR hard-coded one extractor id for
every encoder). Each utterance is normalised on its own samples and the batch is padded with the
extractor's padding value, so an utterance's inputs never depend on its neighbours. The number
of valid frames comes from the model's own conv output-length formula applied to the true audio
lengths, never from the padded length.

Batching and padding: a batch is padded to its longest utterance, and whether the padding can
change an utterance's features depends on the model, not on its feature extractor. Only a
LayerNorm conv front end (config `feat_extract_norm == "layer"`: HuBERT, wav2vec2-large-lv60,
WavLM-large) fed an attention mask is exact under padding. A GroupNorm front end
(`feat_extract_norm == "group"`: wav2vec2-base, HuBERT-base, WavLM-base) normalises each channel
over the whole padded input, so every frame changes with the batch's longest utterance, mask or
no mask; and without a mask the transformer attends to the padded frames too. `batching`
(AsrConfig.encoder_batching) decides: "auto" batches the exact models and runs the others one
utterance at a time (exact, slower; logged at load), "batch" always batches (faster; a warning
at load says that it changes a non-exact model's outputs), "one_by_one" never batches.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..config import ENCODER_BATCHING
from ..data.speech.audio import SAMPLE_RATE

log = logging.getLogger(__name__)



def _looks_like_path(name: str) -> bool:
    """A hub id is `name` or `namespace/name`; anything else is meant as a folder on disk."""
    return (os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1
            or os.sep != "/" and os.sep in name)


def _load_pretrained(name: str, dtype: torch.dtype):
    from transformers import AutoFeatureExtractor, AutoModel

    folder = Path(name).expanduser()
    if folder.is_dir():
        for required in ("config.json", "preprocessor_config.json"):
            if not (folder / required).is_file():
                raise FileNotFoundError(
                    f"speech encoder folder {folder} has no {required}; save the model and its "
                    f"feature extractor there with save_pretrained(folder)")
        source, local = str(folder), True
    elif folder.exists():
        raise NotADirectoryError(f"speech encoder {folder} is a file; give the folder that holds "
                                 f"config.json and preprocessor_config.json")
    elif _looks_like_path(name):
        raise FileNotFoundError(f"speech encoder folder {folder} does not exist")
    else:
        source, local = name, False
    try:
        model = AutoModel.from_pretrained(source, local_files_only=local, dtype=dtype)
        extractor = AutoFeatureExtractor.from_pretrained(source, local_files_only=local)
    except OSError as err:
        raise FileNotFoundError(
            f"speech encoder {name!r}: no folder {folder.resolve()} exists, and the HuggingFace hub "
            f"could not provide it as a model id (offline? wrong id?): {err}") from err
    return model, extractor


def exact_under_padding(model_config, uses_attention_mask: bool) -> bool:
    """Whether padded batches leave each utterance's features as they are alone: a LayerNorm conv
    front end fed an attention mask (see the module docstring for why nothing else is)."""
    return getattr(model_config, "feat_extract_norm", None) == "layer" and uses_attention_mask


class SpeechEncoder(nn.Module):
    def __init__(self, name: str, trainable: bool = False, dtype: torch.dtype = torch.float32,
                 batching: str = "auto"):
        """Load the encoder `name` (a local folder, or a hub id when online) with its own feature
        extractor. Frozen by default: no gradients and always in eval mode, so dropout, LayerDrop
        and SpecAugment masking stay off even while the parent module trains. `batching`: auto,
        batch or one_by_one (module docstring)."""
        super().__init__()
        if not name:
            raise ValueError("speech encoder: no folder given (AsrConfig.encoder / --encoder is empty)")
        if batching not in ENCODER_BATCHING:
            raise ValueError(f"speech encoder: batching must be one of {ENCODER_BATCHING}, got {batching!r}")
        self.name = name
        self.model, self.extractor = _load_pretrained(name, dtype)
        if not hasattr(self.model, "_get_feat_extract_output_lengths"):
            raise ValueError(f"speech encoder {name!r} is a {type(self.model).__name__}; only "
                             f"wav2vec 2.0-family encoders (HuBERT, wav2vec 2.0, WavLM) are supported")
        if "input_values" not in self.extractor.model_input_names:
            raise ValueError(f"speech encoder {name!r}: its feature extractor "
                             f"{type(self.extractor).__name__} does not produce raw input_values")
        if self.extractor.sampling_rate != SAMPLE_RATE:
            raise ValueError(f"speech encoder {name!r} expects {self.extractor.sampling_rate} Hz "
                             f"audio; this project feeds {SAMPLE_RATE} Hz")
        self.trainable = trainable
        self.uses_attention_mask = bool(self.extractor.return_attention_mask)
        self.exact_when_batched = exact_under_padding(self.model.config, self.uses_attention_mask)
        self.batched = batching == "batch" or (batching == "auto" and self.exact_when_batched)
        if not self.exact_when_batched:
            why = (f"feat_extract_norm={getattr(self.model.config, 'feat_extract_norm', None)!r}, "
                   f"attention mask {'on' if self.uses_attention_mask else 'off'}")
            if self.batched:
                log.warning("speech encoder %s (%s): padding changes its outputs, and encoder_batching="
                            "batch runs it in padded batches anyway: an utterance's features depend on "
                            "the other utterances of its batch", name, why)
            else:
                log.info("speech encoder %s (%s): padding would change its outputs, so each utterance "
                         "runs alone (encoder_batching=%s; 'batch' is faster but not exact)", name, why,
                         batching)
        self.model.requires_grad_(trainable)
        self.train(False)

    @property
    def output_dim(self) -> int:
        config = self.model.config
        # wav2vec 2.0 with an adapter stack ends at the adapter's width, not the transformer's.
        return config.output_hidden_size if getattr(config, "add_adapter", False) else config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def train(self, mode: bool = True) -> SpeechEncoder:
        super().train(mode)
        if not self.trainable:
            self.model.eval()
        return self

    def frame_counts(self, num_samples: Tensor) -> Tensor:
        """Encoder frames whose receptive field lies inside the audio, by the model's own formula."""
        return self.model._get_feat_extract_output_lengths(num_samples).long()

    def forward(self, audio: list[np.ndarray]) -> tuple[Tensor, Tensor]:
        """audio: float32 16 kHz mono arrays. Returns (features [B, F, D], frame_counts [B])."""
        values = self._prepare(audio)
        lengths = torch.tensor([len(v) for v in values], dtype=torch.long)
        counts = self.frame_counts(lengths)
        too_short = (counts < 1).nonzero().flatten().tolist()
        if too_short:
            raise ValueError(f"speech encoder: audio item(s) {too_short} are too short "
                             f"({[len(values[i]) for i in too_short]} samples) for one encoder frame")
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            # Utterances of one length need no padding, so a batch of them is exact for any model.
            if self.batched or len(set(lengths.tolist())) == 1:
                features = self._encode(values)
            else:
                features = self._encode_one_by_one(values, int(counts.max()))
        return features, counts.to(features.device)

    def _prepare(self, audio: list[np.ndarray]) -> list[np.ndarray]:
        if not isinstance(audio, (list, tuple)) or not audio:
            raise ValueError("speech encoder: audio must be a non-empty list of 1-d float32 arrays")
        values = []
        for i, wave in enumerate(audio):
            wave = np.asarray(wave)
            if wave.ndim != 1 or not np.issubdtype(wave.dtype, np.floating):
                raise ValueError(f"speech encoder: audio item {i} has shape {wave.shape} and dtype "
                                 f"{wave.dtype}; expected 1-d float mono samples at {SAMPLE_RATE} Hz")
            # One utterance per call: normalisation sees only its own samples, never the padding.
            prepared = self.extractor(wave.astype(np.float32, copy=False), sampling_rate=SAMPLE_RATE,
                                      return_attention_mask=False)["input_values"][0]
            values.append(np.asarray(prepared, dtype=np.float32))
        return values

    def _encode(self, values: list[np.ndarray]) -> Tensor:
        longest = max(len(v) for v in values)
        batch = np.full((len(values), longest), self.extractor.padding_value, dtype=np.float32)
        mask = np.zeros((len(values), longest), dtype=np.int64)
        for i, v in enumerate(values):
            batch[i, :len(v)] = v
            mask[i, :len(v)] = 1
        dtype = next(self.model.parameters()).dtype
        inputs = torch.from_numpy(batch).to(self.device, dtype)
        attention_mask = torch.from_numpy(mask).to(self.device) if self.uses_attention_mask else None
        return self.model(inputs, attention_mask=attention_mask).last_hidden_state

    def _encode_one_by_one(self, values: list[np.ndarray], frames: int) -> Tensor:
        rows = []
        for v in values:
            out = self._encode([v])[0]
            rows.append(torch.cat([out, out.new_zeros(frames - out.shape[0], out.shape[1])]))
        return torch.stack(rows)
