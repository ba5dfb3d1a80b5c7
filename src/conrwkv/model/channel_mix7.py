"""RWKV-7 ("Goose", x070) channel mixing ("ffn"): one token-shift mix and a squared ReLU, with
no receptance gate (docs/reference.md, "x070 forward pass"); F = 4C in the official models.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from .init_ratios import init_ratios
from .time_mix import token_shift


class ChannelMix7(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        self.config = config
        self.layer_id = layer_id
        C, F = config.n_embd, config.dim_ffn
        self.x_k = nn.Parameter(torch.empty(1, 1, C))
        self.key = nn.Linear(C, F, bias=False)
        self.value = nn.Linear(F, C, bias=False)

    @torch.no_grad()
    def init_weights(self) -> None:
        """RWKV-LM's RWKV-v7 scheme: mix 1 - (c / C)^(depth ratio^4), small key, zero value."""
        cfg = self.config
        ratios = init_ratios(cfg, self.layer_id)
        r1, ddd = ratios.r1, ratios.ddd
        self.x_k.copy_(1.0 - ddd ** (r1**4))
        bound = 0.5 * cfg.n_embd**-0.5
        self.key.weight.uniform_(-bound, bound)
        nn.init.zeros_(self.value.weight)

    def forward(self, x: Tensor, previous: Tensor | None) -> tuple[Tensor, Tensor]:
        """x [B, T, C] (the ln2 output). Returns (out, last input)."""
        shifted = token_shift(x, previous) if self.config.token_shift else x
        x_k = x + (shifted - x) * self.x_k
        return self.value(torch.relu(self.key(x_k)) ** 2), x[:, -1]
