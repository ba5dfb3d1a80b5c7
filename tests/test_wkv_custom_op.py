"""The WKV custom ops conrwkv::wkv6 and conrwkv::wkv7 (conrwkv.ops.wkv_op).

CPU: torch.library.opcheck on both ops (schema, fake implementation, autograd registration,
AOT dispatch; gradients included), with and without an initial state, and fake against real
outputs of their backward ops; the ops equal the torch backend exactly, values and gradients;
whole small models (x060 and x070) compiled with torch.compile(fullgraph=True) through the ops
equal eager in logits and every parameter gradient, and so does compile_model() on the plain
torch backend. CUDA (skipped without a GPU): the same for the kernels behind conrwkv::wkv6, and
compile_model() (what train.py --compile applies) against eager in the LM loss and gradients.
"""

from __future__ import annotations

import pytest
import torch

from conrwkv.config import ModelConfig
from conrwkv.model import RWKV
from conrwkv.ops import torch_backend_through_ops, wkv6, wkv6_chunked, wkv7, wkv7_chunked
from conrwkv.ops.wkv_op import wkv6_op, wkv7_op

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def wkv6_inputs(B, T, H, N, state, device="cpu", dtype=torch.float32, grad=True):
    r, k, v = (torch.randn(B, T, H, N, device=device, dtype=dtype) for _ in range(3))
    w = torch.empty(B, T, H, N, device=device).uniform_(-6.0, 1.0).to(dtype)
    u = torch.randn(H, N, device=device)
    s = {"none": None, "shared": torch.randn(H, N, N, device=device),
         "per_row": torch.randn(B, H, N, N, device=device)}[state]
    return [None if x is None else x.requires_grad_(grad) for x in (r, k, v, w, u, s)]


def wkv7_inputs(B, T, H, N, state):
    r, k, v = (torch.randn(B, T, H, N) for _ in range(3))
    w = torch.empty(B, T, H, N).uniform_(-6.0, 1.0)
    kk = torch.nn.functional.normalize(torch.randn(B, T, H, N), dim=-1)
    a, b = -kk, kk * torch.rand(B, T, H, N)
    s = {"none": None, "shared": torch.randn(H, N, N), "per_row": torch.randn(B, H, N, N)}[state]
    return [None if x is None else x.requires_grad_(True) for x in (r, w, k, v, a, b, s)]


# ---------------------------------------------------------------- opcheck

@pytest.mark.parametrize("state", ["none", "shared"])
@pytest.mark.parametrize("return_state", [True, False])
def test_opcheck_wkv6(state, return_state):
    inputs = wkv6_inputs(2, 9, 2, 8, state)
    torch.library.opcheck(torch.ops.conrwkv.wkv6, (*inputs, return_state, True))


@pytest.mark.parametrize("state", ["none", "per_row"])
@pytest.mark.parametrize("return_state", [True, False])
def test_opcheck_wkv7(state, return_state):
    inputs = wkv7_inputs(2, 9, 2, 8, state)
    torch.library.opcheck(torch.ops.conrwkv.wkv7, (*inputs, return_state))


def assert_fake_matches_real(op, args):
    from torch._subclasses.fake_tensor import FakeTensorMode

    real = op(*args)
    with FakeTensorMode() as mode:
        fake = op(*(mode.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in args))
    for a, b in zip(real, fake):
        assert (a.shape, a.dtype) == (b.shape, b.dtype) and a.is_contiguous() and b.is_contiguous()


@pytest.mark.parametrize("state", ["none", "per_row"])
def test_backward_ops_fake_matches_real(state):
    # Not opcheck: its dispatch modes read the storage of every tensor, and the CPU backward's
    # torch.func.vjp works on functorch wrappers, which have none. The forward ops' opcheck
    # (autograd and AOT tests) and the compiled models below run these backward ops too.
    inputs6 = [None if x is None else x.detach() for x in wkv6_inputs(2, 5, 1, 8, state)]
    dy, dfinal = torch.randn(2, 5, 1, 8), torch.randn(2, 1, 8, 8)
    assert_fake_matches_real(torch.ops.conrwkv.wkv6_backward, (*inputs6, torch.empty(0), dy, dfinal))
    assert_fake_matches_real(torch.ops.conrwkv.wkv6_backward, (*inputs6, torch.empty(0), dy, None))
    inputs7 = [None if x is None else x.detach() for x in wkv7_inputs(2, 5, 1, 8, state)]
    assert_fake_matches_real(torch.ops.conrwkv.wkv7_backward, (*inputs7, dy, dfinal))


