"""RWKV-7 ("Goose", x070) time mixing, with the value residual `v_first`.

Formulas: docs/reference.md, "x070 forward pass" (read from the `rwkv` package's RWKV_x070 and
RWKV-LM's RWKV-v7 trainer). Block 0 hands its value vector to every later block, which mixes it
into its own value through a learnt sigmoid gate. The Con-RWKV options work as for x060
(`model/time_mix.py`): `conv_kernel > 0` adds the zero-initialised causal conv residual before
the token shift (keys att.conv.weight / .bias), `state_tuning` a trainable initial WKV state
`time_state` stored [H, value, key] as RWKV-PEFT stores it (and the package keeps its state).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..ops import wkv7
from .init_ratios import init_ratios
from .state import LayerState
from .time_mix import LN_X_EPS, Adapters, token_shift

# The decay factor is exp(-exp(-0.5) * sigmoid(w_raw)): between exp(-exp(-0.5)) ~ 0.545 and 1.
_DECAY_LOG_SCALE = -0.5
_MIXES = ("r", "w", "k", "v", "a", "g")


def _orthogonal_(x: Tensor, scale: float) -> None:
    """RWKV-LM's LoRA-output init: orthogonal, with gain sqrt(rows / cols) for tall matrices."""
    rows, cols = x.shape
    nn.init.orthogonal_(x, gain=scale * (math.sqrt(rows / cols) if rows > cols else 1.0))


class TimeMix7(Adapters, nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        self.config = config
        self.layer_id = layer_id
        C, H, N = config.n_embd, config.n_head, config.head_size
        self.n_head, self.head_size = H, N
        empty = lambda *shape: nn.Parameter(torch.empty(*shape))  # noqa: E731 - filled by init

        for name in _MIXES:
            setattr(self, f"x_{name}", empty(1, 1, C))
        for name, rank in (("w", config.w_rank), ("a", config.a_rank), ("v", config.v_rank)):
            setattr(self, f"{name}0", empty(1, 1, C))
            setattr(self, f"{name}1", empty(C, rank))
            setattr(self, f"{name}2", empty(rank, C))
        self.g1 = empty(C, config.g_rank)
        self.g2 = empty(config.g_rank, C)
        self.k_k = empty(1, 1, C)
        self.k_a = empty(1, 1, C)
        self.r_k = empty(H, N)
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=LN_X_EPS)
        self.make_adapters(config)

    # ---------------------------------------------------------------- initialisation
    @torch.no_grad()
    def init_weights(self) -> None:
        """RWKV-LM's RWKV-v7 initialisation for training from scratch (the facts, restated).

        Token-shift mixes 1 - (c / C)^(e * depth ratio); per-channel decay bias rising from
        fast (-6) to slow channels with a zigzag within each head; LoRA inputs zero and outputs
        orthogonal with gain 0.1, so every LoRA starts as its bias; small key, zero output."""
        cfg, layer = self.config, self.layer_id
        C, N = cfg.n_embd, cfg.head_size
        ratios = init_ratios(cfg, layer)
        r0, r1, ddd = ratios.r0, ratios.r1, ratios.ddd
        for name, power in zip(_MIXES, (0.2, 0.9, 0.7, 0.7, 0.9, 0.2)):
            getattr(self, f"x_{name}").copy_(1.0 - ddd ** (power * r1))
        n = torch.arange(C, dtype=torch.float32)
        linear = n / max(C - 1, 1) - 0.5
        zigzag = ((n % N) - (N - 1) / 2) / max((N - 1) / 2, 1)
        zigzag = zigzag * zigzag.abs()
        decay = -6 + 6 * (n / max(C - 1, 1)) ** (1 + r0**0.3)
        self.w0.copy_((decay + 0.5 + 2.5 * zigzag).view(1, 1, C))
        self.a0.copy_((-0.19 + 0.3 * zigzag + 0.4 * linear).view(1, 1, C))
        self.v0.copy_((0.73 - 0.4 * linear).view(1, 1, C))
        for name in ("w", "a", "v", "g"):
            getattr(self, f"{name}1").zero_()
            _orthogonal_(getattr(self, f"{name}2"), 0.1)
        self.k_k.copy_((0.71 - 0.1 * linear).view(1, 1, C))
        self.k_a.fill_(1.02)
        self.r_k.fill_(-0.04)
        bound = C**-0.5
        self.receptance.weight.uniform_(-0.5 * bound, 0.5 * bound)
        self.key.weight.uniform_(-0.05 * bound, 0.05 * bound)
        self.value.weight.uniform_(-0.5 * bound, 0.5 * bound)
        self.output.weight.zero_()
        self.ln_x.reset_parameters()
        self.init_adapters()

    # ---------------------------------------------------------------- forward

    def forward(self, x: Tensor, state: LayerState | None, v_first: Tensor | None
                ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor]:
        """x [B, T, C] (the ln1 output); v_first: block 0's value [B, T, C] (None in block 0).
        Returns (out, last input, WKV state, conv cache, v_first)."""
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        conv_cache = None
        if self.conv is not None:
            conv_out, conv_cache = self.conv(x, None if state is None else state.conv)
            x = x + conv_out
        shifted = token_shift(x, None if state is None else state.att_shift) if self.config.token_shift else x
        d = shifted - x
        x_r, x_w, x_k, x_v, x_a, x_g = (x + d * getattr(self, f"x_{name}") for name in _MIXES)

        r = self.receptance(x_r)
        k = self.key(x_k)
        v = self.value(x_v)
        w_raw = self.w0 + torch.tanh(x_w @ self.w1) @ self.w2
        a = torch.sigmoid(self.a0 + (x_a @ self.a1) @ self.a2)
        g = torch.sigmoid(x_g @ self.g1) @ self.g2
        kk = F.normalize((k * self.k_k).view(B, T, H, N), dim=-1, p=2.0).view(B, T, C)
        k = k * (1 + (a - 1) * self.k_a)
        if self.layer_id == 0:
            v_first = v
        elif v_first is None:
            raise ValueError(f"block {self.layer_id}: an x070 block after the first needs v_first")
        else:
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (x_v @ self.v1) @ self.v2)
        # The raw w that WKV7 (like WKV6) turns into exp(-exp(w)): log(exp(-0.5) * sigmoid(w_raw)),
        # computed as -0.5 - softplus(-w_raw) in float32, exact for decays close to 1.
        w = _DECAY_LOG_SCALE - F.softplus(-w_raw.float())

        heads = lambda t: t.reshape(B, T, H, N)  # noqa: E731
        wkv_in = self.initial_wkv_state() if state is None else state.wkv
        y, wkv_out = wkv7(heads(r), heads(w), heads(k), heads(v), heads(-kk), heads(kk * a), wkv_in,
                          return_state=True, backend=self.config.wkv_backend)
        y = self.ln_x(y.reshape(B * T, C).to(x.dtype)).view(B, T, H, N)
        # The "bonus" of RWKV-7: the current token's value, weighted by r . (k * r_k) per head.
        bonus = (heads(r) * heads(k) * self.r_k).sum(-1, keepdim=True) * heads(v)
        y = (y + bonus).view(B, T, C)
        return self.output(y * g), x[:, -1], wkv_out, conv_cache, v_first
