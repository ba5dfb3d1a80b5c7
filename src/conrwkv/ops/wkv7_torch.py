"""WKV7 in plain PyTorch: a sequential reference and a chunked parallel version
(docs/reference.md, "x070 forward pass").

The RWKV-7 ("Goose") recurrence, per batch row and head. The `rwkv` package writes it with the
state indexed [value, key]; this repository keeps every WKV state [key j, value i] (the layout of
WKV6), where the same recurrence reads

    S_t = diag(decay_t) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T
    y_t[i] = sum_j r_t[j] S_t[j, i]             # no bonus: S_t already holds step t

with decay_t = exp(-exp(w_t)) (w raw, as in WKV6), a_t the "removal" direction (-kk in the
model) and b_t the "replacement" direction (kk * a). Both functions take r, w, k, v, a, b as
[B, T, H, N] and an optional initial state [B, H, N, N] (or [H, N, N], shared by the batch), and
return (y, final_state). They compute in float32 (float64 when given float64) and returns y in
the dtype of r; gradients to every input and the initial state come from autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .chunking import (
    chunked_log_decay,
    compute_dtype,
    floored_exp,
    interval_sums,
    intra_chunk_set_scores,
    to_chunks,
)


def wkv7_sequential(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor,
                    state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The recurrence, one time step after another: slow, obviously right."""
    B, T, H, N = r.shape
    out_dtype = r.dtype
    dt = compute_dtype(r)
    r, k, v, a, b = (x.to(dt) for x in (r, k, v, a, b))
    # The decay factor in float32 from the raw w: factors near 1 keep their distance from 1.
    decay = torch.exp(-torch.exp(w.to(dt)))
    if state is None:
        S = r.new_zeros(B, H, N, N)
    else:
        S = state.to(dt).expand(B, H, N, N)
    ys = []
    for t in range(T):
        a_S = torch.einsum("bhj,bhji->bhi", a[:, t], S)                       # a^T S: [B, H, value]
        S = (decay[:, t, :, :, None] * S + b[:, t, :, :, None] * a_S[:, :, None, :]
             + k[:, t, :, :, None] * v[:, t, :, None, :])
        ys.append(torch.einsum("bhj,bhji->bhi", r[:, t], S))
    y = torch.stack(ys, dim=1)
    return y.to(out_dtype), S


DEFAULT_CHUNK = 16


def unit_lower_inverse(strict_lower: Tensor) -> Tensor:
    """(I - A)^-1 of strictly lower triangular A [.., L, L], L a power of 2: A^L = 0, so the
    inverse is the finite product (I + A)(I + A^2)(I + A^4)... of log2(L) squarings, a few
    batched matrix products where a triangular solve per right-hand side costs several times
    more on the CPU."""
    L = strict_lower.shape[-1]
    power = strict_lower
    inverse = torch.eye(L, dtype=power.dtype, device=power.device) + power
    for _ in range(L.bit_length() - 2):               # the factors I + A^2 .. I + A^(L/2)
        power = power @ power
        inverse = inverse + inverse @ power
    return inverse


