"""The chunked WKV6 against the sequential reference: outputs, final state, every gradient."""

import importlib

import pytest
import torch
from factories import assert_matches_reference, rel

from conrwkv.ops import wkv6, wkv6_chunked, wkv6_sequential


def make_inputs(B, T, H, N, state, w_range=(-8.0, 1.0), dtype=torch.float32):
    r, k, v = (torch.randn(B, T, H, N, dtype=dtype) for _ in range(3))
    w = torch.empty(B, T, H, N, dtype=dtype).uniform_(*w_range)
    u = torch.randn(H, N, dtype=dtype)
    s = {"none": None, "shared": torch.randn(H, N, N, dtype=dtype),
         "per_row": torch.randn(B, H, N, N, dtype=dtype)}[state]
    return r, k, v, w, u, s


CASES = [  # (B, T, H, N, state)
    (2, 1, 2, 16, "per_row"),
    (1, 31, 2, 16, "none"),
    (3, 70, 3, 16, "shared"),
    (2, 64, 1, 64, "per_row"),
    (1, 100, 2, 64, "shared"),
]


@pytest.mark.parametrize("B,T,H,N,state", CASES)
def test_chunked_matches_sequential_forward_and_backward(B, T, H, N, state):
    inputs = make_inputs(B, T, H, N, state)
    y, s = assert_matches_reference(wkv6_chunked, wkv6_sequential, inputs, "r k v w u state")
    assert s.shape == (B, H, N, N)


def test_fast_decay_chunks_stay_exact():
    # raw w up to 4 makes a 32-step chunk decay by exp(-1700): a chunk-wide factoring of the
    # scores would overflow; the halved blocks must not
    inputs = make_inputs(2, 96, 2, 16, "per_row", w_range=(-1.0, 4.0))
    y, s = assert_matches_reference(wkv6_chunked, wkv6_sequential, inputs, "r k v w u state")
    assert torch.isfinite(y).all()


def test_shared_state_equals_the_same_state_per_row():
    r, k, v, w, u, s = make_inputs(3, 40, 2, 16, "shared")
    y1, f1 = wkv6(r, k, v, w, u, s, return_state=True)
    y2, f2 = wkv6(r, k, v, w, u, s.expand(3, -1, -1, -1).clone(), return_state=True)
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(f1, f2)


def test_two_halves_with_carried_state_equal_one_call():
    r, k, v, w, u, s = make_inputs(2, 50, 2, 16, "per_row")
    y, final = wkv6(r, k, v, w, u, s, return_state=True)
    y1, mid = wkv6(r[:, :23], k[:, :23], v[:, :23], w[:, :23], u, s, return_state=True)
    y2, end = wkv6(r[:, 23:], k[:, 23:], v[:, 23:], w[:, 23:], u, mid, return_state=True)
    assert rel(torch.cat([y1, y2], 1), y) < 1e-6
    assert rel(end, final) < 1e-6


def test_dispatch_returns_y_alone_and_keeps_dtype():
    r, k, v, w, u, _ = make_inputs(1, 5, 1, 16, "none", dtype=torch.float64)
    y = wkv6(r, k, v, w, u)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float64 and y.shape == r.shape


@pytest.mark.parametrize("bad,message", [
    (lambda a: {**a, "k": a["k"][:, :-1]}, "k has shape"),
    (lambda a: {**a, "u": a["u"][None]}, "u has shape"),
    (lambda a: {**a, "r": a["r"][0]}, "r has shape"),
    (lambda a: {**a, "state": torch.zeros(2, 2, 16, 15)}, "state has shape"),
    (lambda a: {**a, "w": a["w"].long()}, "w has dtype"),
])
def test_bad_input_names_the_tensor(bad, message):
    r, k, v, w, u, s = make_inputs(2, 8, 2, 16, "per_row")
    args = bad(dict(r=r, k=k, v=v, w=w, u=u, state=s))
    with pytest.raises(ValueError, match=message):
        wkv6(**args)


def test_unknown_backend_is_refused():
    r, k, v, w, u, _ = make_inputs(1, 4, 1, 16, "none")
    with pytest.raises(ValueError, match="unknown backend"):
        wkv6(r, k, v, w, u, backend="triton")


def test_auto_is_torch_on_cpu_and_says_so_once(caplog, monkeypatch):
    dispatch = importlib.import_module("conrwkv.ops.wkv6")     # the module, not the function

    monkeypatch.setattr(dispatch, "_resolved", {})
    r, k, v, w, u, _ = make_inputs(1, 3, 1, 16, "none")
    with caplog.at_level("INFO", logger="conrwkv.ops.wkv6"):
        for _ in range(3):
            wkv6(r, k, v, w, u)
    assert dispatch.resolve_backend("auto", r.device) == "torch"
    assert [rec.getMessage() for rec in caplog.records].count(
        "wkv6: backend 'torch' (chunked) for cpu tensors") == 1


# Raw decays w for decay = exp(-exp(w)) from 1 - 1e-4 (w = log(1e-4)) down to 1e-9 (w = log(-log(1e-9))).
W_SLOWEST, W_FASTEST = -9.2103, 3.0312


@pytest.mark.parametrize("w_range", [(W_SLOWEST, W_FASTEST), (W_SLOWEST, W_SLOWEST + 0.01),
                                     (W_FASTEST - 0.01, W_FASTEST)])
def test_exact_from_the_slowest_to_the_fastest_decays(w_range):
    inputs = make_inputs(2, 77, 2, 16, "per_row", w_range=w_range)
    assert_matches_reference(wkv6_chunked, wkv6_sequential, inputs, "r k v w u state")


def test_a_decay_of_zero_gives_finite_outputs_and_gradients():
    inputs = make_inputs(1, 40, 1, 16, "per_row")
    inputs[3][:, 5:20] = 60.0                 # exp(-exp(60)): the decay is exactly 0
    inputs[3][:, 25] = float("inf")
    leaves = [x.clone().requires_grad_(True) for x in inputs]
    y, s = wkv6_chunked(*leaves)
    (y.sum() + s.sum()).backward()
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    for name, leaf in zip("r k v w u state".split(), leaves):
        assert torch.isfinite(leaf.grad).all(), name
    y_ref, s_ref = wkv6_sequential(*(x.double() for x in inputs))
    assert rel(y, y_ref) < 1e-5 and rel(s, s_ref) < 1e-5


def test_one_graph_whatever_the_decays():
    # fullgraph=True fails on any branch that depends on tensor values (a graph break)
    compiled = torch.compile(wkv6_chunked, backend="eager", fullgraph=True, dynamic=False)
    for w_range in ((-8.0, -4.0), (0.0, 3.0)):
        inputs = make_inputs(1, 64, 1, 16, "none", w_range=w_range)
        y, s = compiled(*inputs)
        assert rel(y, wkv6_sequential(*(x.double() if x is not None else None for x in inputs))[0]) < 1e-5
