"""Configuration dataclasses. Each field carries its command-line help in `metadata["help"]`,
from which train.py generates its flags, so a flag cannot exist without help or a reader."""

from __future__ import annotations

from dataclasses import dataclass, field

ARCHITECTURES = ("x060", "x052")


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass
class ModelConfig:
    """Shape and options of an RWKV-6 (or RWKV-5.2) language model.

    Zeros mean "derive the usual value": dim_att = n_embd, dim_ffn = 3.5 * n_embd rounded down to
    a multiple of 32, and the low-rank sizes of the official x060 models (32 and 64, doubled
    from n_embd 4096 up). __post_init__ fills them in, so a printed config shows real numbers.
    """

    vocab_size: int = field(default=65536, metadata=_help(
        "Vocabulary size (65536 for the RWKV World models; 2 for binary Markov chains)."))
    n_layer: int = field(default=2, metadata=_help("Number of RWKV blocks."))
    n_embd: int = field(default=128, metadata=_help("Model width C (residual stream size)."))
    dim_att: int = field(default=0, metadata=_help(
        "Time-mix width A, a multiple of head_size (0: equal to n_embd)."))
    dim_ffn: int = field(default=0, metadata=_help(
        "Channel-mix hidden width F (0: int(3.5 * n_embd) // 32 * 32)."))
    head_size: int = field(default=64, metadata=_help(
        "Size N of one WKV head; dim_att / head_size heads (64 in every official model)."))
    arch: str = field(default="x060", metadata=_help(
        "Block architecture: x060 (RWKV-6 Finch) or x052 (RWKV-5.2 Eagle, e.g. RWKV-5 World 0.4B).",
        choices=ARCHITECTURES))
    conv_kernel: int = field(default=0, metadata=_help(
        "Con-RWKV causal depthwise convolution kernel on the time-mix input (0: off). It is a "
        "zero-initialised residual branch, so a pretrained model is unchanged at step 0."))
    state_tuning: bool = field(default=False, metadata=_help(
        "Give every layer a trainable initial WKV state (time_state, zero-initialised)."))
    mix_rank: int = field(default=0, metadata=_help(
        "Rank of the x060 data-dependent token-shift LoRA per target (0: 32, or 64 from n_embd 4096)."))
    decay_rank: int = field(default=0, metadata=_help(
        "Rank of the x060 data-dependent decay LoRA (0: 64, or 128 from n_embd 4096)."))
    wkv_backend: str = field(default="auto", metadata=_help(
        "WKV6 kernel: auto (cuda on GPU tensors, torch otherwise), torch, cuda or fla.",
        choices=("auto", "torch", "cuda", "fla")))
    grad_cp: bool = field(default=False, metadata=_help(
        "Gradient checkpointing: recompute each block in the backward pass to save memory."))

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {ARCHITECTURES}, got {self.arch!r}")
        if self.dim_att == 0:
            self.dim_att = self.n_embd
        if self.dim_ffn == 0:
            self.dim_ffn = int(self.n_embd * 3.5) // 32 * 32
        if self.mix_rank == 0:
            self.mix_rank = 64 if self.n_embd >= 4096 else 32
        if self.decay_rank == 0:
            self.decay_rank = 128 if self.n_embd >= 4096 else 64
        for name in ("vocab_size", "n_layer", "n_embd", "dim_att", "dim_ffn", "head_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.dim_att % self.head_size:
            raise ValueError(f"dim_att ({self.dim_att}) must be a multiple of head_size "
                             f"({self.head_size})")
        if self.conv_kernel < 0:
            raise ValueError(f"conv_kernel must be >= 0 (0 = off), got {self.conv_kernel}")

    @property
    def n_head(self) -> int:
        return self.dim_att // self.head_size
