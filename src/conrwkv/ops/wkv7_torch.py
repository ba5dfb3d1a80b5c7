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

from .chunking import compute_dtype, shift, to_chunks


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
# Largest exponent taken when intra-chunk decays are factored (as in wkv6_torch): exp(60) ~ 1e26
# keeps the factored vectors far inside float32 range.
_EXP_LIMIT = 60.0


def _exact_scores(r: Tensor, k: Tensor, a: Tensor, b: Tensor, log_decay: Tensor) -> tuple[Tensor, ...]:
    """The four intra-chunk score matrices with one exponent per (t, s, channel), each summed
    over its own interval: inclusive = sum over s < m <= t, exclusive = s < m < t. [.., L, L]."""
    L = r.shape[-2]
    t = torch.arange(L, device=r.device)
    lower = (t[:, None] > t[None, :])[:, :, None]                          # s < t (also: m > s)
    lower_eq = (t[:, None] >= t[None, :])[:, :, None]                      # s <= t
    inclusive = torch.cumsum(torch.where(lower, log_decay[..., :, None, :], 0.0), dim=-3)
    exclusive = shift(inclusive, 1, dim=-3)
    # Both are sums of log-decays (zero outside their interval), so exp never overflows.
    decay_excl = torch.where(lower, torch.exp(exclusive), 0.0)
    decay_incl = torch.where(lower_eq, torch.exp(inclusive), 0.0)
    pair = lambda x, y, d: torch.einsum("...tj,...sj,...tsj->...ts", x, y, d)  # noqa: E731
    return pair(a, b, decay_excl), pair(a, k, decay_excl), pair(r, b, decay_incl), pair(r, k, decay_incl)


def wkv7_chunked(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor,
                 state: Tensor | None = None, chunk: int = DEFAULT_CHUNK) -> tuple[Tensor, Tensor]:
    """Chunkwise-parallel WKV7: the same recurrence, with only the N x N state passed between
    chunks of `chunk` steps.

    Inside a chunk, write u_t = a_t^T S_{t-1} (the state read along the removal direction).
    With the decays prod_{s<m<=t} decay_m between steps, the u_t of a chunk solve one unit lower
    triangular system, (I - A_ab) u = (decayed a) S_0 + A_ak V, where A_ab[t, s] and A_ak[t, s]
    (s < t) are a_t . b_s and a_t . k_s through the decays between them; y and the outgoing
    state then follow from u by matrix products. The parts that do not depend on the incoming
    state (the two solves, every score) are computed for all chunks at once; the loop over
    chunks does a few small matrix products.

    Numerics, as in wkv6_chunked: the decays between two steps of a chunk are factored around
    the middle of the chunk, exp(cum_t - ref) * exp(ref - cum_s), so that the scores are
    matrix products. Where a chunk decays so fast that a factor would pass exp(_EXP_LIMIT)
    (decays close to 0), that chunk's scores are recomputed exactly with one exponent per
    (t, s, channel) summed over its own interval. Every other exponent is a sum of log-decays
    over an interval, hence <= 0; decays close to 1 keep their distance from 1 because the
    log-decay -exp(w) is formed directly from the raw w.
    """
    B, T, H, N = r.shape
    out_dtype = r.dtype
    dt = compute_dtype(r)
    L = chunk
    n_chunks = -(-T // L)

    rc, kc, vc, ac, bc = (to_chunks(x, L, dt) for x in (r, k, v, a, b))
    # Padded steps get log-decay 0 and a = b = k = v = 0: they leave the state untouched.
    log_decay = to_chunks(-torch.exp(w.to(dt)), L, dt)
    cum = torch.cumsum(log_decay, dim=3)                                  # chunk start .. t
    cum_before = torch.cumsum(shift(log_decay, 1, dim=3), dim=3)         # chunk start .. t-1
    cum_after = torch.cumsum(shift(log_decay, -1, dim=3).flip(3), dim=3).flip(3)   # t+1 .. end
    chunk_decay = torch.exp(cum[..., -1, :])[..., None]                   # [B, H, n, N, 1]

    # Factored scores: s < t through exclusive decays (a side), s <= t through inclusive (r side).
    ref = cum[:, :, :, L // 2 : L // 2 + 1, :]
    exps = (cum_before - ref, cum - ref, ref - cum)
    too_fast = (torch.stack([e.amax(dim=(3, 4)) for e in exps]).amax(0) > _EXP_LIMIT).detach()
    a_q, r_q, s_side = (torch.exp(e.clamp(max=_EXP_LIMIT)) for e in exps)
    a_scaled, r_scaled = ac * a_q, rc * r_q
    b_side, k_side = (bc * s_side).transpose(-1, -2), (kc * s_side).transpose(-1, -2)
    scores = [a_scaled @ b_side, a_scaled @ k_side, r_scaled @ b_side, r_scaled @ k_side]
    if too_fast.any():
        exact = _exact_scores(rc[too_fast], kc[too_fast], ac[too_fast], bc[too_fast], log_decay[too_fast])
        for i, part in enumerate(exact):
            full = scores[i].new_zeros(scores[i].shape)
            full[too_fast] = part
            scores[i] = torch.where(too_fast[..., None, None], full, scores[i])
    strictly_lower = torch.ones(L, L, dtype=torch.bool, device=r.device).tril(-1)
    lower_eq = torch.ones(L, L, dtype=torch.bool, device=r.device).tril()
    a_b, a_k = (torch.where(strictly_lower, x, 0.0) for x in scores[:2])
    r_b, r_k_scores = (torch.where(lower_eq, x, 0.0) for x in scores[2:])

    # u = W S_0 + U0, with W and U0 the solutions for the state-free parts.
    system = torch.eye(L, dtype=dt, device=r.device) - a_b
    W = torch.linalg.solve_triangular(system, ac * torch.exp(cum_before), upper=False, unitriangular=True)
    U0 = torch.linalg.solve_triangular(system, a_k @ vc, upper=False, unitriangular=True)
    r_start = rc * torch.exp(cum)                                           # r_t decayed back to S_0
    y_free = r_k_scores @ vc
    b_end = (bc * torch.exp(cum_after)).transpose(-1, -2)                  # [B, H, n, N, L]
    k_end_v = (kc * torch.exp(cum_after)).transpose(-1, -2) @ vc           # [B, H, n, N, N]

    S = r.new_zeros(B, H, N, N, dtype=dt) if state is None else state.to(dt).expand(B, H, N, N)
    ys = []
    for c in range(n_chunks):
        u = W[:, :, c] @ S + U0[:, :, c]
        ys.append(r_start[:, :, c] @ S + r_b[:, :, c] @ u + y_free[:, :, c])
        S = chunk_decay[:, :, c] * S + b_end[:, :, c] @ u + k_end_v[:, :, c]
    y = torch.stack(ys, dim=2).reshape(B, H, n_chunks * L, N)[:, :, :T].transpose(1, 2)
    return y.to(out_dtype), S
