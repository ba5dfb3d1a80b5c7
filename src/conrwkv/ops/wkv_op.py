"""WKV6 and WKV7 as torch.library custom ops, so that torch.compile(fullgraph=True) traces a whole
block, and the whole model, without a graph break on the CUDA kernels.

    y, final = wkv6_op(r, k, v, w, u, state, return_state=True)       # conrwkv::wkv6
    y, final = wkv7_op(r, w, k, v, a, b, state, return_state=True)    # conrwkv::wkv7

Layouts and numerics are those of the dispatch points (wkv6.py, wkv7.py). Each op has

- a schema: the forward inputs (the initial state optional) and flags; fresh outputs, nothing
  mutated. conrwkv::wkv6 returns (y, final state, stored states): the last are the CUDA
  kernels' checkpoints for the backward (empty on the CPU, and without gradients); a final state
  not asked for is an empty tensor, which `wkv6_op` turns back into None-free pairs;
- a fake (meta) implementation: the shapes and dtypes of the outputs, per device (every output
  contiguous: the implementations return contiguous tensors);
- implementations per device: conrwkv::wkv6 runs the project's CUDA kernels on CUDA tensors
  (wkv6_cuda.kernel_forward) and the torch backend everywhere else (wkv6_sequential for one step,
  wkv6_chunked otherwise, exactly as wkv6(..., backend="torch")); conrwkv::wkv7 runs the torch
  backend on every device (WKV7 has no CUDA kernel yet);
- autograd: a separate backward op each (conrwkv::wkv6_backward, conrwkv::wkv7_backward), so the
  backward is one node of the compiled backward graph too. On CUDA the wkv6 one runs the
  kernels' backward from the stored states; elsewhere it recomputes the forward of the torch
  backend under autograd and takes its vector-Jacobian product, which gives exactly the
  gradients eager autograd gives on the torch backend. Double backward is not supported.

Where the ops are used (the vmap choice). torch.func.vmap sees a custom op as opaque unless it
has a vmap rule. lm/ensemble.py vmaps whole models with wkv_backend="torch", and on the torch
backend the op buys nothing: the chunked code is plain tensor code that dynamo already traces
with fullgraph=True (and inductor can fuse into its neighbours, which it cannot do across an
opaque op). So the dispatch keeps the torch backend as plain traceable code, and only the CUDA
kernels go through conrwkv::wkv6: `wkv6(..., backend="cuda")` (and "auto" on a GPU) call the op,
`backend="torch"` (and "auto" on the CPU) call the chunked code directly, and vmap keeps working
unchanged. The ops carry no vmap rule. `torch_backend_through_ops()` routes the torch backend
through the ops as well (their CPU implementations), for tests and for anyone who wants the
WKV to be one node of the graph on the CPU.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor

from .chunking import compute_dtype
from .wkv6_torch import wkv6_chunked, wkv6_sequential
from .wkv7_torch import wkv7_chunked, wkv7_sequential

_through_ops = False


@contextlib.contextmanager
def torch_backend_through_ops(enabled: bool = True):
    """Inside, wkv6(..., backend="torch") and wkv7(...) call the custom ops (their CPU, or
    torch-backend, implementations) instead of the plain chunked code. Not under vmap: the ops
    have no vmap rule."""
    global _through_ops
    previous, _through_ops = _through_ops, enabled
    try:
        yield
    finally:
        _through_ops = previous


def torch_backend_uses_ops() -> bool:
    return _through_ops


def _torch_wkv6(r, k, v, w, u, state):
    run = wkv6_sequential if r.shape[1] == 1 else wkv6_chunked
    return run(r, k, v, w, u, state)


def _torch_wkv7(r, w, k, v, a, b, state):
    run = wkv7_sequential if r.shape[1] == 1 else wkv7_chunked
    return run(r, w, k, v, a, b, state)


def _empty(like: Tensor) -> Tensor:
    return like.new_empty(0, dtype=torch.float32)


def _contiguous(xs: list[Tensor | None]) -> list[Tensor | None]:
    return [None if x is None else x.contiguous() for x in xs]


def _vjp(fn, inputs: list[Tensor | None], grads_out: list[Tensor | None]) -> list[Tensor | None]:
    """The gradients of <fn(*inputs), grads_out> to every input that is not None, by the
    vector-Jacobian product of a recomputed forward (torch.func.vjp: it runs its own autograd
    level, which works inside an op implementation, where the dispatcher has switched autograd
    off)."""
    present = [i for i, x in enumerate(inputs) if x is not None]

    def of_present(*xs):
        full = list(inputs)
        for i, x in zip(present, xs):
            full[i] = x
        outs = fn(*full)
        return tuple(o for o, g in zip(outs, grads_out) if g is not None)

    _, pullback = torch.func.vjp(of_present, *(inputs[i] for i in present))
    got = pullback(tuple(g for g in grads_out if g is not None))
    result: list[Tensor | None] = [None] * len(inputs)
    for i, g in zip(present, got):
        result[i] = g
    return result


# ---------------------------------------------------------------- conrwkv::wkv6


@torch.library.custom_op("conrwkv::wkv6", mutates_args=())
def _wkv6(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: Tensor | None,
          return_state: bool, keep_for_backward: bool) -> tuple[Tensor, Tensor, Tensor]:
    y, final = _torch_wkv6(r, k, v, w, u, state)
    return y.contiguous(), (final.contiguous() if return_state else _empty(r)), _empty(r)


@_wkv6.register_kernel("cuda")
def _wkv6_cuda(r, k, v, w, u, state, return_state, keep_for_backward):
    from . import wkv6_cuda

    return wkv6_cuda.kernel_forward(r, k, v, w, u, state, return_state, keep_for_backward)


@_wkv6.register_fake
def _wkv6_fake(r, k, v, w, u, state, return_state, keep_for_backward):
    B, T, H, N = r.shape
    on_cuda = r.device.type == "cuda"
    state_dtype = torch.float32 if on_cuda else compute_dtype(r)
    final = r.new_empty(B, H, N, N, dtype=state_dtype) if return_state else _empty(r)
    ckpt = r.new_empty(B, H, math.ceil(T / 64), N, N, dtype=torch.float32) if (
        on_cuda and keep_for_backward) else _empty(r)
    return r.new_empty(r.shape), final, ckpt


@torch.library.custom_op("conrwkv::wkv6_backward", mutates_args=())
def _wkv6_backward(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: Tensor | None,
                   ckpt: Tensor, dy: Tensor, dfinal: Tensor | None
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    grads = _contiguous(_vjp(_torch_wkv6, [r, k, v, w, u, state], [dy, dfinal]))
    return (*grads[:5], _empty(r) if state is None else grads[5])


@_wkv6_backward.register_kernel("cuda")
def _wkv6_backward_cuda(r, k, v, w, u, state, ckpt, dy, dfinal):
    from . import wkv6_cuda

    grads = wkv6_cuda.kernel_backward(r, k, v, w, u, state, ckpt, dy, dfinal, state is not None)
    return (*grads[:5], _empty(r) if state is None else grads[5])


@_wkv6_backward.register_fake
def _wkv6_backward_fake(r, k, v, w, u, state, ckpt, dy, dfinal):
    dstate = _empty(r) if state is None else state.new_empty(state.shape)
    return (*(x.new_empty(x.shape) for x in (r, k, v, w, u)), dstate)


def _wkv6_setup_context(ctx, inputs, output):
    r, k, v, w, u, state, return_state, keep_for_backward = inputs
    ctx.save_for_backward(r, k, v, w, u, state, output[2])
    ctx.return_state = return_state
    ctx.has_state = state is not None
    ctx.mark_non_differentiable(output[2])
    ctx.set_materialize_grads(False)


def _wkv6_autograd_backward(ctx, dy, dfinal, _dckpt):
    r, k, v, w, u, state, ckpt = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(r)
    dfinal = dfinal if ctx.return_state else None
    dr, dk, dv, dw, du, dstate = _wkv6_backward(r, k, v, w, u, state if ctx.has_state else None, ckpt,
                                                dy, dfinal)
    return dr, dk, dv, dw, du, (dstate if ctx.has_state else None), None, None


_wkv6.register_autograd(_wkv6_autograd_backward, setup_context=_wkv6_setup_context)


def wkv6_op(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: Tensor | None = None,
            return_state: bool = True) -> tuple[Tensor, Tensor | None]:
    """conrwkv::wkv6: (y, final state or None). The CUDA kernels keep their checkpoints for the
    backward only when a gradient can be asked for (decided at trace time under torch.compile)."""
    inputs = (r, k, v, w, u) + ((state,) if state is not None else ())
    keep = torch.is_grad_enabled() and any(x.requires_grad for x in inputs)
    y, final, _ = torch.ops.conrwkv.wkv6(r, k, v, w, u, state, return_state, keep)
    return y, (final if return_state else None)


# ---------------------------------------------------------------- conrwkv::wkv7


@torch.library.custom_op("conrwkv::wkv7", mutates_args=())
def _wkv7(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state: Tensor | None,
          return_state: bool) -> tuple[Tensor, Tensor]:
    y, final = _torch_wkv7(r, w, k, v, a, b, state)
    return y.contiguous(), (final.contiguous() if return_state else _empty(r))


@_wkv7.register_fake
def _wkv7_fake(r, w, k, v, a, b, state, return_state):
    B, T, H, N = r.shape
    final = r.new_empty(B, H, N, N, dtype=compute_dtype(r)) if return_state else _empty(r)
    return r.new_empty(r.shape), final


@torch.library.custom_op("conrwkv::wkv7_backward", mutates_args=())
def _wkv7_backward(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state: Tensor | None,
                   dy: Tensor, dfinal: Tensor | None
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    grads = _contiguous(_vjp(_torch_wkv7, [r, w, k, v, a, b, state], [dy, dfinal]))
    return (*grads[:6], _empty(r) if state is None else grads[6])


@_wkv7_backward.register_fake
def _wkv7_backward_fake(r, w, k, v, a, b, state, dy, dfinal):
    dstate = _empty(r) if state is None else state.new_empty(state.shape)
    return (*(x.new_empty(x.shape) for x in (r, w, k, v, a, b)), dstate)


def _wkv7_setup_context(ctx, inputs, output):
    *tensors, state, return_state = inputs
    ctx.save_for_backward(*tensors, state)
    ctx.return_state = return_state
    ctx.has_state = state is not None
    ctx.set_materialize_grads(False)


def _wkv7_autograd_backward(ctx, dy, dfinal):
    *tensors, state = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(tensors[0])
    dfinal = dfinal if ctx.return_state else None
    *grads, dstate = _wkv7_backward(*tensors, state if ctx.has_state else None, dy, dfinal)
    return (*grads, dstate if ctx.has_state else None, None)


_wkv7.register_autograd(_wkv7_autograd_backward, setup_context=_wkv7_setup_context)


def wkv7_op(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state: Tensor | None = None,
            return_state: bool = True) -> tuple[Tensor, Tensor | None]:
    """conrwkv::wkv7: (y, final state or None)."""
    y, final = torch.ops.conrwkv.wkv7(r, w, k, v, a, b, state, return_state)
    return y, (final if return_state else None)
