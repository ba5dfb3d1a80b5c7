"""What the chunked torch backends of WKV6 and WKV7 share: the compute dtype, the shift of a
sequence along one axis, the layout of a sequence as zero-padded chunks, the log-decays, and
the intra-chunk scores built by halving (`intra_chunk_set_scores`), whose work and control flow do
not depend on the values."""

from __future__ import annotations

import torch
from torch import Tensor

DIAGONAL_BLOCK = 4              # diagonal_scores writes out the pairs of a block of 4 steps
EXP_FLOOR = -60.0
# Raw decays above this are taken as this: exp(-exp(7)) = exp(-1097) is 0 in float64 too.
W_MAX = 7.0


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


def interval_sums(x: Tensor, interval: str) -> Tensor:
    """Sums of x [.., L, N] over an interval of steps (dim -2) ending or starting at each step t:
    "before" sum_{m < t}, "through" sum_{m <= t}, "after" sum_{m > t}.

    One product with a triangular matrix of ones, in place of a cumulative sum (and, for
    "after", two flips around it): each sum is still formed directly from its own terms, never
    as a difference of two longer sums, so sums of log-decays (all <= 0) keep their relative
    precision; and for the chunk lengths used here (4 to 128 steps) one small matrix product is
    2-2.5x faster on the CPU than the cumulative sum and its flips."""
    L = x.shape[-2]
    diagonal = {"before": -1, "through": 0, "after": 1}[interval]
    ones = torch.ones(L, L, dtype=x.dtype, device=x.device)
    triangle = torch.triu(ones, diagonal) if interval == "after" else torch.tril(ones, diagonal)
    return triangle @ x


