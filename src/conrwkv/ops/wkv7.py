"""The one dispatch point for the WKV7 operator (RWKV-7 time mixing; docs/reference.md, "x070
forward pass").

    y = wkv7(r, w, k, v, a, b)                                   # y [B, T, H, N]
    y, final_state = wkv7(r, w, k, v, a, b, state, return_state=True)

Layouts: r, w, k, v, a, b are [B, T, H, N]; w is the raw decay (the op takes exp(-exp(w)) in
float32, as WKV6 does); the state is [B, H, N_key, N_value], or [H, N, N] shared by every row.

Backends: "torch" (chunked, any device; one step goes through the sequential reference),
"fla" (flash-linear-attention's chunk_rwkv7 on a CUDA device, for comparison: the fla-core
package, not a dependency) and "auto", which is "torch" (the project has no WKV7 CUDA kernel
yet). Asking for the WKV6-only "cuda" backend is an error naming the flag rather than a silent
fallback.

The torch backend is plain tensor code (traced by torch.compile(fullgraph=True), batched by
torch.func.vmap); inside wkv_op.torch_backend_through_ops() it runs as the custom op
conrwkv::wkv7 instead (wkv_op.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import WKV7_BACKENDS
from .checks import check_wkv_inputs
from .wkv7_torch import wkv7_chunked, wkv7_sequential
from .wkv_op import torch_backend_uses_ops, wkv7_op


def wkv7(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state: Tensor | None = None,
         return_state: bool = False, backend: str = "auto"):
    """RWKV-7 WKV operator. Returns y [B, T, H, N], or (y, final state [B, H, N, N] float32)."""
    if backend not in WKV7_BACKENDS:
        raise ValueError(f"wkv7: backend {backend!r} (--wkv_backend) has no WKV7 implementation; "
                         f"choose one of {WKV7_BACKENDS}")
    check_wkv_inputs("wkv7", {"r": r, "w": w, "k": k, "v": v, "a": a, "b": b}, state)
    if backend == "fla":
        y, final = _wkv7_fla(r, w, k, v, a, b, state, return_state)
    elif torch_backend_uses_ops():
        y, final = wkv7_op(r, w, k, v, a, b, state, return_state)
    else:
        run = wkv7_sequential if r.shape[1] == 1 else wkv7_chunked
        y, final = run(r, w, k, v, a, b, state)
    return (y, final) if return_state else y


def _wkv7_fla(r, w, k, v, a, b, state, return_state):
    try:
        from fla.ops.rwkv7 import chunk_rwkv7
    except ImportError as err:
        raise RuntimeError("wkv7: backend 'fla' needs the fla-core package "
                           "(pip install fla-core) and a CUDA device") from err
    if r.device.type != "cuda":
        raise RuntimeError(f"wkv7: backend 'fla' runs on a CUDA device, not {r.device}")
    B, T, H, N = r.shape
    if state is not None:
        # fla's state is [B, H, key, value], as this project's; a shared [H, N, N] one is expanded.
        state = state.float().expand(B, H, N, N).contiguous()
    # By keyword: fla's positional order has changed between releases. fla takes the log-decay
    # itself and would scale r by 1/sqrt(N) unless told otherwise.
    return chunk_rwkv7(r=r, w=-torch.exp(w.float()), k=k, v=v, a=a, b=b, scale=1.0,
                       initial_state=state, output_final_state=return_state)
