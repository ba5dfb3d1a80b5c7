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

from .chunking import compute_dtype, shift, to_chunks

DEFAULT_CHUNK = 32
DIAGONAL_BLOCK = 4              # _diagonal_scores writes out the pairs of a block of 4 steps
_EXP_FLOOR = -60.0
# Raw decays above this are taken as this: exp(-exp(7)) = exp(-1097) is 0 in float64 too.
_W_MAX = 7.0


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


def _exp(x: Tensor) -> Tensor:
    """exp of an exponent <= 0, with those below _EXP_FLOOR taken as it: exp(-60) ~ 1e-26 is
    nothing next to any term it is added to, and it keeps the products out of the subnormal
    range, where CPU arithmetic is many times slower (fast decays would then cost more)."""
    return torch.exp(x.clamp(min=_EXP_FLOOR))


def _diagonal_scores(r: Tensor, k: Tensor, log_decay: Tensor) -> Tensor:
    """sum_j r_t[j] k_s[j] prod_{s<m<t} decay_m[j] for s < t within each block of 4 steps (0
    elsewhere): [.., 4, 4].

    A block of 4 has six such pairs, and each is written out with exactly the decays between
    its two steps: none for neighbours, decay_1, decay_2 or both for the others. No exponent
    is positive and no factor has to cancel another, so values and gradients are exact for any
    decay (a factored form exp(P_{t-1} - P_ref) exp(P_ref - P_s) would leave rounding noise
    of the size of the uncancelled factors in the gradient of w, far above the true gradient
    when decays are fast)."""
    if r.shape[-2] != 4:
        raise ValueError(f"_diagonal_scores takes blocks of 4 steps, got {r.shape[-2]}")
    r0, r1, r2, r3 = r.unbind(-2)
    k0, k1, k2, k3 = k.unbind(-2)
    decay = _exp(log_decay)
    d1, d2 = decay[..., 1, :], decay[..., 2, :]
    zero = torch.zeros_like(r0[..., 0])

    def dot(a: Tensor, b: Tensor) -> Tensor:
        return (a * b).sum(-1)

    k0d1 = k0 * d1
    rows = [[zero, zero, zero, zero],
            [dot(r1, k0), zero, zero, zero],
            [dot(r2, k0d1), dot(r2, k1), zero, zero],
            [dot(r3, k0d1 * d2), dot(r3, k1 * d2), dot(r3, k2), zero]]
    return torch.stack([torch.stack(row, -1) for row in rows], -2)


