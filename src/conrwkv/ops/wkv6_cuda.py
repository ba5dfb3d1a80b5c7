"""WKV6 on the project's own CUDA kernels (cuda/ at the repository root), with autograd.

The op is the RWKV-6 recurrence in the layouts of docs/reference.md, "WKV recurrence"; the readable
reference is `wkv6_sequential` in wkv6_torch.py. The kernels (cuda/wkv6_fwd.cuh, cuda/wkv6_bwd.cuh)
use the chunkwise form of gated linear attention (Yang et al. 2024) on the tensor cores: chunks of 16
steps, the state carried between chunks in registers, one thread block per (batch row, head).

The extension is compiled on first use with torch.utils.cpp_extension.load (ninja, nvcc), for the
architecture of the GPU at hand, and cached by torch in its extensions directory; importing this
module compiles nothing.

    y, final_state = wkv6_cuda(r, k, v, w, u, state, return_state=True)

Inputs: r, k, v, w [B, T, H, N] (bfloat16 or float32; w may stay float32 beside bfloat16 r, k, v),
u [H, N], state None, [B, H, N, N] or [H, N, N] shared by the batch. y comes back in the dtype of r,
the final state in float32. Head sizes 32 and 64 are built.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import torch
from torch import Tensor

HEAD_SIZES = (32, 64)   # 128 would need more shared memory per block than the GPU has
_SOURCES = ("wkv6_binding.cpp", "wkv6_fwd.cu", "wkv6_bwd.cu")


def cuda_source_dir() -> Path:
    """The repository's cuda/ folder, found by walking up from this file (the package is installed
    editable, so the sources stay in the checkout)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "cuda"
        if all((candidate / name).is_file() for name in _SOURCES):
            return candidate
    raise RuntimeError(f"wkv6 cuda: cannot find the kernel sources ({', '.join(_SOURCES)}) in a cuda/ "
                       f"folder above {here}; the CUDA backend needs the repository checkout "
                       "(pip install -e .), not a copied package")


def _nvcc() -> str | None:
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME and os.path.isfile(os.path.join(CUDA_HOME, "bin", "nvcc")):
        return os.path.join(CUDA_HOME, "bin", "nvcc")
    return shutil.which("nvcc")


def check_toolchain() -> None:
    """Raise a RuntimeError naming what is missing to build the kernels: a CUDA build of torch and a
    GPU, nvcc, ninja."""
    from torch.utils.cpp_extension import is_ninja_available

    if torch.version.cuda is None:
        raise RuntimeError(f"wkv6 cuda: this torch ({torch.__version__}) is built without CUDA; install a "
                           "CUDA build of torch to use the CUDA backend")
    if not torch.cuda.is_available():
        raise RuntimeError("wkv6 cuda: no CUDA device is visible")
    if _nvcc() is None:
        raise RuntimeError("wkv6 cuda: nvcc (the CUDA toolkit compiler) was not found under CUDA_HOME "
                           "or on PATH; install the CUDA toolkit matching torch.version.cuda "
                           f"({torch.version.cuda}) to build the kernels")
    if not is_ninja_available():
        raise RuntimeError("wkv6 cuda: ninja was not found; install it (pip install ninja) to build the "
                           "kernels")


def load_extension(device: int | torch.device | None = None):
    """Build (first call; about 35 s on the H100 machine) or load (later calls, cached by torch) the
    extension for the architecture of `device` (default: the current CUDA device); return the module."""
    if isinstance(device, torch.device):
        device = device.index
    return _extension(torch.cuda.current_device() if device is None else device)


@functools.cache
def _extension(device_index: int):
    # Cached per device, so that the checks (one of them runs ninja) stay off the per-call path.
    check_toolchain()
    major, minor = torch.cuda.get_device_capability(device_index)
    return _build(f"{major}{minor}")


