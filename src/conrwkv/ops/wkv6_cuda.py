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
the final state in float32. Head sizes 16, 32 and 64 are built (16: one warp per block).

The kernels reach autograd and torch.compile as the CUDA implementation of the custom op
conrwkv::wkv6 (wkv_op.py): `torch.compile(model, fullgraph=True)` traces through it without a
graph break.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import torch
from torch import Tensor

from .sequence_split import choose_segments, segment_length, split_sequence

HEAD_SIZES = (16, 32, 64)   # 128 would need more shared memory per block than the GPU has
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


def kernel_forward(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: Tensor | None,
                   return_state: bool, keep_for_backward: bool) -> tuple[Tensor, Tensor, Tensor]:
    """One forward launch: (y in r's dtype, final state [B, H, N, N] float32 or empty, stored states
    for the backward [B, H, ceil(T / 64), N, N] float32 or empty). The body of the CUDA kernel of
    the custom op conrwkv::wkv6 (wkv_op.py)."""
    ext = load_extension(r.device)
    t, tw = _kernel_dtypes(r, w)
    rc, kc, vc = (_prepare(x, t) for x in (r, k, v))
    sc = _prepare(state, torch.float32) if state is not None else None
    y, final, ckpt = ext.forward(rc, kc, vc, _prepare(w, tw), _prepare(u, torch.float32), sc,
                                 return_state, keep_for_backward)
    return y.to(r.dtype), final, ckpt


def kernel_backward(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: Tensor | None,
                    ckpt: Tensor, dy: Tensor, dfinal: Tensor | None, want_dstate: bool
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """One backward launch from the forward's inputs (prepared again: the same casts, hence the same
    values the forward read) and its stored states: the gradients in the inputs' dtypes (dstate
    None unless want_dstate)."""
    ext = load_extension(dy.device)
    t, tw = _kernel_dtypes(r, w)
    rc, kc, vc = (_prepare(x, t) for x in (r, k, v))
    dsf = _prepare(dfinal, torch.float32) if dfinal is not None else None
    dr, dk, dv, dw, du, ds0 = ext.backward(rc, kc, vc, _prepare(w, tw), _prepare(u, torch.float32), ckpt,
                                           _prepare(dy, t), dsf, want_dstate)
    dstate = None
    if want_dstate:
        dstate = (ds0.sum(0) if state.dim() == 3 else ds0).to(state.dtype)
    return dr.to(r.dtype), dk.to(k.dtype), dv.to(v.dtype), dw.to(w.dtype), du.sum(0).to(u.dtype), dstate


@functools.cache
def sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def wkv6_cuda(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: Tensor | None = None,
              return_state: bool = False, segments: int | None = None) -> tuple[Tensor, Tensor | None]:
    """WKV6 on the CUDA kernels: (y, final state [B, H, N, N] float32, or None unless return_state).

    `segments` > 1 cuts each sequence into that many segments run side by side
    (ops/sequence_split.py); None chooses from B, H, T and the GPU's SM count (1 where B x H
    already fills the GPU)."""
    N = r.shape[-1]
    if N not in HEAD_SIZES:
        raise ValueError(f"wkv6 cuda: head size N = {N} is not built; supported: {HEAD_SIZES}")
    for name, x in (("r", r), ("k", k), ("v", v), ("w", w), ("u", u), ("state", state)):
        if x is not None and x.device.type != "cuda":
            raise ValueError(f"wkv6 cuda: {name} is on {x.device}; the CUDA backend needs CUDA tensors "
                             "(use backend='torch' on the CPU)")
    from .wkv_op import wkv6_op

    B, T, H, _ = r.shape
    if segments is None:
        segments = choose_segments(B, H, T, sm_count(r.device.index if r.device.index is not None
                                                     else torch.cuda.current_device()))
    if segments > 1:
        y, final = split_sequence(wkv6_op, r, k, v, w, u, state, segment_length(T, segments))
    else:
        y, final = wkv6_op(r, k, v, w, u, state, return_state)
    return y, (final if return_state else None)
