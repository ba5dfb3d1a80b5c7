"""The Con-RWKV convolution: a causal depthwise Conv1d over time, used as a residual branch.

Each channel c sees only its own past: y_t[c] = bias[c] + sum_j weight[c, 0, j] * x_{t-K+1+j}[c].
Weights and bias start at zero, so x + conv(x) is the identity until training moves them. In
RNN mode the last K-1 inputs are carried as a cache, which makes step-by-step and whole-sequence
results identical.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CausalDepthwiseConv(nn.Module):
    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.kernel = kernel
        self.weight = nn.Parameter(torch.zeros(channels, 1, kernel))  # Conv1d layout [C, 1, K]
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor, cache: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x [B, T, C]; cache [B, K-1, C] holds the inputs before x (zeros when None).

        Returns conv(x) [B, T, C] and the new cache (the last K-1 inputs)."""
        B, T, C = x.shape
        if cache is None:
            cache = x.new_zeros(B, self.kernel - 1, C)
        extended = torch.cat([cache.to(x.dtype), x], dim=1)                   # [B, K-1+T, C]
        y = F.conv1d(extended.transpose(1, 2), self.weight.to(x.dtype), self.bias.to(x.dtype),
                     groups=C).transpose(1, 2)
        return y, extended[:, extended.shape[1] - (self.kernel - 1):]