def to_chunks(x: Tensor, chunk: int, dtype: torch.dtype) -> Tensor:
    """[B, T, H, N] -> [B, H, n_chunks, chunk, N] in `dtype`, zero padded at the end."""
    B, T, H, N = x.shape
    n_chunks = -(-T // chunk)
    x = x.to(dtype).transpose(1, 2)
    if n_chunks * chunk > T:
        x = torch.nn.functional.pad(x, (0, 0, 0, n_chunks * chunk - T))
    return x.reshape(B, H, n_chunks, chunk, N)


def chunked_log_decay(w: Tensor, chunk: int, dtype: torch.dtype) -> Tensor:
    """The log-decays -exp(w) of raw decays w [B, T, H, N], as chunks [B, H, n, chunk, N].

    Formed from the raw w directly, so that decays close to 1 keep their distance from 1.
    Padded steps get log-decay 0 (no decay). w is capped at W_MAX, where the decay is 0 to the
    last digit anyway (exp(-exp(W_MAX)) underflows even in float64): an infinite log-decay
    would make a 0 * inf gradient."""
    return to_chunks(-torch.exp(w.to(dtype).clamp(max=W_MAX)), chunk, dtype)


def floored_exp(x: Tensor) -> Tensor:
    """exp of an exponent <= 0, with those below EXP_FLOOR taken as it: exp(-60) ~ 1e-26 is
    nothing next to any term it is added to, and it keeps the products out of the subnormal
    range, where CPU arithmetic is many times slower (fast decays would then cost more)."""
    return torch.exp(x.clamp(min=EXP_FLOOR))


def diagonal_scores(r: Tensor, k: Tensor, log_decay: Tensor) -> Tensor:
    """sum_j r_t[j] k_s[j] prod_{s<m<t} decay_m[j] for s < t within each block of 4 steps (0
    elsewhere): [.., 4, 4]. r, k and log_decay [.., 4, N] broadcast against each other (row
    sets against column sets).

    A block of 4 has six such pairs, and each is written out with exactly the decays between
    its two steps: none for neighbours, decay_1, decay_2 or both for the others. No exponent
    is positive and no factor has to cancel another, so values and gradients are exact for any
    decay (a factored form exp(P_{t-1} - P_ref) exp(P_ref - P_s) would leave rounding noise
    of the size of the uncancelled factors in the gradient of w, far above the true gradient
    when decays are fast)."""
    if r.shape[-2] != DIAGONAL_BLOCK:
        raise ValueError(f"diagonal_scores takes blocks of {DIAGONAL_BLOCK} steps, got {r.shape[-2]}")
    r0, r1, r2, r3 = r.unbind(-2)
    k0, k1, k2, k3 = k.unbind(-2)
    decay = floored_exp(log_decay)
    d1, d2 = decay[..., 1, :], decay[..., 2, :]

    def dot(a: Tensor, b: Tensor) -> Tensor:
        return (a * b).sum(-1)

    k0d1 = k0 * d1
    pairs = [dot(r1, k0), dot(r2, k0d1), dot(r2, k1), dot(r3, k0d1 * d2), dot(r3, k1 * d2), dot(r3, k2)]
    shape = torch.broadcast_shapes(*(x.shape for x in pairs))
    p0, p1, p2, p3, p4, p5 = (x.expand(shape) for x in pairs)
    o = pairs[0].new_zeros(()).expand(shape)
    # row-major 4 x 4, zero on and above the diagonal; stacked rather than gathered by an index
    # tensor, which would be a host-to-device copy (not allowed while a CUDA graph is captured)
    grid = [o, o, o, o, p0, o, o, o, p1, p2, o, o, p3, p4, p5, o]
    return torch.stack(grid, -1).unflatten(-1, (DIAGONAL_BLOCK, DIAGONAL_BLOCK))


def intra_chunk_scores(r: Tensor, k: Tensor, log_decay: Tensor) -> Tensor:
    """sum_j r_t[j] k_s[j] prod_{s<m<t} decay_m[j] for s < t inside each chunk (0 elsewhere):
    r, k and log_decay [.., L, N] of the same shape -> [.., L, L]. One row set against one
    column set of intra_chunk_set_scores."""
    return intra_chunk_set_scores(r.unsqueeze(-2), k.unsqueeze(-2), log_decay)


def intra_chunk_set_scores(rows: Tensor, cols: Tensor, log_decay: Tensor) -> Tensor:
    """The scores sum_j x_t[j] y_s[j] prod_{s<m<t} decay_m[j] (s < t inside each chunk, 0
    elsewhere) of R row sets x against C column sets y that share the decays, at the same cost
    whatever the decays, and with no exponent above 0. rows [.., L, R, N], cols [.., L, C, N],
    log_decay [.., L, N] -> [.., L * R, L * C], indexed (t, row set) by (s, column set): one
    set's scores are the strided view [.., :, i, :, j] of its unflattened result.

    By halving: a block of 2h steps is its two halves on the diagonal (the same problem,
    recursively, down to blocks of 4, written out by diagonal_scores) and one off-diagonal
    block, the second half's rows against the first half's columns. There the product splits
    at the boundary between the halves into a row factor (the decays from the second half's
    start to t-1) and a column factor (from s+1 to the first half's end), each a sum of
    log-decays over its own interval, hence <= 0: one matrix product, no overflow however fast
    the decays, and no factor that has to cancel another (so the gradients are as exact as the
    values). The sets sit beside the steps, so that each level's block is one matrix product
    of every set against every set, with nothing to broadcast or copy. No branch depends on
    the values, so the work is the same for every input, torch.compile sees one graph and
    torch.func.vmap can batch it."""
    *lead, L, R, N = rows.shape
    C = cols.shape[-2]
    if L % DIAGONAL_BLOCK or (L // DIAGONAL_BLOCK) & (L // DIAGONAL_BLOCK - 1):
        raise ValueError(f"the chunk must be {DIAGONAL_BLOCK} times a power of 2, got {L}")
    h = DIAGONAL_BLOCK
    # blocks of 4 steps, row sets against column sets: [.., L / 4, R, C, 4, 4]
    by_block = [x.unflatten(-3, (-1, h)).transpose(-3, -2) for x in (rows, cols)]   # [.., L / 4, set, 4, N]
    blocks = diagonal_scores(by_block[0].unsqueeze(-3), by_block[1].unsqueeze(-4),
                             log_decay.unflatten(-2, (-1, h))[..., None, None, :, :])
    batch = len(lead) + 1
    blocks = blocks.permute(*range(batch), batch + 2, batch, batch + 3, batch + 1)       # steps beside sets
    blocks = blocks.reshape(*lead, L // h, h * R, h * C)
    while h < L:
        # pairs of neighbouring blocks of h steps: [.., L / 2h, 2, h, (set,) N]
        x2, y2 = (x.unflatten(-3, (-1, 2, h)) for x in (rows, cols))
        d2 = log_decay.unflatten(-2, (-1, 2, h))
        to_t = interval_sums(d2[..., 1, :, :], "before")          # second half's start .. t-1
        from_s = interval_sums(d2[..., 0, :, :], "after")          # s+1 .. the first half's end
        # [.., L / 2h, h R, N] and [.., L / 2h, h C, N]
        x_rows = (x2[..., 1, :, :, :] * floored_exp(to_t).unsqueeze(-2)).flatten(-3, -2)
        y_cols = (y2[..., 0, :, :, :] * floored_exp(from_s).unsqueeze(-2)).flatten(-3, -2)
        cross = x_rows @ y_cols.transpose(-1, -2)                              # [.., L / 2h, h R, h C]
        first, second = blocks[..., 0::2, :, :], blocks[..., 1::2, :, :]
        blocks = torch.cat([torch.cat([first, torch.zeros_like(cross)], -1),
                            torch.cat([cross, second], -1)], -2)              # [.., L / 2h, 2h R, 2h C]
        h *= 2
    return blocks.squeeze(-3)