# ---------------------------------------------------------------- the ops are the torch backend

def grads_of(fn, inputs, T_shape):
    torch.manual_seed(1)
    y, final = fn(*inputs)
    dy, dfinal = torch.randn(y.shape), torch.randn(final.shape)    # not randn_like: strides differ
    leaves = [x for x in inputs if x is not None]
    return (y, final, *torch.autograd.grad([y, final], leaves, [dy, dfinal]))


@pytest.mark.parametrize("T", [1, 37])
@pytest.mark.parametrize("state", ["none", "shared", "per_row"])
def test_ops_equal_the_torch_backend_exactly(T, state):
    inputs6 = wkv6_inputs(2, T, 2, 8, state)
    got = grads_of(wkv6_op, inputs6, T)
    want = grads_of(lambda *x: wkv6(*x, return_state=True, backend="torch"), inputs6, T)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    inputs7 = wkv7_inputs(2, T, 2, 8, state)
    got = grads_of(wkv7_op, inputs7, T)
    want = grads_of(lambda *x: wkv7(*x, return_state=True), inputs7, T)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_only_the_final_state_or_only_y_can_carry_the_gradient():
    inputs = wkv6_inputs(1, 20, 1, 8, "shared")
    y, final = wkv6_op(*inputs)
    y_ref, final_ref = wkv6_chunked(*inputs)
    g = torch.autograd.grad(final.sum(), inputs, materialize_grads=True)
    g_ref = torch.autograd.grad(final_ref.sum(), inputs, materialize_grads=True)   # r: unused
    for a, b in zip(g, g_ref):
        assert torch.equal(a, b)
    inputs7 = wkv7_inputs(1, 20, 1, 8, "none")
    y, _ = wkv7_op(*inputs7, return_state=False)
    y_ref, _ = wkv7_chunked(*inputs7)
    leaves = [x for x in inputs7 if x is not None]
    for a, b in zip(torch.autograd.grad(y.sum(), leaves), torch.autograd.grad(y_ref.sum(), leaves)):
        assert torch.equal(a, b)


def test_dispatch_keeps_the_torch_backend_plain_code_outside_the_switch(monkeypatch):
    # vmap (lm/ensemble.py) needs the plain code: the ops have no vmap rule.
    from conrwkv.ops import wkv_op

    calls = []
    monkeypatch.setattr(wkv_op, "wkv6_op", lambda *a: calls.append(a) or pytest.fail("op used"))
    r, k, v, w, u, _ = wkv6_inputs(1, 4, 1, 8, "none", grad=False)
    wkv6(r, k, v, w, u, backend="torch")
    wkv6(r, k, v, w, u, backend="auto")
    assert not calls and not wkv_op.torch_backend_uses_ops()
    with torch_backend_through_ops():
        assert wkv_op.torch_backend_uses_ops()
    assert not wkv_op.torch_backend_uses_ops()


# ---------------------------------------------------------------- whole models, fullgraph

def small_model(arch, **options):
    torch.manual_seed(0)
    model = RWKV(ModelConfig(vocab_size=11, n_layer=2, n_embd=32, head_size=16, conv_kernel=3,
                              arch=arch, wkv_backend="torch", **options))
    with torch.no_grad():      # away from the neutral init, so every parameter gets a gradient
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def logits_and_grads(model, forward, idx):
    model.zero_grad(set_to_none=True)
    logits, state = forward(idx)
    loss = logits.square().mean() + sum(s.wkv.square().mean() for s in state)
    loss.backward()
    # (x070's block 0 leaves its value-residual gate v0, v1, v2 unused: no gradient)
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(eager, compiled, tol=1e-5):
    torch.testing.assert_close(compiled[0], eager[0], rtol=tol, atol=tol)
    assert eager[1].keys() == compiled[1].keys()
    for name in eager[1]:
        torch.testing.assert_close(compiled[1][name], eager[1][name], rtol=tol, atol=tol, msg=name)


