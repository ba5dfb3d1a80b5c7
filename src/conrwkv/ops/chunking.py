"""What the chunked torch backends of WKV6 and WKV7 share: the compute dtype, the shift of a
sequence along one axis, and the layout of a sequence as zero-padded chunks."""

from __future__ import annotations

import torch
from torch import Tensor


def compute_dtype(x: Tensor) -> torch.dtype:
    """float32, or wider when the input is: the recurrences are never run in half precision."""
    return torch.promote_types(x.dtype, torch.float32)


def shift(x: Tensor, steps: int, dim: int = -2) -> Tensor:
    """x moved `steps` places along `dim`, zero filled: x_t -> x_{t-steps} (steps may be < 0)."""
    L = x.shape[dim]
    zeros = x.new_zeros(*x.shape[:dim], abs(steps), *x.shape[dim % x.dim() + 1:])
    if steps > 0:
        return torch.cat([zeros, x.narrow(dim, 0, L - steps)], dim=dim)
    return torch.cat([x.narrow(dim, -steps, L + steps), zeros], dim=dim)


def to_chunks(x: Tensor, chunk: int, dtype: torch.dtype) -> Tensor:
    """[B, T, H, N] -> [B, H, n_chunks, chunk, N] in `dtype`, zero padded at the end."""
    B, T, H, N = x.shape
    n_chunks = -(-T // chunk)
    x = x.to(dtype).transpose(1, 2)
    if n_chunks * chunk > T:
        x = torch.nn.functional.pad(x, (0, 0, 0, n_chunks * chunk - T))
    return x.reshape(B, H, n_chunks, chunk, N)
