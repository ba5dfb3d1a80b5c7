"""WKV7: the sequential reference against the recurrence as the `rwkv` package writes it, and
the chunked version against the reference (outputs, final state, every gradient) at every decay
regime; the chunked version under torch.func.vmap (several models as one batched computation,
a whole x070 model included) and torch.compile(fullgraph=True)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from factories import assert_matches_reference, rel
from torch.func import functional_call, grad, stack_module_state, vmap

from conrwkv.config import ModelConfig
from conrwkv.model import RWKV
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
    # Slow channels in the first 40 steps, decays near 0 after: a chunk-wide factoring of the
    # later chunks' scores would overflow (a factor of exp(8 * e^4) ~ e^437); the halved blocks
    # take no exponent above 0.
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


# ---------------------------------------------------------------- every decay regime, no branch
REGIMES = {  # raw w ranges: decay exp(-exp(w)) per step
    "near 1": (-20.0, -15.0),           # 1 - decay ~ 2e-9 .. 3e-7
    "slow": (-12.0, -8.0),
    "normal": (-6.0, 1.0),
    "fast": (1.0, 4.0),                 # down to exp(-e^4) ~ 2e-24
    "near 0": (3.0, 6.0),               # down to exp(-e^6) ~ 1e-175, 0 in float32
    "all of them": (-20.0, 10.0),       # w past chunking.W_MAX too
}


@pytest.mark.parametrize("chunk", [4, 8, 16, 32])
@pytest.mark.parametrize("regime", REGIMES)
def test_chunked_matches_sequential_at_every_decay_regime_and_chunk(regime, chunk):
    inputs = make_inputs(2, 45, 2, 16, "per_row", REGIMES[regime])
    chunked = lambda *xs: wkv7_chunked(*xs, chunk=chunk)  # noqa: E731
    y, _ = assert_matches_reference(chunked, wkv7_sequential, inputs, "r w k v a b state")
    assert torch.isfinite(y).all()


def test_fast_and_slow_steps_mixed_inside_chunks_stay_exact():
    # Every other 3-step stretch decays to 0 at once, the rest barely decays, and one channel
    # in four is slow throughout: blocks whose factors would have to cancel across a fast
    # stretch (exp(+-3 e^5) ~ e^445) next to ones that need 1 - decay to 6 digits.
    inputs = list(make_inputs(2, 64, 2, 64, "shared", (-14.0, -9.0)))
    fast = (torch.arange(64) // 3) % 2 == 1
    inputs[1][:, fast] = torch.empty_like(inputs[1][:, fast]).uniform_(2.0, 5.0)
    inputs[1][..., ::4] = -13.0
    y, _ = assert_matches_reference(wkv7_chunked, wkv7_sequential, inputs, "r w k v a b state")
    assert torch.isfinite(y).all()


def test_decays_that_are_0_even_in_float64_give_exact_values_and_no_w_gradient():
    # exp(-exp(w)) < 1e-64 for every step: the reference's w gradient is below 1e-60, nothing
    # float32 can hold; every other gradient must still match, and w's be finite and ~0.
    inputs = make_inputs(2, 40, 2, 16, "per_row", (5.0, 12.0))
    leaves = [x.clone().requires_grad_(True) for x in inputs]
    leaves64 = [x.detach().double().requires_grad_(True) for x in inputs]
    y, s = wkv7_chunked(*leaves)
    y_ref, s_ref = wkv7_sequential(*leaves64)
    assert rel(y, y_ref) < 1e-5 and rel(s, s_ref) < 1e-5
    (y.square().sum() + s.sum()).backward()
    (y_ref.square().sum() + s_ref.sum()).backward()
    for name, x, x64 in zip("r w k v a b state".split(), leaves, leaves64):
        assert torch.isfinite(x.grad).all(), name
        if name == "w":
            assert x.grad.abs().max() < 1e-20 and x64.grad.abs().max() < 1e-20
        else:
            assert rel(x.grad, x64.grad) < 1e-5, name


# ---------------------------------------------------------------- vmap over models, compile
MODELS = 3


def per_model_inputs(state, w_range=(-6.0, 2.0)):
    """MODELS sets of inputs (B2 T37 H2 N16) and the same stacked along a leading model axis."""
    sets = [make_inputs(2, 37, 2, 16, state, w_range) for _ in range(MODELS)]
    stacked = [None if xs[0] is None else torch.stack(xs) for xs in zip(*sets)]
    return sets, stacked


def scalar_loss(r, w, k, v, a, b, state):
    y, s = wkv7_chunked(r, w, k, v, a, b, state)
    return (y * torch.cos(y)).sum() + (s * s.detach().sign()).sum()


@pytest.mark.parametrize("state", ["none", "shared", "per_row"])
def test_vmap_over_models_equals_a_loop_over_them(state):
    sets, stacked = per_model_inputs(state, (-6.0, 4.0))
    in_dims = tuple(None if x is None else 0 for x in stacked)
    y, s = vmap(wkv7_chunked, in_dims=in_dims)(*stacked)
    for m, inputs in enumerate(sets):
        y_m, s_m = wkv7_chunked(*inputs)
        torch.testing.assert_close(y[m], y_m, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(s[m], s_m, rtol=1e-6, atol=1e-6)


def test_vmap_of_grad_over_models_equals_each_models_own_backward():
    sets, stacked = per_model_inputs("per_row", (-6.0, 4.0))
    grads = vmap(grad(scalar_loss, argnums=tuple(range(7))))(*stacked)
    for m, inputs in enumerate(sets):
        leaves = [x.clone().requires_grad_(True) for x in inputs]
        scalar_loss(*leaves).backward()
        for name, got, x in zip("r w k v a b state".split(), grads, leaves):
            torch.testing.assert_close(got[m], x.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_the_graph_of_wkv7_chunked_has_no_break_forward_and_backward():
    # aot_eager traces the whole forward and its backward as graphs (fullgraph: any break is an
    # error) and runs them with eager kernels, so this checks the tracing in seconds.
    torch._dynamo.reset()
    compiled = torch.compile(wkv7_chunked, fullgraph=True, backend="aot_eager")
    inputs = make_inputs(1, 21, 1, 16, "per_row", (-6.0, 4.0))
    leaves = [x.clone().requires_grad_(True) for x in inputs]
    eager_leaves = [x.clone().requires_grad_(True) for x in inputs]
    y, s = compiled(*leaves)
    y_e, s_e = wkv7_chunked(*eager_leaves)
    torch.testing.assert_close(y, y_e, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s, s_e, rtol=1e-5, atol=1e-6)
    (y.square().sum() + s.sum()).backward()
    (y_e.square().sum() + s_e.sum()).backward()
    for name, x, x_e in zip("r w k v a b state".split(), leaves, eager_leaves):
        torch.testing.assert_close(x.grad, x_e.grad, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.slow
def test_torch_compile_fullgraph_runs_on_the_cpu_and_matches_eager():
    torch._dynamo.reset()
    compiled = torch.compile(wkv7_chunked, fullgraph=True)
    inputs = make_inputs(1, 12, 1, 16, "per_row", (-6.0, 4.0))
    y, s = compiled(*inputs, chunk=8)
    y_e, s_e = wkv7_chunked(*inputs, chunk=8)
    torch.testing.assert_close(y, y_e, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s, s_e, rtol=1e-5, atol=1e-5)


def test_vmap_of_grad_trains_several_x070_models_as_one_computation():
    config = ModelConfig(vocab_size=2, n_layer=1, n_embd=64, head_size=16, conv_kernel=3, arch="x070",
                         wkv_backend="torch")
    models = [RWKV(config) for _ in range(MODELS)]
    with torch.no_grad():                  # off the init, where zero weights hide most gradients
        for model in models:
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    tokens = torch.randint(0, 2, (MODELS, 2, 21))

    def next_token_loss(logits, idx):
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), idx[:, 1:].flatten())

    params, buffers = stack_module_state(models)
    skeleton = copy.deepcopy(models[0]).to("meta")

    def loss(p, b, idx):
        return next_token_loss(functional_call(skeleton, (p, b), (idx,))[0], idx)

    grads = vmap(grad(loss))(params, buffers, tokens)
    for m, model in enumerate(models):
        next_token_loss(model(tokens[m])[0], tokens[m]).backward()
        for name, p in model.named_parameters():
            # block 0 has no value residual: v0, v1, v2 get no gradient there
            expected = torch.zeros_like(p) if p.grad is None else p.grad
            torch.testing.assert_close(grads[name][m], expected, rtol=0, atol=1e-5, msg=name)
