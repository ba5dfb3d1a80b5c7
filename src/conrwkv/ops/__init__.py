"""WKV operators: one dispatch point each, `wkv6` (torch, CUDA and fla backends) and `wkv7`."""

from .wkv6 import BACKENDS, resolve_backend, wkv6
from .wkv6_torch import wkv6_chunked, wkv6_sequential
from .wkv7 import WKV7_BACKENDS, wkv7
from .wkv7_torch import wkv7_chunked, wkv7_sequential
from .wkv_op import torch_backend_through_ops, wkv6_op, wkv7_op

__all__ = ["BACKENDS", "WKV7_BACKENDS", "resolve_backend", "wkv6", "wkv6_chunked", "wkv6_sequential",
           "wkv7", "wkv7_chunked", "wkv7_sequential", "torch_backend_through_ops", "wkv6_op", "wkv7_op"]
