"""Speech recognition with a state-tuned RWKV-6: the SLAM-ASR recipe (Ma et al. 2024, "An
Embarrassingly Simple Approach for LLM with Strong ASR Capacity") with the LLM adapted by state
tuning as in RWKV-ASR, optionally with Con-RWKV's causal convolution.

    audio -> SpeechEncoder (frozen) -> Projector -> [speech embeddings][emb("#")] -> RWKV-6 -> text, 0

The layout is prompt-free like RWKV-ASR: the separator ("#" by default) follows the speech, the
transcript follows the separator and token 0 (end of text in the World vocabulary) ends it. The
LLM is frozen except every layer's initial WKV state `time_state` and, when the conv is on, the
Con-RWKV conv branches; the projector is trained; the encoder only when asked. Two comparison arms
train the LLM's own weights too (llm_train): peft LoRA adapters on its linear layers, or the
whole LLM. The oracle-prefix probe (oracle.py) puts the transcript's own embeddings in place of
the speech, and then has no encoder or projector at all.

The loss is the mean cross-entropy over transcript tokens and the end token only; audio and
separator positions are never counted (RWKV-ASR divided by a count that included the audio, so its
loss shrank with longer audio). Each batch row is built as its own [speech][sep][text] sequence
and right-padded: the model is causal, so padding after a row cannot change its earlier positions,
and an utterance contributes the same summed loss whatever its neighbours.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from ..config import LLM_TRAIN, LORA_TARGETS, X070_LORA_TARGETS, AsrConfig
from ..data.tokenizer import END_OF_TEXT
from ..io import atomic_torch_save
from ..model import RWKV
from ..model.official_format import ADAPTER_SUFFIXES
from .encoder import SpeechEncoder
from .oracle import OraclePrefix
from .projector import Projector


def lora_targets_for(flag: str, arch: str) -> tuple[str, ...]:
    """The linear layers --lora_targets names for an LLM of `arch`: the default (every linear
    layer of an RWKV-6 block) means every linear layer of the LLM's own block architecture."""
    targets = tuple(t.strip() for t in flag.split(",") if t.strip())
    return X070_LORA_TARGETS if arch == "x070" and targets == LORA_TARGETS else targets