def wkv7_chunked(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor,
                 state: Tensor | None = None, chunk: int = DEFAULT_CHUNK) -> tuple[Tensor, Tensor]:
    """Chunkwise-parallel WKV7: the same recurrence, with only the N x N state passed between
    chunks of `chunk` steps (4 times a power of 2).

    Inside a chunk, write u_t = a_t^T S_{t-1} (the state read along the removal direction).
    With the decays prod_{s<m<=t} decay_m between steps, the u_t of a chunk solve one unit lower
    triangular system, (I - A_ab) u = (decayed a) S_0 + A_ak V, where A_ab[t, s] and A_ak[t, s]
    (s < t) are a_t . b_s and a_t . k_s through the decays between them; y and the outgoing
    state then follow from u by matrix products. The parts that do not depend on the incoming
    state (the system's inverse, every score) are computed for all chunks at once; the loop over
    chunks does a few small matrix products.

    Numerics, as in wkv6_chunked: the four score matrices are built by halving
    (chunking.intra_chunk_set_scores), each factored only around the boundary between two halves,
    so every exponent taken is a sum of log-decays over an interval, hence <= 0, whatever the
    decays. The a side reads the exclusive decays prod_{s<m<t}; the r side the inclusive ones,
    which are the exclusive ones times decay_t (folded into r_t) plus the diagonal s = t, with
    no decay. Decays close to 1 keep their distance from 1 because the log-decay -exp(w) is
    formed directly from the raw w. No branch depends on the values: the work is the same for
    every input, torch.compile(fullgraph=True) traces it and torch.func.vmap batches it.
    """
    B, T, H, N = r.shape
    out_dtype = r.dtype
    dt = compute_dtype(r)
    L = chunk
    n_chunks = -(-T // L)

    rc, kc, vc, ac, bc = (to_chunks(x, L, dt) for x in (r, k, v, a, b))
    # Padded steps get log-decay 0 and a = b = k = v = 0: they leave the state untouched.
    log_decay = chunked_log_decay(w, L, dt)
    cum = interval_sums(log_decay, "through")                             # chunk start .. t
    cum_before = interval_sums(log_decay, "before")                       # chunk start .. t-1
    cum_after = interval_sums(log_decay, "after")                         # t+1 .. end
    chunk_decay = floored_exp(cum[..., -1, :])[..., None]                 # [B, H, n, N, 1]

    # All four scores in one halving: rows (a, r_t decay_t) against columns (b, k), s < t.
    rows = torch.stack([ac, rc * floored_exp(log_decay)], dim=-2)             # [B, H, n, L, 2, N]
    cols = torch.stack([bc, kc], dim=-2)
    scores = intra_chunk_set_scores(rows, cols, log_decay).unflatten(-1, (L, 2)).unflatten(-3, (L, 2))
    # each set's [L, L] blocks made contiguous: a batched product of strided matrices would copy
    # every matrix of the batch on its own
    a_b, a_k = scores[..., 0, :, 0].contiguous(), scores[..., 0, :, 1].contiguous()   # [B, H, n, L, L]
    r_b = scores[..., 1, :, 0] + torch.diag_embed((rc * bc).sum(-1))
    r_k = scores[..., 1, :, 1] + torch.diag_embed((rc * kc).sum(-1))

    # u = W S_0 + U0, with W and U0 the solutions for the state-free parts.
    inverse = unit_lower_inverse(a_b)
    W = inverse @ (ac * floored_exp(cum_before))
    U0 = inverse @ (a_k @ vc)
    r_start = rc * floored_exp(cum)                                         # r_t decayed back to S_0
    b_end = (bc * floored_exp(cum_after)).transpose(-1, -2)                # [B, H, n, N, L]
    k_end_v = (kc * floored_exp(cum_after)).transpose(-1, -2) @ vc         # [B, H, n, N, N]

    S = r.new_zeros(B, H, N, N, dtype=dt) if state is None else state.to(dt).expand(B, H, N, N)
    # The loop carries only the state, with (batch row, head) as one batch axis: per chunk,
    # u = W S + U0 and S' = decay S + b_end u + k_end_v in three fused products; y, which
    # needs no later chunk, is computed from the chunks' incoming states after the loop. Each
    # chunk's slices come from one unbind: the backward of an index per chunk would write a
    # full-sized zero gradient per chunk (quadratic in the number of chunks).
    def per_chunk(x: Tensor) -> tuple[Tensor, ...]:
        return x.reshape(B * H, n_chunks, *x.shape[3:]).transpose(0, 1).contiguous().unbind(0)

    S = S.reshape(B * H, N, N)
    starts, us = [], []
    for W_c, U0_c, decay_c, b_end_c, k_end_v_c in zip(*map(per_chunk, (W, U0, chunk_decay, b_end, k_end_v))):
        starts.append(S)
        us.append(torch.baddbmm(U0_c, W_c, S))
        S = torch.baddbmm(torch.addcmul(k_end_v_c, decay_c, S), b_end_c, us[-1])
    S_start, u = (torch.stack(x, 1).reshape(B, H, n_chunks, *x[0].shape[1:]) for x in (starts, us))
    y = r_start @ S_start + r_b @ u + r_k @ vc
    y = y.reshape(B, H, n_chunks * L, N)[:, :, :T].transpose(1, 2)
    return y.to(out_dtype), S.reshape(B, H, N, N)
