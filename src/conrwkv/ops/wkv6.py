"""The one dispatch point for the WKV6 operator (RWKV-6 time mixing; docs/reference.md, "WKV recurrence").

    y = wkv6(r, k, v, w, u)                                   # y [B, T, H, N]
    y, final_state = wkv6(r, k, v, w, u, state, return_state=True)

Layouts: r, k, v, w are [B, T, H, N]; w is the raw decay (the op takes exp(-exp(w)) in float32);
u is [H, N]; the state is [B, H, N_key, N_value], or [H, N, N] shared by every batch row.

Backends: "torch" (chunked, any device), "cuda" (the project's own kernels, CUDA tensors),
"fla" (flash-linear-attention's chunk_rwkv6, for comparison), and "auto", which picks the
fastest one available for the tensors' device once per process and says which.

"cuda" runs through the custom op conrwkv::wkv6 (wkv_op.py), so torch.compile(fullgraph=True)
traces the model through the kernels; "torch" stays plain tensor code (traceable, and batched by
torch.func.vmap), unless wkv_op.torch_backend_through_ops() routes it through the op too.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import Tensor

from ..config import WKV_BACKENDS
from .checks import check_wkv_inputs
from .wkv6_torch import wkv6_chunked, wkv6_sequential
from .wkv_op import torch_backend_uses_ops, wkv6_op

log = logging.getLogger(__name__)

BACKENDS = WKV_BACKENDS
_resolved: dict[str, str] = {}


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
    check_wkv_inputs("wkv6", {"r": r, "k": k, "v": v, "w": w}, state, {"u": u})
    name = resolve_backend(backend, r.device)
    if name == "cuda" and backend == "auto" and r.shape[-1] not in _cuda_head_sizes():
        name = "torch"
        _warn_once(f"wkv6: the CUDA kernels are built for head sizes {_cuda_head_sizes()}, not "
                   f"{r.shape[-1]}; 'auto' uses the (slower) torch chunked backend for these")
    if name == "torch" and torch_backend_uses_ops():
        y, final = wkv6_op(r, k, v, w, u, state, return_state)
    elif name == "torch":
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