class SpeechRWKV(nn.Module):
    def __init__(self, encoder: SpeechEncoder | None, projector: Projector | None, llm: RWKV,
                 separator_ids: list[int], eot_id: int = END_OF_TEXT, train_state: bool = True, *,
                 llm_train: str = "frozen", lora_rank: int = 8, lora_alpha: int = 16,
                 lora_dropout: float = 0.0, lora_targets: tuple[str, ...] = LORA_TARGETS,
                 oracle: OraclePrefix | None = None):
        """Wire the parts together and freeze what state tuning keeps fixed.

        `llm` must have been built with state_tuning=True (and conv_kernel > 0 for Con-RWKV).
        train_state=False keeps the initial states frozen (at what the checkpoint holds, zero
        for a plain World model): the projector-only baseline of SLAM-ASR. llm_train "lora"
        adds peft LoRA adapters (rank, alpha, dropout) to the linear layers named by
        `lora_targets` and trains them; "full" trains every LLM weight. With an `oracle` the
        prefix is the transcript, and encoder and projector must be None."""
        super().__init__()
        if not llm.config.state_tuning:
            raise ValueError("SpeechRWKV: the LLM has no time_state; build it with state_tuning=True "
                             "(RWKV.from_checkpoint(path, state_tuning=True))")
        n_embd, vocab = llm.config.n_embd, llm.config.vocab_size
        if oracle is not None:
            if encoder is not None or projector is not None:
                raise ValueError("SpeechRWKV: the oracle prefix replaces the encoder and the "
                                 "projector; pass None for both")
        elif projector.input_dim != encoder.output_dim:
            raise ValueError(f"SpeechRWKV: projector takes {projector.input_dim}-d frames but the "
                             f"encoder {encoder.name!r} gives {encoder.output_dim}-d ones")
        elif projector.mlp[-1].out_features != n_embd:
            raise ValueError(f"SpeechRWKV: projector outputs {projector.mlp[-1].out_features}-d "
                             f"embeddings but the LLM has n_embd = {n_embd}")
        if not separator_ids or any(not 0 <= int(i) < vocab for i in separator_ids):
            raise ValueError(f"SpeechRWKV: separator ids {list(separator_ids)} must be non-empty and "
                             f"inside the LLM vocabulary [0, {vocab})")
        if not 0 <= eot_id < vocab:
            raise ValueError(f"SpeechRWKV: end-of-text id {eot_id} is outside the vocabulary [0, {vocab})")
        self.encoder = encoder
        self.projector = projector
        self.llm = llm
        self.oracle = oracle
        self.eot_id = eot_id
        self.train_state = train_state
        self.register_buffer("separator_ids", torch.tensor([int(i) for i in separator_ids]),
                             persistent=False)
        if llm_train not in LLM_TRAIN:
            raise ValueError(f"--llm_train must be one of {', '.join(LLM_TRAIN)}, got {llm_train!r}")
        self.llm_train = llm_train
        self.llm.requires_grad_(False)
        if llm_train == "lora":
            self._add_lora(lora_rank, lora_alpha, lora_dropout, lora_targets)
        for _, param in (*self._llm_adapters(), *self._llm_weights()):
            # A bf16 LLM still trains its state, conv, LoRA matrices or weights in fp32: their
            # updates are too small for bf16 to hold.
            param.data = param.data.float()
            param.requires_grad_(True)
        if projector is not None:
            self.projector.float().requires_grad_(True)
        elif next(self._llm_adapters(), None) is None and llm_train == "frozen":
            raise ValueError("--oracle_prefix trains no projector, and --no-train_state without "
                             "--conv_kernel or --llm_train leaves nothing else to train")

    @classmethod
    def from_pretrained(cls, llm_path: str | os.PathLike, asr: AsrConfig, conv_kernel: int = 0, *,
                        n_layer: int | None = None, n_embd: int | None = None,
                        llm_dtype: torch.dtype | None = None,
                        encoder_dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu", tokenizer=None,
                        **llm_options) -> SpeechRWKV:
        """Build encoder, projector and LLM from an official RWKV `.pth` and an AsrConfig.

        n_layer / n_embd, when given, are checked against the file (a mismatch names the key).
        `llm_dtype` defaults to the file's dtype; `llm_options` are further ModelConfig fields
        (wkv_backend, grad_cp). `tokenizer` (default: the World tokenizer) encodes the separator."""
        if conv_kernel < 0:
            raise ValueError(f"conv_kernel must be >= 0 (0 = off), got {conv_kernel}")
        shape = {k: v for k, v in (("n_layer", n_layer), ("n_embd", n_embd)) if v is not None}
        oracle = OraclePrefix.from_config(asr)     # a bad --oracle_* fails before the LLM loads
        if conv_kernel:
            llm_options["conv_kernel"] = conv_kernel
        llm = RWKV.from_checkpoint(llm_path, dtype=llm_dtype, device=device, state_tuning=True,
                                    **shape, **llm_options)
        encoder = projector = None                 # the oracle reads no speech: nothing to load
        if oracle is None:
            encoder = SpeechEncoder(asr.encoder, trainable=asr.encoder_trainable, dtype=encoder_dtype,
                                    batching=asr.encoder_batching)
            projector = Projector(encoder.output_dim, llm.config.n_embd, hidden=asr.projector_hidden,
                                  downsample=asr.downsample, kind=asr.projector)
        if tokenizer is None:
            from ..data.tokenizer import WorldTokenizer
            tokenizer = WorldTokenizer()
        separator_ids = tokenizer.encode(asr.separator)
        if not separator_ids:
            raise ValueError(f"AsrConfig.separator {asr.separator!r} encodes to no tokens")
        return cls(encoder, projector, llm, separator_ids, train_state=asr.train_state,
                   llm_train=asr.llm_train, lora_rank=asr.lora_rank, lora_alpha=asr.lora_alpha,
                   lora_dropout=asr.lora_dropout,
                   lora_targets=lora_targets_for(asr.lora_targets, llm.config.arch),
                   oracle=oracle).to(device)

    # ---------------------------------------------------------------- what is trained
    def _add_lora(self, rank: int, alpha: int, dropout: float, targets: tuple[str, ...]) -> None:
        """peft LoRA adapters (adapter name "default", B = 0: the model is unchanged at first)
        on the LLM's linear layers whose names end in one of `targets`."""
        # peft takes seconds to import: only LoRA runs pay for it (a dry run stays fast).
        from peft import LoraConfig, inject_adapter_in_model

        if rank < 1:
            raise ValueError(f"--lora_rank must be >= 1 with --llm_train lora, got {rank}")
        if alpha <= 0:
            raise ValueError(f"--lora_alpha must be > 0 with --llm_train lora, got {alpha}")
        if not 0 <= dropout < 1:
            raise ValueError(f"--lora_dropout must be in [0, 1) with --llm_train lora, got {dropout}")
        linear = [n for n, m in self.llm.named_modules() if isinstance(m, nn.Linear)]
        # peft's own matching rule: the whole name, or a suffix after a dot.
        unmatched = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in linear)]
        if not targets or unmatched:
            kinds = sorted({n.split(".", 2)[2] if n.startswith("blocks.") else n for n in linear})
            raise ValueError(f"--lora_targets {','.join(targets)!r}: "
                             f"{', '.join(unmatched) or 'no target'} matches no linear layer of the "
                             f"LLM; its linear layers are {', '.join(kinds)} (blocks.N.<name> in "
                             f"every block)")
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                                           target_modules=list(targets)), self.llm)

    def _llm_weights(self):
        """The LLM's own trained weights (group "llm"): the LoRA matrices, or with llm_train
        full every LLM parameter but the state and conv, which keep their own flags."""
        for name, param in self.llm.named_parameters():
            if ((self.llm_train == "lora" and ".lora_" in name)
                    or (self.llm_train == "full" and not name.endswith(ADAPTER_SUFFIXES))):
                yield f"llm.{name}", param

    def _llm_adapters(self):
        for i, block in enumerate(self.llm.blocks):
            if self.train_state:
                yield f"llm.blocks.{i}.att.time_state", block.att.time_state
            if block.att.conv is not None:
                yield f"llm.blocks.{i}.att.conv.weight", block.att.conv.weight
                yield f"llm.blocks.{i}.att.conv.bias", block.att.conv.bias

    def named_parameter_groups(self) -> dict[str, dict[str, nn.Parameter]]:
        """The trained parameters by group: "state", "adapter" (projector, conv), "llm" (LoRA
        matrices or every LLM weight, unless frozen), "encoder"."""
        groups = {"state": {}, "adapter": {}}
        for name, param in self._llm_adapters():
            groups["state" if name.endswith("time_state") else "adapter"][name] = param
        if self.projector is not None:
            groups["adapter"].update((f"projector.{n}", p) for n, p in self.projector.named_parameters())
        if self.llm_train != "frozen":
            groups["llm"] = dict(self._llm_weights())
        if self.encoder is not None and self.encoder.trainable:
            groups["encoder"] = {f"encoder.{n}": p for n, p in self.encoder.named_parameters()}
        return groups

    def parameter_groups(self) -> list[dict]:
        """Optimizer groups [{"name": ..., "params": [...]}] for separate learning rates."""
        return [{"name": name, "params": list(params.values())}
                for name, params in self.named_parameter_groups().items()]

    def trainable_named_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for group in self.named_parameter_groups().values() for n, p in group.items()}

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Exactly the trained tensors (CPU copies), under their SpeechRWKV names."""
        return {n: p.detach().to("cpu", copy=True) for n, p in self.trainable_named_parameters().items()}

    def load_trainable_state_dict(self, state_dict: dict[str, Tensor], source: str = "state dict") -> None:
        """Load what trainable_state_dict() saved; any missing, extra or misshapen key is an error."""
        own = self.trainable_named_parameters()
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        problems = []
        if missing:
            problems.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''} "
                            f"(trained with another conv / projector / encoder / llm_train setting?)")
        for name in sorted(set(own) & set(state_dict)):
            if tuple(state_dict[name].shape) != tuple(own[name].shape):
                problems.append(f"{name} has shape {tuple(state_dict[name].shape)}, the model "
                                f"{tuple(own[name].shape)}")
        if problems:
            raise ValueError(f"{source}: does not fit this SpeechRWKV: " + "; ".join(problems))
        with torch.no_grad():
            for name, param in own.items():
                param.copy_(state_dict[name])

    def merged_llm_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """The LLM's state dict under the official key names, LoRA folded into the base weights.

        Each adapted weight is W + peft's get_delta_weight (the B @ A * alpha / rank that peft's
        merge adds), computed beside the model: merging in place would change the live model's
        weights, and unmerging a bf16 weight does not restore it exactly."""
        if self.llm_train != "lora":
            return self.llm.official_state_dict(dtype)
        from peft.tuners.lora import LoraLayer

        merged = {}
        with torch.no_grad():
            for name, module in self.llm.named_modules():
                if isinstance(module, LoraLayer):
                    base = module.get_base_layer().weight
                    delta = module.get_delta_weight("default")
                    merged[f"{name}.weight"] = (base.float() + delta.float()).to(base.dtype)
        state = {key.replace(".base_layer.", "."): value
                 for key, value in self.llm.state_dict().items() if ".lora_" not in key}
        state.update(merged)
        return {k: (v.to(dtype) if dtype else v).detach().cpu().contiguous() for k, v in state.items()}

    def export_merged_llm(self, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write the whole LLM with its trained time_state (and conv, and LoRA folded in, or the
        fine-tuned weights) as an official `.pth`; an existing `path` is never overwritten
        (FileExistsError).

        Without a conv the `rwkv` package runs it as a (state-tuned) World model; a conv file
        runs in this project's RWKV only. `dtype` None keeps every tensor's own dtype (frozen
        weights as loaded, trained tensors in fp32)."""
        path = Path(path)
        exists = f"{path} exists; choose another name (an existing file is never overwritten)"
        if path.exists():
            raise FileExistsError(exists)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            atomic_torch_save(self.merged_llm_state_dict(dtype), partial)
            # A hard link fails if the name was taken meanwhile; a rename would replace that file.
            os.link(partial, path)
        except FileExistsError:
            raise FileExistsError(exists) from None
        finally:
            partial.unlink(missing_ok=True)
        return path

    # ---------------------------------------------------------------- inputs
    @property
    def device(self) -> torch.device:
        return self.separator_ids.device

    def embed_speech(self, audio: list[np.ndarray]) -> list[Tensor]:
        """One [S_i, n_embd] tensor of speech embeddings per utterance (valid positions only)."""
        features, frame_counts = self.encoder(audio)
        embeddings, counts = self.projector(features.to(self.device), frame_counts.to(self.device))
        return [embeddings[i, :int(n)] for i, n in enumerate(counts.tolist())]

    def prefixes(self, audio: list[np.ndarray], targets: list[list[int]] | None = None) -> list[Tensor]:
        """One [S_i + P, n_embd] tensor per utterance: speech embeddings then the separator.

        With the oracle prefix the transcripts `targets` take the speech's place (and are
        required); without it `targets` is not read."""
        separator = self.llm.emb(self.separator_ids)
        if self.oracle is None:
            sources = self.embed_speech(audio)
        elif targets is None:
            raise ValueError("SpeechRWKV: the oracle prefix is the transcript; give the targets "
                             "(transcribing new audio with --oracle_prefix is impossible)")
        else:
            self._check_targets(targets, len(audio))
            sources = self.oracle.embed(self.llm.emb, targets, self.training)
        return [torch.cat([source.to(separator.dtype), separator]) for source in sources]

    def _check_targets(self, targets: list[list[int]], batch: int) -> None:
        if len(targets) != batch:
            raise ValueError(f"SpeechRWKV: {batch} audio items but {len(targets)} target lists")
        vocab = self.llm.config.vocab_size
        for i, ids in enumerate(targets):
            for j, token in enumerate(ids):
                if token == self.eot_id:
                    raise ValueError(f"targets[{i}][{j}] is the end-of-text id {self.eot_id}; the "
                                     f"model appends it itself")
                if not 0 <= token < vocab:
                    raise ValueError(f"targets[{i}][{j}] = {token} is outside the vocabulary [0, {vocab})")

    # ---------------------------------------------------------------- loss
    def utterance_losses(self, audio: list[np.ndarray], targets: list[list[int]],
                         length_bucket: int = 0) -> tuple[Tensor, Tensor]:
        """Per utterance: summed cross-entropy (fp32) over its transcript and end token, and the
        number of those tokens (len(target) + 1).

        length_bucket > 0 pads the LLM input at the end to a multiple of it (--length_bucket), so
        that a compiled LLM sees few lengths. Padding after a row's last position changes nothing
        before it in a causal model, and only the transcript positions are read."""
        self._check_targets(targets, len(audio))
        prefixes = self.prefixes(audio, targets)
        rows, pos_rows, pos_cols, labels = [], [], [], []
        for i, (prefix, ids) in enumerate(zip(prefixes, targets)):
            ids = torch.tensor(list(ids), dtype=torch.long, device=self.device)
            rows.append(torch.cat([prefix, self.llm.emb(ids)]))
            # The last separator position predicts the first token; the last token predicts eot.
            first = prefix.shape[0] - 1
            pos_rows.append(torch.full((len(ids) + 1,), i, device=self.device))
            pos_cols.append(torch.arange(first, first + len(ids) + 1, device=self.device))
            labels.append(torch.cat([ids, ids.new_tensor([self.eot_id])]))
        inputs = pad_sequence(rows, batch_first=True)
        if length_bucket > 0:
            inputs = F.pad(inputs, (0, 0, 0, -inputs.shape[1] % length_bucket))
        hidden, _ = self.llm.forward_hidden(inputs)
        pos_rows, pos_cols, labels = torch.cat(pos_rows), torch.cat(pos_cols), torch.cat(labels)
        # The 65536-wide head only where a token is predicted.
        logits = self.llm.head(hidden[pos_rows, pos_cols]).float()
        nll = F.cross_entropy(logits, labels, reduction="none")
        sums = torch.zeros(len(audio), dtype=nll.dtype, device=nll.device).index_add(0, pos_rows, nll)
        counts = torch.tensor([len(ids) + 1 for ids in targets], device=nll.device)
        return sums, counts

    def loss(self, audio: list[np.ndarray], targets: list[list[int]]) -> Tensor:
        """Mean cross-entropy over every transcript and end token of the batch (token-weighted)."""
        sums, counts = self.utterance_losses(audio, targets)
        return sums.sum() / counts.sum()
