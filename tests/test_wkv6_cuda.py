"""The project's CUDA WKV6 kernels (cuda/, conrwkv.ops.wkv6_cuda) against the float64 reference.

GPU tests (marked `cuda`, skipped without a GPU) run the built extension: y, the final state and
every gradient (r, k, v, w, u, initial state) within the bf16 band of wkv6_sequential on upcast
inputs. CPU tests check what needs no GPU: the clear errors, and the kernels' own logic, compiled
as host C++ under the emulator in cuda/emu (one coroutine per CUDA thread, tensor-core fragments
exchanged as the PTX layout says).
"""

from __future__ import annotations

import ctypes
import importlib
import shutil
import subprocess
import warnings

import pytest
import torch

from conrwkv.ops import wkv6, wkv6_sequential
from conrwkv.ops import wkv6_cuda as cuda_mod
from conrwkv.ops.sequence_split import choose_segments, segment_length, split_sequence
from conrwkv.ops.wkv6_torch import wkv6_chunked

TOL = 5e-3            # bf16 inputs and outputs; the peers sit at 1.7e-3 .. 3e-3
FAST_LIMIT2 = 86.0    # cuda/wkv6_common.cuh: chunks beyond it take the exact path


def rel(a, b):
    """Relative error; where the reference is exactly zero (dw at T = 1 without a state), the
    absolute error."""
    diff, ref = (a.double() - b.double()).norm(), b.double().norm()
    return (diff / ref if ref > 0 else diff).item()


def make_inputs(B, T, H, N, state, dtype=torch.bfloat16, w_range=(-8.0, 1.0), device="cpu", w_dtype=None):
    r, k, v = (torch.randn(B, T, H, N, device=device).to(dtype) for _ in range(3))
    w = torch.empty(B, T, H, N, device=device).uniform_(*w_range).to(w_dtype or dtype)
    u = torch.randn(H, N, device=device)
    s = {"none": None, "shared": torch.randn(H, N, N, device=device),
         "per_row": torch.randn(B, H, N, N, device=device)}[state]
    return r, k, v, w, u, s


def reference(inputs, dy, dsf):
    """y, final state and the gradients of <y, dy> + <final, dsf> in float64."""
    leaves = [x.detach().double().requires_grad_(True) if x is not None else None for x in inputs]
    y, final = wkv6_sequential(*leaves)
    torch.autograd.backward([y, final], [dy.double(), dsf.double()])
    return y, final, [x.grad if x is not None else None for x in leaves]


def exact_chunk_fraction(w):
    """Share of (chunk, b, h) whose decay is too fast for the factored path of the kernels."""
    B, T, H, N = w.shape
    g = -torch.exp(w.double())
    pad = (-T) % 16
    g = torch.nn.functional.pad(g, (0, 0, 0, 0, 0, pad)).reshape(B, -1, 16, H, N)
    crossing = -g[:, :, :15].sum(2) * 1.4426950408889634 > FAST_LIMIT2          # [B, chunks, H, N]
    return crossing.any(-1).double().mean().item()


# ----------------------------------------------------------------------------------------------
# CPU: errors and build plumbing

def test_kernel_sources_are_found_beside_the_package():
    src = cuda_mod.cuda_source_dir()
    for name in ("wkv6_binding.cpp", "wkv6_fwd.cu", "wkv6_bwd.cu", "wkv6_fwd.cuh", "wkv6_bwd.cuh"):
        assert (src / name).is_file(), name


def test_unbuilt_head_size_is_refused(monkeypatch):
    monkeypatch.setattr(cuda_mod, "load_extension", lambda *a: pytest.fail("must not build"))
    r, k, v, w, u, _ = make_inputs(1, 4, 1, 128, "none")
    with pytest.raises(ValueError, match="head size N = 128 is not built"):
        cuda_mod.wkv6_cuda(r, k, v, w, u)