def recording(backend="aot_eager"):
    """A torch.compile backend that keeps the dynamo graphs and hands them to `backend`."""
    from torch._dynamo.backends.registry import lookup_backend

    graphs = []

    def compile_fn(gm, example_inputs):
        graphs.append(gm)
        return lookup_backend(backend)(gm, example_inputs)

    return compile_fn, graphs


@pytest.mark.parametrize("arch,op", [("x060", "wkv6"), ("x070", "wkv7")])
@pytest.mark.parametrize("state_tuning", [False, True])
def test_whole_model_through_the_op_compiles_fullgraph_and_equals_eager(arch, op, state_tuning):
    model = small_model(arch, state_tuning=state_tuning)
    idx = torch.randint(0, 11, (2, 21))
    eager = logits_and_grads(model, model, idx)
    torch._dynamo.reset()
    backend, graphs = recording()
    compiled_forward = torch.compile(model, fullgraph=True, backend=backend)
    with torch_backend_through_ops():
        compiled = logits_and_grads(model, compiled_forward, idx)
    assert len(graphs) == 1
    targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert sum(t in (f"conrwkv.{op}", f"conrwkv.{op}.default") for t in targets) == 2, targets
    assert_same(eager, compiled)


@pytest.mark.parametrize("arch", ["x060", "x070"])
def test_compile_model_on_the_plain_torch_backend_equals_eager(arch):
    model = small_model(arch)
    idx = torch.randint(0, 11, (2, 21))
    eager = logits_and_grads(model, model, idx)
    torch._dynamo.reset()
    model.compile_model(backend="aot_eager")
    compiled = logits_and_grads(model, model, idx)
    assert_same(eager, compiled)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["x060", "x070"])
def test_whole_model_through_the_op_with_inductor_equals_eager(arch):
    model = small_model(arch)
    idx = torch.randint(0, 11, (2, 21))
    eager = logits_and_grads(model, model, idx)
    torch._dynamo.reset()
    compiled_forward = torch.compile(model, fullgraph=True)
    with torch_backend_through_ops():
        compiled = logits_and_grads(model, compiled_forward, idx)
    assert_same(eager, compiled, tol=1e-4)


# ---------------------------------------------------------------- CUDA

@pytest.mark.cuda
@pytest.mark.parametrize("state", ["none", "shared", "per_row"])
def test_opcheck_wkv6_on_cuda(state):
    inputs = wkv6_inputs(2, 70, 2, 64, state, device="cuda", dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.conrwkv.wkv6, (*inputs, True, True))


@pytest.mark.cuda
def test_whole_model_on_the_cuda_kernels_compiles_fullgraph_and_equals_eager():
    torch.manual_seed(0)
    model = RWKV(ModelConfig(vocab_size=11, n_layer=2, n_embd=128, head_size=64, conv_kernel=3,
                              wkv_backend="cuda", state_tuning=True)).cuda()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    idx = torch.randint(0, 11, (2, 100), device="cuda")
    eager = logits_and_grads(model, model, idx)
    torch._dynamo.reset()
    backend, graphs = recording()
    compiled = logits_and_grads(model, torch.compile(model, fullgraph=True, backend=backend), idx)
    assert len(graphs) == 1
    assert_same(eager, compiled, tol=1e-4)
    torch._dynamo.reset()
    compiled = logits_and_grads(model, torch.compile(model, fullgraph=True), idx)
    assert_same(eager, compiled, tol=2e-3)


@pytest.mark.cuda
def test_compile_model_on_the_cuda_kernels_equals_eager_in_the_lm_loss_and_gradients():
    torch.manual_seed(0)
    model = RWKV(ModelConfig(vocab_size=50, n_layer=2, n_embd=128, head_size=64, conv_kernel=3,
                              wkv_backend="cuda")).cuda()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = torch.randint(0, 50, (3, 301), device="cuda")

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        logits, _ = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    eager = loss_and_grads()
    torch._dynamo.reset()
    model.compile_model()
    compiled = loss_and_grads()
    assert_same(eager, compiled, tol=2e-3)
