"""Sequence-parallel WKV6: a sequence cut into segments that run side by side, for shapes where
B x H alone cannot fill the GPU (docs/notes-wkv6-cuda.md, "Sequence-parallel state passing").

The CUDA kernels give one thread block to each (batch row, head) and walk it through every chunk
of the sequence. At B = 2, H = 32 that is 64 blocks on a GPU of 132 SMs, each walking 256 chunks
of a 4096-step sequence one after another. Cut the sequence into S segments instead, and let each
segment be a batch row of its own:

1. every segment runs from a zero state, all B x S x H of them in one launch: its outputs y_local
   and its final state S_local;
2. the states are passed on in order: the state entering segment i + 1 is
   diag(D_i) S_in(i) + S_local(i), where D_i is the product of segment i's decays per key channel
   (WKV6's transition is diagonal in the key index) and S_in(0) is the initial state;
3. each segment's outputs get what its incoming state contributes, all segments at once:
   y_t += (r_t * prod of the decays from the segment's start to t - 1) @ S_in.

The final state is what step 2 makes after the last segment. Steps 2 and 3 are plain tensor code,
so autograd gives the backward (the kernel's own backward for step 1, with the gradient of each
segment's final state), the initial state's gradient included, and torch.compile traces it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .chunking import shift

KERNEL_CHUNK = 16        # the CUDA kernels' chunk: the chosen segments are whole chunks
# Measured on an H200 (docs/benchmarks.md, "GPU run of WKV v2 (issue 20)"): the state passing and
# the output correction are torch code of a few dozen launches and a float32 pass over the whole
# input, which cost more than the kernels' time they save unless each of at least 8 segments is
# long: 8 segments of 2048 steps at B1 H32 T16384 ran 1.62x faster than the whole sequence, while
# 2 to 4 segments or segments of 256 to 1024 steps ran 1.2x to 5.3x slower.
MIN_SEGMENT = 2048       # steps per segment
MIN_SEGMENTS = 8         # fewer than this: the sequence is not cut
BLOCKS_PER_SM = 2        # thread blocks of the kernels that fit on one SM (docs/notes-wkv6-cuda.md)
# The raw decay of a padded step: its decay exp(-exp(-60)) rounds to exactly 1 in float32, so a
# padded step (k = v = 0) leaves the state as it is.
PAD_W = -60.0

WKV6Op = Callable[..., tuple[Tensor, Tensor]]


def choose_segments(B: int, H: int, T: int, sm_count: int) -> int:
    """How many segments to cut a sequence into: 1 (the sequence as it is) when the B x H blocks
    already fill the GPU's SMs, else as many as fit BLOCKS_PER_SM blocks per SM in one wave,
    with segments of at least MIN_SEGMENT steps, if that makes MIN_SEGMENTS or more."""
    blocks = B * H
    if blocks >= sm_count:
        return 1
    segments = min(BLOCKS_PER_SM * sm_count // blocks, T // MIN_SEGMENT)
    return segments if segments >= MIN_SEGMENTS else 1


def segment_length(T: int, segments: int) -> int:
    """Steps per segment for `segments` segments of a T-step sequence: whole kernel chunks."""
    return KERNEL_CHUNK * math.ceil(T / (segments * KERNEL_CHUNK))


def _as_segments(x: Tensor, n: int, length: int, fill: float) -> Tensor:
    """[B, T, H, N] -> [B * n, length, H, N], the end padded with `fill`."""
    B, T, H, N = x.shape
    x = F.pad(x, (0, 0, 0, 0, 0, n * length - T), value=fill)
    return x.reshape(B * n, length, H, N)


def split_sequence(op: WKV6Op, r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor,
                   state: Tensor | None, length: int) -> tuple[Tensor, Tensor]:
    """WKV6 by segments of `length` steps (any length >= 1: the boundaries may fall inside a
    kernel chunk). `op(r, k, v, w, u, state, return_state)` is the WKV6 implementation each
    segment runs on, (y, final state) as wkv6 returns them. Returns (y in r's dtype, final state
    [B, H, N, N] float32)."""
    B, T, H, N = r.shape
    n = math.ceil(T / length)
    pieces = [_as_segments(x, n, length, 0.0) for x in (r, k, v)]
    w_pieces = _as_segments(w, n, length, PAD_W)
    y_local, s_local = op(*pieces, w_pieces, u, None, True)

    # decays in float32 (float64 when given): as in the torch backends, never in half precision
    dt = torch.promote_types(r.dtype, torch.float32)
    log_decay = -torch.exp(w_pieces.to(dt)).reshape(B, n, length, H, N)
    to_t = torch.cumsum(shift(log_decay, 1, dim=2), dim=2)           # segment start .. t - 1
    segment_decay = torch.exp(log_decay.sum(2))                       # [B, n, H, N]
    s_local = s_local.to(dt).reshape(B, n, H, N, N)

    incoming = r.new_zeros(B, H, N, N, dtype=dt) if state is None else state.to(dt).expand(B, H, N, N)
    starts = []
    for i in range(n):
        starts.append(incoming)
        incoming = segment_decay[:, i, :, :, None] * incoming + s_local[:, i]
    r_decayed = pieces[0].to(dt).reshape(B, n, length, H, N) * torch.exp(to_t)
    carried = torch.einsum("bslhj,bshji->bslhi", r_decayed, torch.stack(starts, 1))
    y = y_local.to(dt).reshape(B, n, length, H, N) + carried
    return y.reshape(B, n * length, H, N)[:, :T].to(r.dtype), incoming