def test_cpu_tensors_are_refused_before_any_build(monkeypatch):
    monkeypatch.setattr(cuda_mod, "load_extension", lambda *a: pytest.fail("must not build"))
    r, k, v, w, u, s = make_inputs(1, 4, 1, 64, "shared", dtype=torch.float32)
    with pytest.raises(ValueError, match="r is on cpu.*needs CUDA tensors"):
        cuda_mod.wkv6_cuda(r, k, v, w, u, s)


def test_missing_toolchain_is_named(monkeypatch):
    from torch.utils import cpp_extension

    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(RuntimeError, match="built without CUDA"):
        cuda_mod.check_toolchain()
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda_mod, "_nvcc", lambda: None)
    with pytest.raises(RuntimeError, match="nvcc .* was not found"):
        cuda_mod.check_toolchain()
    monkeypatch.setattr(cuda_mod, "_nvcc", lambda: "/usr/local/cuda/bin/nvcc")
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: False)
    with pytest.raises(RuntimeError, match="ninja was not found"):
        cuda_mod.check_toolchain()


def test_importing_compiles_nothing(monkeypatch):
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "load", lambda *a, **k: pytest.fail("compiled at import"))
    module = importlib.reload(cuda_mod)
    assert module._build.cache_info().currsize == 0 and module._extension.cache_info().currsize == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on a machine without CUDA")
def test_auto_falls_back_to_torch_loudly_when_the_kernels_cannot_build(monkeypatch):
    dispatch = importlib.import_module("conrwkv.ops.wkv6")
    monkeypatch.setattr(dispatch, "_resolved", {})
    with pytest.warns(UserWarning, match="CUDA kernels are unavailable"):
        assert dispatch.resolve_backend("auto", torch.device("cuda")) == "torch"


# ----------------------------------------------------------------------------------------------
# CPU: the kernels' logic under the host emulator

@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("needs g++ to build the emulated kernels")
    src = cuda_mod.cuda_source_dir()
    lib = tmp_path_factory.mktemp("wkv6emu") / "libwkv6emu.so"
    subprocess.run([gxx, "-std=c++17", "-O1", "-fno-strict-aliasing", "-DWKV6_EMULATE", "-shared", "-fPIC",
                    str(src / "emu" / "wkv6_emu_api.cpp"), "-o", str(lib)], check=True)
    dll = ctypes.CDLL(str(lib))
    dll.wkv6_emu_error.restype = ctypes.c_char_p
    return dll


def _ptr(x):
    return ctypes.c_void_p(x.data_ptr() if x is not None else 0)


def _code(dtype):
    return 0 if dtype == torch.bfloat16 else 1