@functools.cache
def _build(arch: str):
    from torch.utils.cpp_extension import load

    src = cuda_source_dir()
    return load(
        name=f"conrwkv_wkv6_sm{arch}",
        sources=[str(src / name) for name in _SOURCES],
        extra_include_paths=[str(src)],
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3", f"-gencode=arch=compute_{arch},code=sm_{arch}"],
        verbose=False,
    )


def _kernel_dtypes(r: Tensor, w: Tensor) -> tuple[torch.dtype, torch.dtype]:
    """bfloat16 stays bfloat16; anything else computes in float32. w keeps float32 beside bfloat16
    inputs, since rounding the raw decay to bfloat16 would change the decay noticeably."""
    t = torch.bfloat16 if r.dtype == torch.bfloat16 else torch.float32
    tw = torch.bfloat16 if (t == torch.bfloat16 and w.dtype == torch.bfloat16) else torch.float32
    return t, tw


def _prepare(x: Tensor, dtype: torch.dtype) -> Tensor:
    x = x.to(dtype).contiguous()
    return x if x.data_ptr() % 16 == 0 else x.clone()


class _WKV6(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, k, v, w, u, state, return_state: bool, keep_for_backward: bool):
        ext = load_extension(r.device)
        t, tw = _kernel_dtypes(r, w)
        rc, kc, vc = (_prepare(x, t) for x in (r, k, v))
        wc = _prepare(w, tw)
        uc = _prepare(u, torch.float32)
        sc = _prepare(state, torch.float32) if state is not None else None
        y, final, ckpt = ext.forward(rc, kc, vc, wc, uc, sc, return_state, keep_for_backward)
        if keep_for_backward:
            ctx.save_for_backward(rc, kc, vc, wc, uc, ckpt)
        ctx.dtypes = (r.dtype, k.dtype, v.dtype, w.dtype, u.dtype, state.dtype if state is not None else None)
        ctx.state_shape = None if state is None else tuple(state.shape)
        ctx.return_state = return_state
        y = y.to(r.dtype)
        return (y, final) if return_state else y

    @staticmethod
    def backward(ctx, dy, *rest):
        ext = load_extension(dy.device)
        rc, kc, vc, wc, uc, ckpt = ctx.saved_tensors
        dsf = rest[0] if ctx.return_state else None
        dsf = _prepare(dsf, torch.float32) if dsf is not None else None
        want_ds0 = ctx.needs_input_grad[5]
        dr, dk, dv, dw, du, ds0 = ext.backward(rc, kc, vc, wc, uc, ckpt, _prepare(dy, rc.dtype), dsf,
                                               want_ds0)
        dt_r, dt_k, dt_v, dt_w, dt_u, dt_s = ctx.dtypes
        dstate = None
        if want_ds0:
            dstate = (ds0.sum(0) if len(ctx.state_shape) == 3 else ds0).to(dt_s)
        return (dr.to(dt_r), dk.to(dt_k), dv.to(dt_v), dw.to(dt_w), du.sum(0).to(dt_u), dstate, None, None)


def wkv6_cuda(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: Tensor | None = None,
              return_state: bool = False) -> tuple[Tensor, Tensor | None]:
    """WKV6 on the CUDA kernels: (y, final state [B, H, N, N] float32, or None unless return_state)."""
    N = r.shape[-1]
    if N not in HEAD_SIZES:
        raise ValueError(f"wkv6 cuda: head size N = {N} is not built; supported: {HEAD_SIZES}")
    for name, x in (("r", r), ("k", k), ("v", v), ("w", w), ("u", u), ("state", state)):
        if x is not None and x.device.type != "cuda":
            raise ValueError(f"wkv6 cuda: {name} is on {x.device}; the CUDA backend needs CUDA tensors "
                             "(use backend='torch' on the CPU)")
    inputs = (r, k, v, w, u) + ((state,) if state is not None else ())
    keep = torch.is_grad_enabled() and any(x.requires_grad for x in inputs)
    out = _WKV6.apply(r, k, v, w, u, state, return_state, keep)
    if return_state:
        return out
    return out, None
