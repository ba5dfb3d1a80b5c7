"""The depth and channel ratios that the official initialisations of every RWKV generation
(x052, x060, x070; time mix and channel mix) are written in (docs/reference.md,
"Initialisation")."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import ModelConfig


@dataclass(frozen=True)
class InitRatios:
    r0: float        # layer / (n_layer - 1): 0 in the first layer, 1 in the last
    r1: float        # 1 - layer / n_layer: 1 in the first layer, towards 0 in the last
    ddd: Tensor      # channel c / C, shaped [1, 1, C]


def init_ratios(config: ModelConfig, layer_id: int) -> InitRatios:
    C = config.n_embd
    # the official code divides by n_layer - 1, which is 0 for one layer
    r0 = layer_id / (config.n_layer - 1) if config.n_layer > 1 else 0.0
    return InitRatios(r0, 1.0 - layer_id / config.n_layer,
                      torch.arange(C, dtype=torch.float32).view(1, 1, C) / C)
