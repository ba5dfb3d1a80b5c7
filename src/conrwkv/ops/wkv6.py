"""The one dispatch point for the WKV6 operator (RWKV-6 time mixing; docs/reference.md, "WKV recurrence").

    y = wkv6(r, k, v, w, u)                                   # y [B, T, H, N]
    y, final_state = wkv6(r, k, v, w, u, state, return_state=True)

Layouts: r, k, v, w are [B, T, H, N]; w is the raw decay (the op takes exp(-exp(w)) in float32);
u is [H, N]; the state is [B, H, N_key, N_value], or [H, N, N] shared by every batch row.

Backends: "torch" (chunked, any device), "cuda" (the project's own kernels, CUDA tensors),
"fla" (flash-linear-attention's chunk_rwkv6, for comparison), and "auto", which picks the
fastest one available for the tensors' device once per process and says which.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import Tensor

from ..config import WKV_BACKENDS
from .wkv6_torch import wkv6_chunked, wkv6_sequential

log = logging.getLogger(__name__)

BACKENDS = WKV_BACKENDS
_resolved: dict[str, str] = {}


def _check(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: Tensor | None) -> None:
    if not isinstance(r, Tensor) or r.dim() != 4:
        shape = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
        raise ValueError(f"wkv6: r has shape {shape}; expected a 4-d tensor [B, T, H, N]")
    B, T, H, N = r.shape
    if T < 1:
        raise ValueError(f"wkv6: r has T = {T} time steps; expected T >= 1")
    for name, x in (("k", k), ("v", v), ("w", w)):
        if not isinstance(x, Tensor) or tuple(x.shape) != (B, T, H, N):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"wkv6: {name} has shape {shape}; expected [B, T, H, N] = "
                             f"{(B, T, H, N)}, the shape of r")
    if not isinstance(u, Tensor) or tuple(u.shape) != (H, N):
        shape = tuple(u.shape) if isinstance(u, Tensor) else type(u).__name__
        raise ValueError(f"wkv6: u has shape {shape}; expected [H, N] = {(H, N)}")
    tensors = [("r", r), ("k", k), ("v", v), ("w", w), ("u", u)]
    if state is not None:
        if not isinstance(state, Tensor) or tuple(state.shape) not in ((B, H, N, N), (H, N, N)):
            shape = tuple(state.shape) if isinstance(state, Tensor) else type(state).__name__
            raise ValueError(f"wkv6: state has shape {shape}; expected [B, H, N_key, N_value] = "
                             f"{(B, H, N, N)} or a shared [H, N, N] = {(H, N, N)}")
        tensors.append(("state", state))
    for name, x in tensors:
        if not x.is_floating_point():
            raise ValueError(f"wkv6: {name} has dtype {x.dtype}; expected a floating-point tensor")
        if x.device != r.device:
            raise ValueError(f"wkv6: {name} is on {x.device} but r is on {r.device}")


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn "auto" into a concrete backend for this device; log the choice once per process."""
    if backend not in BACKENDS:
        raise ValueError(f"wkv6: unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend != "auto":
        return backend
    if device.type in _resolved:
        return _resolved[device.type]
    if device.type == "cuda":
        try:
            from . import wkv6_cuda
            wkv6_cuda.load_extension()
            choice = "cuda"
            log.info("wkv6: backend 'cuda' (the project's CUDA kernels) for CUDA tensors")
        except Exception as err:  # noqa: BLE001 - any build failure means: fall back, loudly
            choice = "torch"
            warnings.warn(f"wkv6: the CUDA kernels are unavailable ({err}); falling back to the "
                          "torch chunked backend, which is much slower on a GPU", stacklevel=3)
    else:
        choice = "torch"
        log.info("wkv6: backend 'torch' (chunked) for %s tensors", device.type)
    _resolved[device.type] = choice
    return choice


def _cuda_head_sizes() -> tuple[int, ...]:
    from .wkv6_cuda import HEAD_SIZES

    return HEAD_SIZES


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)


def _wkv6_fla(r, k, v, w, u, state, return_state):
    try:
        from fla.ops.rwkv6 import chunk_rwkv6
    except ImportError as err:
        raise RuntimeError("wkv6: backend 'fla' needs the fla-core package "
                           "(pip install fla-core) and a CUDA device") from err
    B, T, H, N = r.shape
    if state is not None:
        state = state.float().expand(B, H, N, N).contiguous()
    # fla takes the log-decay itself and scales r by 1/sqrt(N) unless told otherwise.
    return chunk_rwkv6(r, k, v, -torch.exp(w.float()), u, scale=1.0, initial_state=state,
                       output_final_state=return_state)


def wkv6(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: Tensor | None = None,
         return_state: bool = False, backend: str = "auto"):
    """RWKV-6 WKV operator. Returns y [B, T, H, N], or (y, final state [B, H, N, N] float32)."""
    _check(r, k, v, w, u, state)
    name = resolve_backend(backend, r.device)
    if name == "cuda" and backend == "auto" and r.shape[-1] not in _cuda_head_sizes():
        name = "torch"
        _warn_once(f"wkv6: the CUDA kernels are built for head sizes {_cuda_head_sizes()}, not "
                   f"{r.shape[-1]}; 'auto' uses the (slower) torch chunked backend for these")
    if name == "torch":
        if r.shape[1] == 1:
            y, final = wkv6_sequential(r, k, v, w, u, state)
        else:
            y, final = wkv6_chunked(r, k, v, w, u, state)
    elif name == "cuda":
        from .wkv6_cuda import wkv6_cuda
        y, final = wkv6_cuda(r, k, v, w, u, state, return_state)
    else:
        y, final = _wkv6_fla(r, k, v, w, u, state, return_state)
    return (y, final) if return_state else y
