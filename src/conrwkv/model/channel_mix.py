"""RWKV channel mixing ("ffn"): token-shift interpolation, squared ReLU, sigmoid gate.

docs/reference.md, "x060 forward pass" (x + (shift - x) * maa) and "x052 forward pass" (x * mix +
shift * (1 - mix)).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from .init_ratios import init_ratios
from .time_mix import token_shift


class ChannelMix(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        self.config = config
        self.layer_id = layer_id
        C, F = config.n_embd, config.dim_ffn
        prefix = "time_maa" if config.arch == "x060" else "time_mix"
        self._mix_names = (f"{prefix}_k", f"{prefix}_r")
        for name in self._mix_names:
            self.register_parameter(name, nn.Parameter(torch.empty(1, 1, C)))
        self.key = nn.Linear(C, F, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(F, C, bias=False)

    @torch.no_grad()
    def init_weights(self) -> None:
        cfg = self.config
        ratios = init_ratios(cfg, self.layer_id)
        r1, ddd = ratios.r1, ratios.ddd
        curve = ddd ** (r1**3)
        for name in self._mix_names:
            getattr(self, name).copy_(1 - curve if cfg.arch == "x060" else curve)
        nn.init.orthogonal_(self.key.weight, gain=1.0)
        nn.init.zeros_(self.receptance.weight)
        nn.init.zeros_(self.value.weight)

    def forward(self, x: Tensor, previous: Tensor | None) -> tuple[Tensor, Tensor]:
        """x [B, T, C] (the ln2 output). Returns (out, last input)."""
        shifted = token_shift(x, previous) if self.config.token_shift else x
        mix_k, mix_r = (getattr(self, name) for name in self._mix_names)
        if self.config.arch == "x060":
            x_k, x_r = x + (shifted - x) * mix_k, x + (shifted - x) * mix_r
        else:
            x_k, x_r = x * mix_k + shifted * (1 - mix_k), x * mix_r + shifted * (1 - mix_r)
        hidden = torch.relu(self.key(x_k)) ** 2
        return torch.sigmoid(self.receptance(x_r)) * self.value(hidden), x[:, -1]
