"""The optional fla backend of WKV7 (flash-linear-attention's chunk_rwkv7): on a GPU with fla-core
installed it must give the torch chunked backend's outputs, final state and gradients; anywhere
else asking for it is a clear error, never a silent fallback."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from conrwkv.config import ModelConfig
from conrwkv.ops import wkv7
from conrwkv.ops.wkv7_torch import wkv7_chunked

HAS_FLA = importlib.util.find_spec("fla") is not None


def block_inputs(B, T, H, N, device, seed=0):
    """Inputs as an RWKV-7 block makes them: a = -kk, b = kk * iclr, kk unit-norm per head."""
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, T, H, N, generator=g) for _ in range(3))
    w = torch.rand(B, T, H, N, generator=g) * 7.5 - 8.0
    kk = torch.nn.functional.normalize(torch.randn(B, T, H, N, generator=g), dim=-1)
    iclr = torch.rand(B, T, H, N, generator=g)
    state = 0.1 * torch.randn(B, H, N, N, generator=g)
    return [x.to(device) for x in (r, w, k, v, -kk, kk * iclr, state)]


@pytest.mark.skipif(torch.cuda.is_available() and HAS_FLA, reason="checks the error where fla cannot run")
def test_fla_backend_is_a_clear_error_where_it_cannot_run():
    r, w, k, v, a, b, state = block_inputs(1, 8, 2, 16, "cpu")
    with pytest.raises(RuntimeError, match="wkv7: backend 'fla'"):
        wkv7(r, w, k, v, a, b, state, backend="fla")
    assert ModelConfig(arch="x070", n_embd=64, head_size=16, wkv_backend="fla").wkv_backend == "fla"


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_FLA, reason="needs the fla-core package")
@pytest.mark.parametrize("T,with_state", [(64, False), (100, True), (1024, True)])
def test_fla_matches_the_torch_backend_forward_and_backward(T, with_state):
    inputs = block_inputs(2, T, 4, 64, "cuda")
    if not with_state:
        inputs[-1] = None
    results = {}
    for name in ("fla", "torch"):
        leaves = [x.clone().requires_grad_(True) if x is not None else None for x in inputs]
        if name == "fla":
            y, final = wkv7(*leaves[:6], leaves[6], return_state=True, backend="fla")
        else:
            y, final = wkv7_chunked(*leaves[:6], leaves[6])
        (y.float().pow(2).sum() + final.float().sum()).backward()
        results[name] = (y.float(), final.float(), [x.grad for x in leaves if x is not None])
    (y_fla, s_fla, g_fla), (y_ref, s_ref, g_ref) = results["fla"], results["torch"]
    scale = lambda t: t.abs().max().clamp(min=1.0)  # noqa: E731
    assert ((y_fla - y_ref).abs().max() / scale(y_ref)) < 2e-3
    assert ((s_fla - s_ref).abs().max() / scale(s_ref)) < 2e-3
    for got, expected in zip(g_fla, g_ref):
        assert ((got - expected).abs().max() / scale(expected)) < 5e-3
