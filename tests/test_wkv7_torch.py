"""WKV7: the sequential reference against the recurrence as the `rwkv` package writes it, and
the chunked version against the reference (outputs, final state, every gradient)."""

import pytest
import torch
import torch.nn.functional as F
from factories import assert_matches_reference, rel

from conrwkv.ops import wkv7, wkv7_chunked, wkv7_sequential

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def make_inputs(B, T, H, N, state, w_range=(-6.0, 1.0), dtype=torch.float32):
    """Inputs shaped as the x070 time mix makes them: a = -kk and b = kk * iclr, kk a unit
    vector per head and iclr in (0, 1), so the transition keeps the state bounded."""
    r, k, v = (torch.randn(B, T, H, N, dtype=dtype) for _ in range(3))
    w = torch.empty(B, T, H, N, dtype=dtype).uniform_(*w_range)
    kk = F.normalize(torch.randn(B, T, H, N, dtype=dtype), dim=-1)
    iclr = torch.rand(B, T, H, N, dtype=dtype)
    s = {"none": None, "shared": torch.randn(H, N, N, dtype=dtype),
         "per_row": torch.randn(B, H, N, N, dtype=dtype)}[state]
    return r, w, k, v, -kk, kk * iclr, s


def package_recurrence(r, w, k, v, a, b, state):
    """The package's RWKV_x070 loop, state [H, value, key], for one batch row; float64."""
    T, H, N = r.shape
    S = torch.zeros(H, N, N, dtype=torch.float64) if state is None else state.double().clone()
    ys = []
    for t in range(T):
        decay = torch.exp(-torch.exp(w[t].double()))
        vk = v[t].double().view(H, N, 1) @ k[t].double().view(H, 1, N)
        ab = a[t].double().view(H, N, 1) @ b[t].double().view(H, 1, N)
        S = S * decay.view(H, 1, N) + S @ ab + vk
        ys.append((S @ r[t].double().view(H, N, 1)).view(H, N))
    return torch.stack(ys), S


@pytest.mark.parametrize("T,N", [(1, 16), (7, 16), (5, 64)])
def test_sequential_is_the_package_recurrence_in_the_key_value_layout(T, N):
    r, w, k, v, a, b, s = make_inputs(2, T, 2, N, "per_row")
    y, final = wkv7_sequential(r, w, k, v, a, b, s)
    for row in range(2):
        y_ref, s_ref = package_recurrence(r[row], w[row], k[row], v[row], a[row], b[row],
                                          s[row].transpose(-1, -2))
        assert rel(y[row], y_ref) < 1e-5
        assert rel(final[row].transpose(-1, -2), s_ref) < 1e-5


CASES = [  # (B, T, H, N, state, w_range)
    (2, 1, 2, 16, "per_row", (-6.0, 1.0)),
    (1, 31, 2, 16, "none", (-6.0, 1.0)),
    (3, 37, 3, 16, "shared", (-6.0, 1.0)),
    (2, 32, 1, 64, "per_row", (-6.0, 1.0)),
    (1, 45, 2, 64, "shared", (-6.0, 1.0)),
    (2, 40, 2, 16, "per_row", (1.0, 4.0)),      # decays near 0: exp(-exp(4)) ~ 2e-24 per step
    (2, 40, 2, 16, "per_row", (-12.0, -8.0)),   # decays near 1: 1 - decay ~ 6e-6 .. 3e-4
]


@pytest.mark.parametrize("B,T,H,N,state,w_range", CASES)
def test_chunked_matches_sequential_forward_and_backward(B, T, H, N, state, w_range):
    inputs = make_inputs(B, T, H, N, state, w_range)
    y, s = assert_matches_reference(wkv7_chunked, wkv7_sequential, inputs, "r w k v a b state")
    assert s.shape == (B, H, N, N)


def test_chunks_that_decay_fast_take_the_exact_path_beside_factored_ones():
    # Slow channels in the first 40 steps, decays near 0 after: the later chunks would overflow
    # the factored scores (a factor of exp(8 * e^4) ~ e^437) and must be recomputed exactly.
    inputs = list(make_inputs(2, 80, 2, 16, "per_row"))
    inputs[1][:, 40:].uniform_(2.0, 4.0)
    leaves = [x.clone().requires_grad_(True) for x in inputs]
    leaves64 = [x.detach().double().requires_grad_(True) for x in inputs]
    y, s = wkv7_chunked(*leaves)
    y_ref, s_ref = wkv7_sequential(*leaves64)
    assert torch.isfinite(y).all() and rel(y, y_ref) < 1e-5 and rel(s, s_ref) < 1e-5
    (y.square().sum() + s.sum()).backward()
    (y_ref.square().sum() + s_ref.sum()).backward()
    for name, x, x64 in zip("r w k v a b state".split(), leaves, leaves64):
        assert torch.isfinite(x.grad).all() and rel(x.grad, x64.grad) < 1e-5, name


def test_sequential_gradients_are_exact():
    inputs = make_inputs(1, 3, 1, 4, "per_row", dtype=torch.float64)
    leaves = tuple(x.requires_grad_(True) for x in inputs)
    assert torch.autograd.gradcheck(lambda *xs: wkv7_sequential(*xs), leaves)


def test_dispatch_returns_the_state_and_chunks_any_length():
    inputs = make_inputs(2, 19, 2, 16, "shared")
    y, s = wkv7(*inputs[:6], inputs[6], return_state=True)
    y_ref, s_ref = wkv7_sequential(*inputs)
    assert rel(y, y_ref) < 1e-5 and rel(s, s_ref) < 1e-5
    assert torch.equal(wkv7(*inputs[:6], inputs[6]), y)
    # Two halves with the carried state are the whole sequence.
    first = [x[:, :8] for x in inputs[:6]]
    second = [x[:, 8:] for x in inputs[:6]]
    y1, s1 = wkv7(*first, inputs[6], return_state=True)
    y2, s2 = wkv7(*second, s1, return_state=True)
    assert rel(torch.cat([y1, y2], 1), y_ref) < 1e-5 and rel(s2, s_ref) < 1e-5


def test_bad_inputs_are_refused_with_the_name():
    r, w, k, v, a, b, s = make_inputs(1, 4, 2, 16, "none")
    with pytest.raises(ValueError, match="b has shape"):
        wkv7(r, w, k, v, a, b[:, :3])
    with pytest.raises(ValueError, match="state has shape"):
        wkv7(r, w, k, v, a, b, torch.zeros(2, 16, 8))
    with pytest.raises(ValueError, match="--wkv_backend"):
        wkv7(r, w, k, v, a, b, backend="cuda")
