"""WKV operators: one dispatch point (`wkv6`) over the torch, CUDA and fla backends."""

from .wkv6 import BACKENDS, resolve_backend, wkv6
from .wkv6_torch import wkv6_chunked, wkv6_sequential

__all__ = ["BACKENDS", "resolve_backend", "wkv6", "wkv6_chunked", "wkv6_sequential"]
