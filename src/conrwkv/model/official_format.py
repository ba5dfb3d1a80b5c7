"""The official RWKV `.pth` layout (docs/reference.md, "Checkpoint keys and shapes"): recognise the
architecture, infer the model shape from the keys, and match a state dict against a model with
errors that name keys.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from ..config import ModelConfig

DEEPSPEED_PREFIX = "_forward_module."
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def strip_prefix(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k.removeprefix(DEEPSPEED_PREFIX): v for k, v in state_dict.items()}


def detect_architecture(sd: dict[str, Tensor], source: str) -> str:
    """'x070', 'x060' or 'x052'; anything else is refused with a message saying what it looks like."""
    if "emb.weight" not in sd or "blocks.0.att.key.weight" not in sd:
        raise ValueError(f"{source}: not an RWKV language-model checkpoint "
                         "(no emb.weight / blocks.0.att.key.weight)")
    att = "blocks.0.att."
    if any(att + name in sd for name in ("r_k", "x_r", "w0", "a0")):
        return "x070"
    if att + "time_maa_x" in sd:
        return "x060"
    decay = sd.get(att + "time_decay")
    if (att + "time_mix_k" in sd and att + "ln_x.weight" in sd and att + "gate.weight" in sd
            and decay is not None and decay.dim() == 2 and decay.shape[1] > 1):
        return "x052"
    raise ValueError(f"{source}: this RWKV checkpoint is older than RWKV-5.2 (RWKV-4, 5.0 or 5.1: "
                     "no per-head decay / gate / ln_x); only x070, x060 and x052 are supported")


def _key(sd: dict[str, Tensor], key: str, arch: str, source: str) -> Tensor:
    """sd[key], or an error naming the key that a file of this architecture must have."""
    if key not in sd:
        raise ValueError(f"{source}: an {arch} checkpoint needs {key}, which this file lacks")
    return sd[key]


def infer_config(sd: dict[str, Tensor], source: str) -> ModelConfig:
    """The ModelConfig that a checkpoint was made with, read off its keys and shapes."""
    arch = detect_architecture(sd, source)
    vocab, C = sd["emb.weight"].shape
    A = sd["blocks.0.att.key.weight"].shape[0]
    F = _key(sd, "blocks.0.ffn.key.weight", arch, source).shape[0]
    heads = "blocks.0.att.r_k" if arch == "x070" else "blocks.0.att.time_faaaa"
    H, N = _key(sd, heads, arch, source).shape
    n_layer = 1 + max(int(m.group(1)) for k in sd if (m := _BLOCK.match(k)))
    conv = sd.get("blocks.0.att.conv.weight")
    extra = {}
    if arch == "x060":
        extra["mix_rank"] = sd["blocks.0.att.time_maa_w1"].shape[1] // 5
        extra["decay_rank"] = sd["blocks.0.att.time_decay_w1"].shape[1]
    if arch == "x070":
        # Block 0's v1 is unused but present in official files; its rank is every block's.
        for name in ("w", "a", "v", "g"):
            extra[f"{name}_rank"] = _key(sd, f"blocks.0.att.{name}1", arch, source).shape[1]
    return ModelConfig(vocab_size=vocab, n_layer=n_layer, n_embd=C, dim_att=A, dim_ffn=F,
                       head_size=N, arch=arch,
                       conv_kernel=0 if conv is None else conv.shape[-1],
                       state_tuning="blocks.0.att.time_state" in sd, **extra)


# Parameters that a checkpoint of the base model lacks and that start at their neutral value.
ADAPTER_SUFFIXES = (".att.time_state", ".att.conv.weight", ".att.conv.bias")


def load_matching(model: nn.Module, sd: dict[str, Tensor], source: str) -> list[str]:
    """Copy `sd` into `model`, refusing any difference but missing adapter parameters.

    Returns the names of adapter parameters the file lacked (left at their initial value)."""
    own = model.state_dict()
    unexpected = sorted(set(sd) - set(own))
    if unexpected:
        raise ValueError(f"{source}: keys the model does not have: {unexpected[:8]}"
                         f"{' ...' if len(unexpected) > 8 else ''} (a conv or time_state in the "
                         f"file needs conv_kernel / state_tuning in the config)")
    missing = sorted(set(own) - set(sd))
    required = [k for k in missing if not k.endswith(ADAPTER_SUFFIXES)]
    if required:
        raise ValueError(f"{source}: keys missing from the checkpoint: {required[:8]}"
                         f"{' ...' if len(required) > 8 else ''}")
    for key, value in sd.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise ValueError(f"{source}: shape mismatch for {key}: checkpoint has "
                             f"{list(value.shape)}, the model expects {list(own[key].shape)}")
    with torch.no_grad():
        params = dict(model.named_parameters())
        for key, value in sd.items():
            params[key].copy_(value)
    return missing
