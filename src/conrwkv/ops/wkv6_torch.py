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

DEFAULT_CHUNK = 32
# Largest exponent taken when intra-chunk decays are factored: exp(60) ~ 1e26 keeps r and k
# times the factor far inside float32 range.
_EXP_LIMIT = 60.0


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _initial_state(state: Tensor | None, B: int, H: int, N: int, like: Tensor, dtype) -> Tensor:
    if state is None:
        return torch.zeros(B, H, N, N, device=like.device, dtype=dtype)
    return state.to(dtype).expand(B, H, N, N)


def wkv6_sequential(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor,
                    state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The recurrence, one time step after another: slow, obviously right."""
    B, T, H, N = r.shape
    out_dtype = r.dtype
    dt = _compute_dtype(r)
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


def _shift(x: Tensor, steps: int) -> Tensor:
    """x moved `steps` places along the chunk (dim -2), zero filled: x_t -> x_{t-steps}."""
    if steps > 0:
        return torch.nn.functional.pad(x, (0, 0, steps, 0))[..., : x.shape[-2], :]
    return torch.nn.functional.pad(x, (0, 0, 0, -steps))[..., -steps:, :]


def _pairwise_scores(r: Tensor, k: Tensor, log_decay: Tensor) -> Tensor:
    """Exact intra-chunk scores with one exponent per (t, s, key channel): [.., L, L].

    The exponent sum_{s<m<t} log_decay_m is summed over its own interval (a cumulative sum
    down t of the masked log-decays) rather than taken as a difference of prefix sums, whose
    rounding grows with the whole chunk's decay."""
    L = r.shape[-2]
    t = torch.arange(L, device=r.device)
    beyond_next = (t[:, None] > t[None, :] + 1)[:, :, None]                  # t > s + 1
    previous = _shift(log_decay, 1)[..., :, None, :]                          # log_decay_{t-1}
    exponent = torch.cumsum(torch.where(beyond_next, previous, 0.0), dim=-3)  # [.., t, s, N]
    strictly_lower = (t[:, None] > t[None, :])[:, :, None]
    exponent = torch.where(strictly_lower, exponent, float("-inf"))
    return torch.einsum("...tj,...sj,...tsj->...ts", r, k, torch.exp(exponent))


def wkv6_chunked(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor,
                 state: Tensor | None = None, chunk: int = DEFAULT_CHUNK) -> tuple[Tensor, Tensor]:
    """Chunkwise-parallel WKV6: matrix products inside chunks, the state passed between them.

    Decays are handled in log space. The intra-chunk scores prod_{s<m<t} decay_m are factored
    around a reference point in the middle of the chunk, exp(cum_t - ref) * exp(ref - cum_s),
    so that they become one matrix product. Each factor is bounded by the chunk's total
    log-decay; where a chunk decays so fast that a factor would pass exp(_EXP_LIMIT), that
    chunk's scores are recomputed exactly with one exponent per (t, s, channel). All other
    exponents taken are sums of log-decays over an interval, hence <= 0, and cannot overflow.
    """
    B, T, H, N = r.shape
    out_dtype = r.dtype
    dt = _compute_dtype(r)
    L = chunk
    n_chunks = -(-T // L)
    pad = n_chunks * L - T

    def to_chunks(x: Tensor) -> Tensor:
        # [B, T, H, N] -> [B, H, n_chunks, L, N], zero padded at the end
        x = x.to(dt).transpose(1, 2)
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, pad))
        return x.reshape(B, H, n_chunks, L, N)

    rc, kc, vc = to_chunks(r), to_chunks(k), to_chunks(v)
    # Padded steps get log-decay 0 (no decay) and k = v = 0, so they leave the state untouched.
    log_decay = to_chunks(-torch.exp(w.to(dt)))
    # Interval sums of log-decays, each summed directly (differences of long prefix sums
    # would lose precision in chunks that decay fast).
    cum = torch.cumsum(log_decay, dim=3)                        # chunk start .. t
    cum_before = torch.cumsum(_shift(log_decay, 1), dim=3)      # chunk start .. t-1
    cum_after = torch.cumsum(_shift(log_decay, -1).flip(3), dim=3).flip(3)   # t+1 .. chunk end
    cum_last = cum[:, :, :, -1:, :]                             # the whole chunk

    # Intra-chunk scores for s < t: sum_j r_t[j] k_s[j] prod_{s<m<t} decay_m[j].
    ref = cum[:, :, :, L // 2 : L // 2 + 1, :]
    q_exp, k_exp = cum_before - ref, ref - cum
    too_fast = (torch.maximum(q_exp.amax(dim=(3, 4)), k_exp.amax(dim=(3, 4))) > _EXP_LIMIT).detach()
    q_scaled = rc * torch.exp(q_exp.clamp(max=_EXP_LIMIT))
    k_scaled = kc * torch.exp(k_exp.clamp(max=_EXP_LIMIT))
    scores = q_scaled @ k_scaled.transpose(-1, -2)
    if too_fast.any():
        exact = scores.new_zeros(scores.shape)
        exact[too_fast] = _pairwise_scores(rc[too_fast], kc[too_fast], log_decay[too_fast])
        scores = torch.where(too_fast[..., None, None], exact, scores)
    strictly_lower = torch.ones(L, L, dtype=torch.bool, device=r.device).tril(-1)
    scores = torch.where(strictly_lower, scores, 0.0)
    bonus = (rc * u.to(dt)[None, :, None, None, :] * kc).sum(-1, keepdim=True)
    y = scores @ vc + bonus * vc

    # State passing: what each chunk adds to the state, and how much it decays the old one.
    added = (kc * torch.exp(cum_after)).transpose(-1, -2) @ vc              # [B, H, n, N, N]
    chunk_decay = torch.exp(cum_last).squeeze(3)[..., None]                  # [B, H, n, N, 1]
    S = _initial_state(state, B, H, N, r, dt)
    entering = []
    for c in range(n_chunks):
        entering.append(S)
        S = chunk_decay[:, :, c] * S + added[:, :, c]
    entering = torch.stack(entering, dim=2)                                   # [B, H, n, N, N]
    y = y + (rc * torch.exp(cum_before)) @ entering

    y = y.reshape(B, H, n_chunks * L, N)[:, :, :T].transpose(1, 2)
    return y.to(out_dtype), S
