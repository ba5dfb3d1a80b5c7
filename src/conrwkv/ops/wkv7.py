"""The one dispatch point for the WKV7 operator (RWKV-7 time mixing; docs/reference.md, "x070
forward pass").

    y = wkv7(r, w, k, v, a, b)                                   # y [B, T, H, N]
    y, final_state = wkv7(r, w, k, v, a, b, state, return_state=True)

Layouts: r, w, k, v, a, b are [B, T, H, N]; w is the raw decay (the op takes exp(-exp(w)) in
float32, as WKV6 does); the state is [B, H, N_key, N_value], or [H, N, N] shared by every row.

Backends: "torch" (chunked, any device; one step goes through the sequential reference) and
"auto", the same for now. fla's chunk_rwkv7 and a CUDA kernel are not written yet (issue 17);
asking for a WKV6-only backend ("cuda", "fla") is an error naming the flag rather than a silent
fallback.
"""

from __future__ import annotations

from torch import Tensor

from ..config import WKV7_BACKENDS
from .wkv7_torch import wkv7_chunked, wkv7_sequential


def _check(tensors: dict[str, Tensor], state: Tensor | None) -> None:
    r = tensors["r"]
    if not isinstance(r, Tensor) or r.dim() != 4:
        shape = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
        raise ValueError(f"wkv7: r has shape {shape}; expected a 4-d tensor [B, T, H, N]")
    B, T, H, N = r.shape
    if T < 1:
        raise ValueError(f"wkv7: r has T = {T} time steps; expected T >= 1")
    for name, x in tensors.items():
        if not isinstance(x, Tensor) or tuple(x.shape) != (B, T, H, N):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"wkv7: {name} has shape {shape}; expected [B, T, H, N] = "
                             f"{(B, T, H, N)}, the shape of r")
    checked = dict(tensors)
    if state is not None:
        if not isinstance(state, Tensor) or tuple(state.shape) not in ((B, H, N, N), (H, N, N)):
            shape = tuple(state.shape) if isinstance(state, Tensor) else type(state).__name__
            raise ValueError(f"wkv7: state has shape {shape}; expected [B, H, N_key, N_value] = "
                             f"{(B, H, N, N)} or a shared [H, N, N] = {(H, N, N)}")
        checked["state"] = state
    for name, x in checked.items():
        if not x.is_floating_point():
            raise ValueError(f"wkv7: {name} has dtype {x.dtype}; expected a floating-point tensor")
        if x.device != r.device:
            raise ValueError(f"wkv7: {name} is on {x.device} but r is on {r.device}")


def wkv7(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state: Tensor | None = None,
         return_state: bool = False, backend: str = "auto"):
    """RWKV-7 WKV operator. Returns y [B, T, H, N], or (y, final state [B, H, N, N] float32)."""
    if backend not in WKV7_BACKENDS:
        raise ValueError(f"wkv7: backend {backend!r} (--wkv_backend) has no WKV7 implementation; "
                         f"choose one of {WKV7_BACKENDS}")
    _check({"r": r, "w": w, "k": k, "v": v, "a": a, "b": b}, state)
    run = wkv7_sequential if r.shape[1] == 1 else wkv7_chunked
    y, final = run(r, w, k, v, a, b, state)
    return (y, final) if return_state else y
