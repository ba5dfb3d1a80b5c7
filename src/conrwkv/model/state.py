"""The recurrent state of an RWKV model: what RNN mode carries from one call to the next.

Per layer: the last time-mix input (token shift), the WKV matrix state in float32 laid out
[B, H, key, value], the last channel-mix input, and for Con-RWKV the last K-1 conv inputs.
The `rwkv` package keeps the same three tensors per layer (at 3i, 3i+1, 3i+2) without the
batch dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class LayerState:
    att_shift: Tensor        # [B, C]
    wkv: Tensor              # [B, H, N_key, N_value], float32
    ffn_shift: Tensor        # [B, C]
    conv: Tensor | None      # [B, K-1, C] or None without a conv (or with K = 1)

    def map(self, fn) -> LayerState:
        return LayerState(fn(self.att_shift), fn(self.wkv), fn(self.ffn_shift),
                          None if self.conv is None else fn(self.conv))


class RWKVState(list):
    """A list of LayerState, one per block, with the batch operations decoding needs."""

    @property
    def batch_size(self) -> int:
        return self[0].att_shift.shape[0]

    def map(self, fn) -> RWKVState:
        return RWKVState(layer.map(fn) for layer in self)

    def select(self, rows: Tensor) -> RWKVState:
        """Rows of the batch, in the given order (beam search reorders and repeats them)."""
        return self.map(lambda t: t.index_select(0, rows))

    def detach(self) -> RWKVState:
        return self.map(lambda t: t.detach())
