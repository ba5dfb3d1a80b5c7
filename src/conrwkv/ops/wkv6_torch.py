"""WKV6 in plain PyTorch: a sequential reference and a chunked parallel version.

The recurrence is the RWKV-6 ("Finch") time-mix kernel (Peng et al. 2024, "Eagle and Finch"),
per batch row and head, with the state indexed [key j, value i]:

    y_t[i] = sum_j r_t[j] * (u[j] * k_t[j] * v_t[i] + S_{t-1}[j, i])
    S_t    = diag(exp(-exp(w_t))) S_{t-1} + k_t^T v_t

Both functions take r, k, v, w as [B, T, H, N], u as [H, N] and an optional initial state
[B, H, N, N] (or [H, N, N], shared by the batch), and return (y, final_state). They compute in
float32 (float64 when given float64) and return y in the dtype of r; the state stays float32 or
wider. Gradients come from autograd, so every input, the initial state included, gets one.

The chunked version follows the usual chunkwise form of gated linear attention (Yang et al.
2024, "Gated Linear Attention Transformers with Hardware-Efficient Training"): inside a chunk the
outputs are matrix products, between chunks only the N x N state is carried.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .chunking import (
    chunked_log_decay,
    compute_dtype,
    floored_exp,
    interval_sums,
    intra_chunk_scores,
    to_chunks,
)

DEFAULT_CHUNK = 32


def _initial_state(state: Tensor | None, B: int, H: int, N: int, like: Tensor, dtype) -> Tensor:
    if state is None:
        return torch.zeros(B, H, N, N, device=like.device, dtype=dtype)
    return state.to(dtype).expand(B, H, N, N)


def wkv6_sequential(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor,
                    state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The recurrence, one time step after another: slow, obviously right."""
    B, T, H, N = r.shape
    out_dtype = r.dtype
    dt = compute_dtype(r)
    r, k, v, u = r.to(dt), k.to(dt), v.to(dt), u.to(dt)
    decay = torch.exp(-torch.exp(w.to(dt)))
    S = _initial_state(state, B, H, N, r, dt)
    ys = []
    for t in range(T):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]                    # [B, H, key, value]
        ys.append(torch.einsum("bhj,bhji->bhi", r[:, t], u[None, :, :, None] * kv + S))
        S = decay[:, t, :, :, None] * S + kv
    y = torch.stack(ys, dim=1)
    return y.to(out_dtype), S


def wkv6_chunked(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor,
                 state: Tensor | None = None, chunk: int = DEFAULT_CHUNK) -> tuple[Tensor, Tensor]:
    """Chunkwise-parallel WKV6: matrix products inside chunks, the state passed between them.

    Decays are handled in log space, and every exponent taken is a sum of log-decays over an
    interval, hence <= 0: nothing overflows, whatever the decays. The intra-chunk scores use
    blocks halved down to 4 steps (chunking.intra_chunk_scores), so their cost does not depend
    on the values either. `chunk` must be 4 times a power of 2.
    """
    B, T, H, N = r.shape
    out_dtype = r.dtype
    dt = compute_dtype(r)
    L = chunk
    n_chunks = -(-T // L)

    rc, kc, vc = to_chunks(r, L, dt), to_chunks(k, L, dt), to_chunks(v, L, dt)
    # Padded steps get log-decay 0 (no decay) and k = v = 0, so they leave the state untouched;
    # w is capped at chunking.W_MAX (see chunked_log_decay).
    log_decay = chunked_log_decay(w, L, dt)
    # Interval sums of log-decays, each summed directly (differences of long prefix sums
    # would lose precision in chunks that decay fast).
    cum_before = interval_sums(log_decay, "before")             # chunk start .. t-1
    cum_after = interval_sums(log_decay, "after")               # t+1 .. chunk end
    cum_last = log_decay.sum(dim=3, keepdim=True)                # the whole chunk

    # Intra-chunk scores for s < t: sum_j r_t[j] k_s[j] prod_{s<m<t} decay_m[j].
    scores = intra_chunk_scores(rc, kc, log_decay)
    bonus = (rc * u.to(dt)[None, :, None, None, :] * kc).sum(-1, keepdim=True)
    y = scores @ vc + bonus * vc

    # State passing: what each chunk adds to the state, and how much it decays the old one.
    added = (kc * floored_exp(cum_after)).transpose(-1, -2) @ vc           # [B, H, n, N, N]
    chunk_decay = floored_exp(cum_last).squeeze(3)[..., None]               # [B, H, n, N, 1]
    S = _initial_state(state, B, H, N, r, dt)
    entering = []
    for c in range(n_chunks):
        entering.append(S)
        S = chunk_decay[:, :, c] * S + added[:, :, c]
    entering = torch.stack(entering, dim=2)                                   # [B, H, n, N, N]
    y = y + (rc * floored_exp(cum_before)) @ entering

    y = y.reshape(B, H, n_chunks * L, N)[:, :, :T].transpose(1, 2)
    return y.to(out_dtype), S