def emulated_forward(dll, r, k, v, w, u, s0):
    """y, final state and the stored states of the emulated forward, outputs poisoned with NaN."""
    B, T, H, N = r.shape
    nan = float("nan")
    y, final = torch.full_like(r, nan), torch.full((B, H, N, N), nan)
    ckpt = torch.full((B, H, (T + 63) // 64, N, N), nan)
    stride = 0 if s0 is None or s0.dim() == 3 else H * N * N
    rc = dll.wkv6_emu_forward(N, _code(r.dtype), _code(w.dtype), *map(_ptr, (r, k, v, w, u, s0)),
                              ctypes.c_longlong(stride), _ptr(y), _ptr(final), _ptr(ckpt), B, T, H)
    assert rc == 0, dll.wkv6_emu_error()
    return y, final, ckpt


def emulated_backward(dll, r, k, v, w, u, ckpt, dy, dsf, want_ds0):
    """dr, dk, dv, dw, du [B, H, N] and ds0 (None unless want_ds0) of the emulated backward."""
    B, T, H, N = r.shape
    nan = float("nan")
    dr, dk, dv = (torch.full_like(r, nan) for _ in range(3))
    dw, du = torch.full_like(w, nan), torch.full((B, H, N), nan)
    ds0 = torch.full((B, H, N, N), nan) if want_ds0 else None
    scratch = torch.full((B * H * 2 * N * N,), nan)
    rc = dll.wkv6_emu_backward(N, _code(r.dtype), _code(w.dtype), *map(_ptr, (r, k, v, w, u, ckpt, dy, dsf)),
                               _ptr(scratch), *map(_ptr, (dr, dk, dv, dw, du, ds0)), B, T, H)
    assert rc == 0, dll.wkv6_emu_error()
    return dr, dk, dv, dw, du, ds0


def emulated(dll, inputs, dy, dsf, want_ds0):
    """Forward then backward through the emulated kernels."""
    r, k, v, w, u, s0 = inputs
    y, final, ckpt = emulated_forward(dll, r, k, v, w, u, s0)
    dr, dk, dv, dw, du, ds0 = emulated_backward(dll, r, k, v, w, u, ckpt, dy, dsf, want_ds0)
    if ds0 is not None and s0.dim() == 3:
        ds0 = ds0.sum(0)
    return y, final, [dr, dk, dv, dw, du.sum(0), ds0]


EMULATED = [  # B, T, H, N, state, dtype, w range, gradient of the final state
    (1, 1, 1, 64, "per_row", torch.bfloat16, (-8.0, 1.0), True),
    (2, 37, 2, 64, "shared", torch.bfloat16, (-8.0, 1.0), True),
    (1, 250, 1, 64, "per_row", torch.bfloat16, (-8.0, 1.0), False),
    (3, 63, 1, 32, "shared", torch.bfloat16, (-8.0, 1.0), True),
    (2, 130, 1, 64, "none", torch.float32, (-8.0, 1.0), True),
    (2, 100, 1, 64, "per_row", torch.bfloat16, (-8.0, 2.8), True),     # factored and exact chunks
    (1, 80, 2, 64, "shared", torch.bfloat16, (-1.0, 5.0), True),       # fast decay: exact chunks
    (2, 100, 2, 16, "per_row", torch.bfloat16, (-8.0, 2.8), True),     # head size 16: one warp
    (1, 70, 1, 16, "shared", torch.bfloat16, (-1.0, 5.0), True),
    (2, 45, 1, 16, "none", torch.float32, (-8.0, 1.0), True),
]


@pytest.mark.parametrize("B,T,H,N,state,dtype,w_range,grad_final", EMULATED)
def test_emulated_kernels_match_reference(emulator, B, T, H, N, state, dtype, w_range, grad_final):
    inputs = make_inputs(B, T, H, N, state, dtype=dtype, w_range=w_range)
    dy = torch.randn(B, T, H, N).to(dtype)
    dsf = torch.randn(B, H, N, N) if grad_final else torch.zeros(B, H, N, N)
    y, final, grads = emulated(emulator, inputs, dy, dsf if grad_final else None, state != "none")
    y_ref, final_ref, grads_ref = reference(inputs, dy, dsf)
    tol = TOL if dtype == torch.bfloat16 else 1e-3           # fp32 inputs: tf32 products only
    assert torch.isfinite(y).all() and rel(y, y_ref) < tol
    assert torch.isfinite(final).all() and rel(final, final_ref) < tol
    for name, got, ref in zip(("r", "k", "v", "w", "u", "state"), grads, grads_ref):
        if ref is None:
            continue
        assert torch.isfinite(got).all(), name
        assert rel(got, ref) < tol, (name, rel(got, ref))


def test_emulated_cases_cover_both_intra_chunk_paths():
    torch.manual_seed(0)
    fractions = {rng: exact_chunk_fraction(torch.empty(2, 128, 1, 64).uniform_(*rng))
                 for rng in ((-8.0, 1.0), (-8.0, 2.8), (-1.0, 5.0))}
    assert fractions[(-8.0, 1.0)] == 0.0
    assert 0.1 < fractions[(-8.0, 2.8)] < 0.9
    assert fractions[(-1.0, 5.0)] == 1.0


class EmulatedSegments(torch.autograd.Function):
    """The emulated kernels as the op that split_sequence runs each segment on: from a zero state,
    returning the final state, with the kernels' backward (the final state's gradient included)."""

    @staticmethod
    def forward(ctx, dll, r, k, v, w, u):
        y, final, ckpt = emulated_forward(dll, r, k, v, w, u, None)
        ctx.dll = dll
        ctx.save_for_backward(r, k, v, w, u, ckpt)
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        r, k, v, w, u, ckpt = ctx.saved_tensors
        dr, dk, dv, dw, du, _ = emulated_backward(ctx.dll, r, k, v, w, u, ckpt, dy.contiguous(),
                                                  dfinal.contiguous(), False)
        return None, dr, dk, dv, dw, du.sum(0)


SPLIT_EMULATED = [  # B, T, H, N, state, segment length (None: chosen for a GPU of 132 SMs)
    (1, 16384, 1, 32, "per_row", None),     # 8 segments of 2048 steps, boundaries at chunk edges
    (2, 1000, 1, 64, "shared", 37),          # boundaries inside the kernels' 16-step chunks
    (2, 1024, 2, 64, "none", 256),
]


@pytest.mark.parametrize("B,T,H,N,state,length", SPLIT_EMULATED)
def test_emulated_kernels_split_into_segments_match_reference(emulator, B, T, H, N, state, length):
    if length is None:
        length = segment_length(T, choose_segments(B, H, T, sm_count=132))
    assert length < T
    inputs = make_inputs(B, T, H, N, state)
    dy = torch.randn(B, T, H, N).to(torch.bfloat16)
    dsf = torch.randn(B, H, N, N)
    leaves = [x.detach().clone().requires_grad_(True) if x is not None else None for x in inputs]

    def segments_op(r, k, v, w, u, seg_state, return_state):
        assert seg_state is None and return_state
        return EmulatedSegments.apply(emulator, r, k, v, w, u)

    y, final = split_sequence(segments_op, *leaves, length)
    torch.autograd.backward([y, final], [dy, dsf])
    if T > 512:    # the float64 chunked backend: the sequential one's autograd graph is slow at these T
        ref_leaves = [x.detach().double().requires_grad_(True) if x is not None else None for x in inputs]
        y_ref, final_ref = wkv6_chunked(*ref_leaves)
        torch.autograd.backward([y_ref, final_ref], [dy.double(), dsf.double()])
        grads_ref = [x.grad if x is not None else None for x in ref_leaves]
    else:
        y_ref, final_ref, grads_ref = reference(inputs, dy, dsf)
    assert y.dtype == torch.bfloat16 and rel(y, y_ref) < TOL and rel(final, final_ref) < TOL
    for name, leaf, ref in zip(("r", "k", "v", "w", "u", "state"), leaves, grads_ref):
        if ref is None:
            continue
        assert torch.isfinite(leaf.grad).all(), name
        assert rel(leaf.grad, ref) < TOL, (name, rel(leaf.grad, ref))


# ----------------------------------------------------------------------------------------------
# GPU: the built extension

def poison_cache(device):
    """Fill the allocator's cached blocks with NaN, so that an output element the kernels do not
    write shows up as NaN rather than as a stale value."""
    junk = torch.full((64 << 20,), float("nan"), device=device)
    del junk


def run_cuda(inputs, dy, dsf):
    leaves = [x.detach().clone().requires_grad_(True) if x is not None else None for x in inputs]
    poison_cache(dy.device)
    y, final = cuda_mod.wkv6_cuda(*leaves, return_state=True)
    poison_cache(dy.device)
    torch.autograd.backward([y, final], [dy, dsf])
    return y, final, [x.grad if x is not None else None for x in leaves]


# The grid of the GPU-run issue: H = 2 keeps B x H below the SM count, so the longer sequences
# take the sequence split (ops/sequence_split.py) and the short ones the whole-sequence kernels.
CASES = [(B, T, state) for B in (1, 2, 3, 8) for T in (1, 63, 64, 1000, 4097, 16384)
         for state in ("none", "shared", "per_row")]


@pytest.mark.cuda
@pytest.mark.parametrize("B,T,state", CASES)
def test_cuda_matches_reference(B, T, state):
    H, N = 2, 64
    inputs = make_inputs(B, T, H, N, state, device="cuda")
    dy = torch.randn(B, T, H, N, device="cuda").to(torch.bfloat16)
    dsf = torch.randn(B, H, N, N, device="cuda")
    y, final, grads = run_cuda(inputs, dy, dsf)
    y_ref, final_ref, grads_ref = reference(inputs, dy, dsf)
    assert y.dtype == torch.bfloat16 and final.dtype == torch.float32 and final.shape == (B, H, N, N)
    assert torch.isfinite(y).all() and rel(y, y_ref) < TOL
    assert torch.isfinite(final).all() and rel(final, final_ref) < TOL
    for name, got, ref in zip(("r", "k", "v", "w", "u", "state"), grads, grads_ref):
        if ref is None:
            continue
        assert got.shape == ref.shape, name
        assert torch.isfinite(got).all(), name
        assert rel(got, ref) < TOL, (name, rel(got, ref))


@pytest.mark.cuda
@pytest.mark.parametrize("w_range", [(-1.0, 5.0), (-8.0, 2.8)], ids=["fast-decay", "mixed"])
def test_cuda_fast_decay_stress(w_range):
    B, T, H, N = 2, 1000, 2, 64
    inputs = make_inputs(B, T, H, N, "per_row", w_range=w_range, device="cuda")
    assert exact_chunk_fraction(inputs[3]) > 0.1
    dy = torch.randn(B, T, H, N, device="cuda").to(torch.bfloat16)
    dsf = torch.randn(B, H, N, N, device="cuda")
    y, final, grads = run_cuda(inputs, dy, dsf)
    y_ref, final_ref, grads_ref = reference(inputs, dy, dsf)
    assert rel(y, y_ref) < TOL and rel(final, final_ref) < TOL
    for name, got, ref in zip(("r", "k", "v", "w", "u", "state"), grads, grads_ref):
        assert torch.isfinite(got).all(), name
        assert rel(got, ref) < TOL, (name, rel(got, ref))


@pytest.mark.cuda
@pytest.mark.parametrize("N", [16, 32])
def test_cuda_head_sizes_16_and_32(N):
    B, T, H = 2, 300, 2
    inputs = make_inputs(B, T, H, N, "shared", device="cuda")
    dy = torch.randn(B, T, H, N, device="cuda").to(torch.bfloat16)
    dsf = torch.randn(B, H, N, N, device="cuda")
    y, final, grads = run_cuda(inputs, dy, dsf)
    y_ref, final_ref, grads_ref = reference(inputs, dy, dsf)
    assert rel(y, y_ref) < TOL and rel(final, final_ref) < TOL
    for name, got, ref in zip(("r", "k", "v", "w", "u", "state"), grads, grads_ref):
        assert rel(got, ref) < TOL, (name, rel(got, ref))


@pytest.mark.cuda
@pytest.mark.parametrize("B,T,H", [(1, 16384, 2), (2, 16384, 1)])
def test_cuda_split_path_matches_reference_and_the_whole_sequence(B, T, H):
    N = 64
    chosen = choose_segments(B, H, T, cuda_mod.sm_count(torch.cuda.current_device()))
    assert chosen > 1                                   # these shapes take the split path
    inputs = make_inputs(B, T, H, N, "per_row", device="cuda")
    dy = torch.randn(B, T, H, N, device="cuda").to(torch.bfloat16)
    dsf = torch.randn(B, H, N, N, device="cuda")
    y_ref, final_ref, grads_ref = reference(inputs, dy, dsf)
    for segments in (None, 1, 7):
        leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
        y, final = cuda_mod.wkv6_cuda(*leaves, return_state=True, segments=segments)
        torch.autograd.backward([y, final], [dy, dsf])
        assert rel(y, y_ref) < TOL and rel(final, final_ref) < TOL, segments
        for name, leaf, ref in zip(("r", "k", "v", "w", "u", "state"), leaves, grads_ref):
            assert rel(leaf.grad, ref) < TOL, (segments, name, rel(leaf.grad, ref))


@pytest.mark.cuda
def test_cuda_float32_inputs_and_float32_decay():
    B, T, H, N = 2, 500, 2, 64
    inputs = make_inputs(B, T, H, N, "per_row", dtype=torch.float32, device="cuda")
    dy, dsf = torch.randn(B, T, H, N, device="cuda"), torch.randn(B, H, N, N, device="cuda")
    y, final, grads = run_cuda(inputs, dy, dsf)
    y_ref, final_ref, grads_ref = reference(inputs, dy, dsf)
    assert y.dtype == torch.float32 and rel(y, y_ref) < 1e-3 and rel(final, final_ref) < 1e-3
    for name, got, ref in zip(("r", "k", "v", "w", "u", "state"), grads, grads_ref):
        assert rel(got, ref) < 1e-3, (name, rel(got, ref))
    # bf16 r, k, v beside a float32 w: w keeps its precision and its gradient its dtype
    r, k, v = (x.to(torch.bfloat16) for x in inputs[:3])
    mixed = (r, k, v, inputs[3], inputs[4], inputs[5])
    dyb = dy.to(torch.bfloat16)
    y, final, grads = run_cuda(mixed, dyb, dsf)
    y_ref, final_ref, grads_ref = reference(mixed, dyb, dsf)
    assert grads[3].dtype == torch.float32
    assert rel(y, y_ref) < TOL and rel(grads[3], grads_ref[3]) < TOL


@pytest.mark.cuda
def test_cuda_runs_are_deterministic_and_dispatch_picks_cuda(monkeypatch):
    dispatch = importlib.import_module("conrwkv.ops.wkv6")
    monkeypatch.setattr(dispatch, "_resolved", {})
    B, T, H, N = 3, 777, 4, 64
    inputs = make_inputs(B, T, H, N, "shared", device="cuda")
    dy = torch.randn(B, T, H, N, device="cuda").to(torch.bfloat16)
    dsf = torch.randn(B, H, N, N, device="cuda")
    first = run_cuda(inputs, dy, dsf)
    second = run_cuda(inputs, dy, dsf)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    for a, b in zip(first[2], second[2]):
        assert torch.equal(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dispatch.resolve_backend("auto", torch.device("cuda")) == "cuda"
    y = wkv6(*inputs)
    assert torch.equal(y, first[0])


@pytest.mark.cuda
def test_cuda_without_grad_keeps_no_state_and_returns_none_final():
    r, k, v, w, u, s = make_inputs(2, 100, 2, 64, "per_row", device="cuda")
    with torch.no_grad():
        y, final = cuda_mod.wkv6_cuda(r, k, v, w, u, s)
    assert final is None and y.shape == r.shape
    y2 = wkv6(r, k, v, w, u, s, backend="cuda")
    assert torch.equal(y, y2)


@pytest.mark.cuda
def test_auto_falls_back_to_torch_for_head_sizes_without_kernels():
    r, k, v = (torch.randn(1, 20, 2, 128, device="cuda") for _ in range(3))
    w = torch.rand(1, 20, 2, 128, device="cuda") * 9 - 8
    u = torch.randn(2, 128, device="cuda")
    with pytest.warns(UserWarning, match="not 128"):
        y = wkv6(r, k, v, w, u)
    expected, _ = wkv6_sequential(r.double(), k.double(), v.double(), w.double(), u.double())
    assert ((y.double() - expected).norm() / expected.norm()) < 1e-5
    with pytest.raises(ValueError, match="head size N = 128"):
        wkv6(r, k, v, w, u, backend="cuda")
