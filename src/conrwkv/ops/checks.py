"""The input checks the WKV operators share: every error names the operator and the tensor."""

from __future__ import annotations

from torch import Tensor


def _shape(x) -> object:
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__


def check_wkv_inputs(op: str, sequences: dict[str, Tensor], state: Tensor | None,
                     per_head: dict[str, Tensor] | None = None) -> None:
    """`sequences` (r first) all [B, T, H, N] with T >= 1; `per_head` tensors [H, N]; `state`
    [B, H, N, N] or a shared [H, N, N]; all floating point and on r's device."""
    r = sequences["r"]
    if not isinstance(r, Tensor) or r.dim() != 4:
        raise ValueError(f"{op}: r has shape {_shape(r)}; expected a 4-d tensor [B, T, H, N]")
    B, T, H, N = r.shape
    if T < 1:
        raise ValueError(f"{op}: r has T = {T} time steps; expected T >= 1")
    for name, x in sequences.items():
        if not isinstance(x, Tensor) or tuple(x.shape) != (B, T, H, N):
            raise ValueError(f"{op}: {name} has shape {_shape(x)}; expected [B, T, H, N] = "
                             f"{(B, T, H, N)}, the shape of r")
    checked = {**sequences}
    for name, x in (per_head or {}).items():
        if not isinstance(x, Tensor) or tuple(x.shape) != (H, N):
            raise ValueError(f"{op}: {name} has shape {_shape(x)}; expected [H, N] = {(H, N)}")
        checked[name] = x
    if state is not None:
        if not isinstance(state, Tensor) or tuple(state.shape) not in ((B, H, N, N), (H, N, N)):
            raise ValueError(f"{op}: state has shape {_shape(state)}; expected [B, H, N_key, N_value] = "
                             f"{(B, H, N, N)} or a shared [H, N, N] = {(H, N, N)}")
        checked["state"] = state
    for name, x in checked.items():
        if not x.is_floating_point():
            raise ValueError(f"{op}: {name} has dtype {x.dtype}; expected a floating-point tensor")
        if x.device != r.device:
            raise ValueError(f"{op}: {name} is on {x.device} but r is on {r.device}")