def _intra_chunk_scores(r: Tensor, k: Tensor, log_decay: Tensor) -> Tensor:
    """sum_j r_t[j] k_s[j] prod_{s<m<t} decay_m[j] for s < t inside each chunk (0 elsewhere),
    at the same cost whatever the decays, and with no exponent above 0.

    By halving: a block of 2h steps is its two halves on the diagonal (the same problem,
    recursively, down to blocks of 4, written out by _diagonal_scores) and one off-diagonal
    block, the second half's rows against the first half's columns. There the product splits
    at the boundary between the halves into a row factor (the decays from the second half's
    start to t-1) and a column factor (from s+1 to the first half's end), each a sum of
    log-decays over its own interval, hence <= 0: one matrix product, no overflow however fast
    the decays, and no factor that has to cancel another (so the gradients are as exact as the
    values). The matrix products add up to half of one chunk-sized product. No branch depends
    on the values, so the work is the same for every input and torch.compile sees one graph."""
    *lead, L, N = r.shape
    if L % DIAGONAL_BLOCK or (L // DIAGONAL_BLOCK) & (L // DIAGONAL_BLOCK - 1):
        raise ValueError(f"the WKV6 chunk must be {DIAGONAL_BLOCK} times a power of 2, got {L}")
    blocks = _diagonal_scores(*(x.unflatten(-2, (-1, DIAGONAL_BLOCK)) for x in (r, k, log_decay)))
    h = DIAGONAL_BLOCK
    while h < L:
        # pairs of neighbouring blocks of h steps: [.., L / 2h, 2, h, N]
        r2, k2, d2 = (x.unflatten(-2, (-1, 2, h)) for x in (r, k, log_decay))
        to_t = torch.cumsum(shift(d2[..., 1, :, :], 1), dim=-2)          # second half's start .. t-1
        from_s = torch.cumsum(shift(d2[..., 0, :, :], -1).flip(-2), dim=-2).flip(-2)   # s+1 .. its end
        rows, cols = r2[..., 1, :, :] * _exp(to_t), k2[..., 0, :, :] * _exp(from_s)
        cross = rows @ cols.transpose(-1, -2)                                 # [.., L / 2h, h, h]
        first, second = blocks[..., 0::2, :, :], blocks[..., 1::2, :, :]
        blocks = torch.cat([torch.cat([first, torch.zeros_like(cross)], -1),
                            torch.cat([cross, second], -1)], -2)              # [.., L / 2h, 2h, 2h]
        h *= 2
    return blocks.squeeze(-3)


def wkv6_chunked(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor,
                 state: Tensor | None = None, chunk: int = DEFAULT_CHUNK) -> tuple[Tensor, Tensor]:
    """Chunkwise-parallel WKV6: matrix products inside chunks, the state passed between them.

    Decays are handled in log space, and every exponent taken is a sum of log-decays over an
    interval, hence <= 0: nothing overflows, whatever the decays. The intra-chunk scores use
    blocks halved down to 4 steps (_intra_chunk_scores), so their cost does not depend on the
    values either. `chunk` must be 4 times a power of 2.
    """
    B, T, H, N = r.shape
    out_dtype = r.dtype
    dt = compute_dtype(r)
    L = chunk
    n_chunks = -(-T // L)

    rc, kc, vc = to_chunks(r, L, dt), to_chunks(k, L, dt), to_chunks(v, L, dt)
    # Padded steps get log-decay 0 (no decay) and k = v = 0, so they leave the state untouched.
    # w is capped where the decay is 0 to the last digit anyway (exp(-exp(_W_MAX)) underflows
    # even in float64): an infinite log-decay would make a 0 * inf gradient.
    log_decay = to_chunks(-torch.exp(w.to(dt).clamp(max=_W_MAX)), L, dt)
    # Interval sums of log-decays, each summed directly (differences of long prefix sums
    # would lose precision in chunks that decay fast).
    cum_before = torch.cumsum(shift(log_decay, 1), dim=3)      # chunk start .. t-1
    cum_after = torch.cumsum(shift(log_decay, -1).flip(3), dim=3).flip(3)   # t+1 .. chunk end
    cum_last = log_decay.sum(dim=3, keepdim=True)                # the whole chunk

    # Intra-chunk scores for s < t: sum_j r_t[j] k_s[j] prod_{s<m<t} decay_m[j].
    scores = _intra_chunk_scores(rc, kc, log_decay)
    bonus = (rc * u.to(dt)[None, :, None, None, :] * kc).sum(-1, keepdim=True)
    y = scores @ vc + bonus * vc

    # State passing: what each chunk adds to the state, and how much it decays the old one.
    added = (kc * _exp(cum_after)).transpose(-1, -2) @ vc                   # [B, H, n, N, N]
    chunk_decay = _exp(cum_last).squeeze(3)[..., None]                       # [B, H, n, N, 1]
    S = _initial_state(state, B, H, N, r, dt)
    entering = []
    for c in range(n_chunks):
        entering.append(S)
        S = chunk_decay[:, :, c] * S + added[:, :, c]
    entering = torch.stack(entering, dim=2)                                   # [B, H, n, N, N]
    y = y + (rc * _exp(cum_before)) @ entering

    y = y.reshape(B, H, n_chunks * L, N)[:, :, :T].transpose(1, 2)
    return y.to(out_dtype), S
