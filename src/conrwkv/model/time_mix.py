"""RWKV time mixing ("att"), x060 (RWKV-6 Finch) and x052 (RWKV-5.2 Eagle) in one class.

Formulas: docs/reference.md, "x060 forward pass" and "x052 forward pass" (Peng et al. 2024, "Eagle
and Finch", sections 4.2 and 4.1). Two options make Con-RWKV and state tuning:
- `conv_kernel > 0`: a causal depthwise convolution on the time-mix input, before the token
  shift, as a zero-initialised residual branch (keys att.conv.weight / att.conv.bias);
- `state_tuning`: a trainable initial WKV state `time_state`, stored [H, value, key] as the
  official trainer and RWKV-PEFT store it. `initial_wkv_state` is the one place that
  transposes it to the [H, key, value] layout used everywhere else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..ops import wkv6
from .conv import CausalDepthwiseConv
from .init_ratios import init_ratios
from .state import LayerState

# The official GroupNorm after WKV: x060 uses eps 1e-5 * 8**2 on y; x052 uses eps 1e-5 on y / 8.
# Normalising y / 8 with eps is exactly normalising y with 64 * eps, so both share one GroupNorm.
LN_X_EPS = 1e-5 * 8**2


def token_shift(x: Tensor, previous: Tensor | None) -> Tensor:
    """x delayed by one step; the first step sees `previous` ([B, C]) or zeros."""
    first = x.new_zeros(x.shape[0], 1, x.shape[2]) if previous is None else previous[:, None].to(x.dtype)
    return torch.cat([first, x[:, :-1]], dim=1)


class Adapters:
    """The Con-RWKV conv branch and the trainable initial WKV state, as every time mix (x052,
    x060, x070) holds them in `conv` and `time_state` (either may be None)."""

    conv: nn.Module | None
    time_state: nn.Parameter | None

    def make_adapters(self, config: ModelConfig) -> None:
        """The conv (config.conv_kernel > 0) and the initial state (config.state_tuning), or None."""
        H, N = config.n_head, config.head_size
        self.conv = CausalDepthwiseConv(config.n_embd, config.conv_kernel) if config.conv_kernel else None
        self.time_state = nn.Parameter(torch.zeros(H, N, N)) if config.state_tuning else None

    @torch.no_grad()
    def init_adapters(self) -> None:
        """Conv branch and initial state at their neutral start: the identity and zeros."""
        if self.conv is not None:
            self.conv.weight.zero_()
            self.conv.bias.zero_()
        if self.time_state is not None:
            self.time_state.zero_()

    def initial_wkv_state(self) -> Tensor | None:
        """The trained initial state as [H, key, value] (the stored time_state is [H, value, key])."""
        return None if self.time_state is None else self.time_state.transpose(1, 2).float()


class TimeMix(Adapters, nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        self.config = config
        self.layer_id = layer_id
        C, A, H, N = config.n_embd, config.dim_att, config.n_head, config.head_size
        self.n_head, self.head_size = H, N
        empty = lambda *shape: nn.Parameter(torch.empty(*shape))  # noqa: E731 - filled by init

        if config.arch == "x060":
            for name in ("x", "w", "k", "v", "r", "g"):
                setattr(self, f"time_maa_{name}", empty(1, 1, C))
            self.time_maa_w1 = empty(C, 5 * config.mix_rank)
            self.time_maa_w2 = empty(5, config.mix_rank, C)
            self.time_decay = empty(1, 1, A)
            self.time_decay_w1 = empty(C, config.decay_rank)
            self.time_decay_w2 = empty(config.decay_rank, A)
        else:
            for name in ("k", "v", "r", "g"):
                setattr(self, f"time_mix_{name}", empty(1, 1, C))
            self.time_decay = empty(H, N)
        self.time_faaaa = empty(H, N)
        self.receptance = nn.Linear(C, A, bias=False)
        self.key = nn.Linear(C, A, bias=False)
        self.value = nn.Linear(C, A, bias=False)
        self.gate = nn.Linear(C, A, bias=False)
        self.output = nn.Linear(A, C, bias=False)
        self.ln_x = nn.GroupNorm(H, A, eps=LN_X_EPS)
        self.make_adapters(config)

    # ---------------------------------------------------------------- initialisation
    @torch.no_grad()
    def init_weights(self) -> None:
        """Official initialisation for training from scratch (docs/reference.md, "Initialisation")."""
        cfg, layer = self.config, self.layer_id
        A = cfg.dim_att
        ratios = init_ratios(cfg, layer)
        r0, r1, ddd = ratios.r0, ratios.r1, ratios.ddd
        n = torch.arange(A, dtype=torch.float32)
        decay = -6 + 5 * (n / max(A - 1, 1)) ** (0.7 + 1.3 * r0)
        bonus = r0 * (1 - n / max(A - 1, 1)) + 0.1 * ((n + 1) % 3 - 1)
        if cfg.arch == "x060":
            self.time_maa_x.copy_(1 - ddd**r1)
            self.time_maa_w.copy_(1 - ddd**r1)
            self.time_maa_k.copy_(1 - ddd**r1)
            self.time_maa_v.copy_(1 - (ddd**r1 + 0.3 * r0))
            self.time_maa_r.copy_(1 - ddd ** (0.5 * r1))
            self.time_maa_g.copy_(1 - ddd ** (0.5 * r1))
            self.time_maa_w1.zero_()
            self.time_maa_w2.uniform_(-0.01, 0.01)
            self.time_decay_w1.zero_()
            self.time_decay_w2.uniform_(-0.01, 0.01)
            self.time_decay.copy_(decay.view(1, 1, A))
        else:
            # x052 mixes x * mix + shift * (1 - mix): the same curves as x060 with mix = 1 - maa.
            self.time_mix_k.copy_(ddd**r1)
            self.time_mix_v.copy_(ddd**r1 + 0.3 * r0)
            self.time_mix_r.copy_(ddd ** (0.5 * r1))
            self.time_mix_g.copy_(ddd ** (0.5 * r1))
            self.time_decay.copy_(decay.view(self.n_head, self.head_size))
        self.time_faaaa.copy_(bonus.view(self.n_head, self.head_size))
        nn.init.orthogonal_(self.receptance.weight, gain=1.0)
        nn.init.orthogonal_(self.key.weight, gain=0.1)
        nn.init.orthogonal_(self.value.weight, gain=1.0)
        nn.init.orthogonal_(self.gate.weight, gain=0.1)
        nn.init.zeros_(self.output.weight)
        self.ln_x.weight.fill_(((1 + layer) / cfg.n_layer) ** 0.7)
        self.ln_x.bias.zero_()
        self.init_adapters()

    # ---------------------------------------------------------------- forward

    def _mix_inputs(self, x: Tensor, shifted: Tensor) -> tuple[Tensor, ...]:
        """The five token-shift interpolations and the raw decay w [B, T, A]."""
        if self.config.arch == "x060":
            xx = shifted - x
            xxx = x + xx * self.time_maa_x
            B, T, C = x.shape
            lora = torch.tanh(xxx @ self.time_maa_w1).view(B * T, 5, -1).transpose(0, 1)
            m_w, m_k, m_v, m_r, m_g = torch.bmm(lora, self.time_maa_w2).view(5, B, T, C).unbind(0)
            x_w = x + xx * (self.time_maa_w + m_w)
            x_k = x + xx * (self.time_maa_k + m_k)
            x_v = x + xx * (self.time_maa_v + m_v)
            x_r = x + xx * (self.time_maa_r + m_r)
            x_g = x + xx * (self.time_maa_g + m_g)
            w = self.time_decay + torch.tanh(x_w @ self.time_decay_w1) @ self.time_decay_w2
        else:
            x_k = x * self.time_mix_k + shifted * (1 - self.time_mix_k)
            x_v = x * self.time_mix_v + shifted * (1 - self.time_mix_v)
            x_r = x * self.time_mix_r + shifted * (1 - self.time_mix_r)
            x_g = x * self.time_mix_g + shifted * (1 - self.time_mix_g)
            w = self.time_decay.reshape(1, 1, -1).expand(x.shape[0], x.shape[1], -1)
        return x_k, x_v, x_r, x_g, w

    def forward(self, x: Tensor, state: LayerState | None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """x [B, T, C] (the ln1 output). Returns (out, last input, WKV state, conv cache)."""
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        conv_cache = None
        if self.conv is not None:
            conv_out, conv_cache = self.conv(x, None if state is None else state.conv)
            x = x + conv_out
        shifted = token_shift(x, None if state is None else state.att_shift) if self.config.token_shift else x
        x_k, x_v, x_r, x_g, w = self._mix_inputs(x, shifted)

        r = self.receptance(x_r).view(B, T, H, N)
        k = self.key(x_k).view(B, T, H, N)
        v = self.value(x_v).view(B, T, H, N)
        g = F.silu(self.gate(x_g))
        wkv_in = self.initial_wkv_state() if state is None else state.wkv
        y, wkv_out = wkv6(r, k, v, w.view(B, T, H, N), self.time_faaaa, wkv_in,
                          return_state=True, backend=self.config.wkv_backend)
        y = self.ln_x(y.reshape(B * T, H * N).to(x.dtype)).view(B, T, H * N)
        return self.output(y * g), x[:, -1], wkv_out, conv_cache
