"""ops/sequence_split.py: WKV6 cut into segments that run side by side (the CUDA backend's path
for small B x H) equals the whole sequence, values and every gradient with the initial state's,
in float64 on the torch backend; and the number of segments follows from B, H, T and the SMs.
The kernels' own run of it (under the host emulator) is in test_wkv6_cuda.py."""

from __future__ import annotations

import pytest
import torch

from conrwkv.ops.sequence_split import (
    MIN_SEGMENT,
    MIN_SEGMENTS,
    choose_segments,
    segment_length,
    split_sequence,
)
from conrwkv.ops.wkv6_torch import wkv6_chunked


def torch_segments(r, k, v, w, u, state, return_state):
    assert state is None and return_state          # every segment starts from zero
    return wkv6_chunked(r, k, v, w, u, state)


def inputs(B, T, H, N, state):
    g = torch.Generator().manual_seed(T * 7 + B)
    r, k, v = (torch.randn(B, T, H, N, generator=g, dtype=torch.float64) for _ in range(3))
    w = torch.rand(B, T, H, N, generator=g, dtype=torch.float64) * 10 - 8     # decays 1 - 3e-4 .. 6e-4
    u = torch.randn(H, N, generator=g, dtype=torch.float64)
    s0 = {"none": None, "shared": torch.randn(H, N, N, generator=g, dtype=torch.float64),
          "per_row": torch.randn(B, H, N, N, generator=g, dtype=torch.float64)}[state]
    return [x.requires_grad_(True) if x is not None else None for x in (r, k, v, w, u, s0)]


def outputs_and_grads(fn, leaves, dy, dfinal):
    y, final = fn(*leaves)
    wanted = [x for x in leaves if x is not None]
    grads = torch.autograd.grad((y * dy).sum() + (final * dfinal).sum(), wanted)
    return [y, final, *grads]


@pytest.mark.parametrize("B,T,state,length", [
    (2, 300, "per_row", 37),      # boundaries inside the kernels' chunks, a short last segment
    (1, 300, "shared", 64),       # at chunk edges
    (2, 300, "none", 299),        # a last segment of one step
    (1, 40, "per_row", 1),        # every step a segment of its own
    (2, 1, "shared", 1),
])
def test_segments_equal_the_whole_sequence(B, T, state, length):
    leaves = inputs(B, T, 2, 16, state)
    dy = torch.randn(B, T, 2, 16, dtype=torch.float64)
    dfinal = torch.randn(B, 2, 16, 16, dtype=torch.float64)
    whole = outputs_and_grads(lambda *x: wkv6_chunked(*x), leaves, dy, dfinal)
    split = outputs_and_grads(lambda *x: split_sequence(torch_segments, *x, length), leaves, dy, dfinal)
    names = ["y", "final", "r", "k", "v", "w", "u", "state"][:len(whole)]
    for name, got, ref in zip(names, split, whole):
        assert got.shape == ref.shape, name
        assert torch.allclose(got, ref, rtol=1e-10, atol=1e-12), (name, (got - ref).abs().max().item())


def test_the_split_keeps_the_input_dtype_and_returns_a_float32_state():
    r, k, v, w, u, s0 = (x.detach().float() for x in inputs(1, 50, 1, 16, "shared"))
    y, final = split_sequence(torch_segments, r.bfloat16(), k.bfloat16(), v.bfloat16(), w, u, s0, 16)
    assert y.dtype == torch.bfloat16 and final.dtype == torch.float32 and final.shape == (1, 1, 16, 16)
    y_whole, _ = wkv6_chunked(r.bfloat16(), k.bfloat16(), v.bfloat16(), w, u, s0)
    assert ((y.float() - y_whole.float()).norm() / y_whole.float().norm()) < 1e-2    # bf16 rounding


def test_segments_are_chosen_only_where_b_x_h_leaves_sms_idle():
    assert choose_segments(8, 32, 4096, sm_count=132) == 1          # 256 blocks: the GPU is full
    assert choose_segments(1, 32, 16384, sm_count=132) == 8          # 32 blocks -> 256: one wave, two per SM
    assert choose_segments(2, 32, 16384, sm_count=132) == 1          # 4 segments would be slower
    assert choose_segments(1, 1, 16384, sm_count=132) == 16384 // MIN_SEGMENT
    assert choose_segments(1, 1, 64 * MIN_SEGMENT, sm_count=132) == 64
    assert choose_segments(1, 2, MIN_SEGMENTS * MIN_SEGMENT - 1, sm_count=132) == 1   # too short to cut
    for T, n in ((4096, 5), (16384, 64), (1000, 3)):
        length = segment_length(T, n)
        assert length % 16 == 0 and (n - 1) * length < T <= n * length
