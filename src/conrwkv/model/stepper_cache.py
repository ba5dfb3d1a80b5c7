"""Reuse of RNNSteppers across decoding calls: one CUDA-graph capture per batch size, not per batch.

Building an RNNStepper on a GPU captures a CUDA graph (warm-up steps, then the capture), which
costs more than decoding a short batch. An evaluation decodes hundreds of batches of at most a
few sizes, so the eval loop owns a StepperCache and greedy decoding asks it for the stepper of
its batch size.

What a CUDA graph captures is the addresses of the tensors its kernels read, the model's
parameters and buffers among them, not their values. So weights changed in place (an optimizer
step, load_state_dict, copy_) are read afresh by the next replay and a cached stepper stays
right. A tensor whose storage was replaced (`param.data = ...`, `.to()` another dtype or
device, load_state_dict(assign=True)) would leave the graph reading memory that is no longer
the model's: the cache keeps, with each stepper, the storage address, dtype, device and shape of
every parameter and buffer at capture, and builds a new stepper when any differs. Each call
loads its own prefill state into the stepper (RNNStepper.reset), so nothing else carries over.
"""

from __future__ import annotations

import itertools

from .graph_step import RNNStepper
from .rwkv import RWKV


def _storage_key(model: RWKV) -> tuple:
    """What a captured graph depends on besides the values: where and how each tensor is stored."""
    return tuple((t.data_ptr(), t.dtype, t.device, tuple(t.shape))
                 for t in itertools.chain(model.parameters(), model.buffers()))


class StepperCache:
    def __init__(self):
        # (id(model), batch_size) -> (model, storage key, stepper). The entry holds the model, so
        # its id cannot be reused by another object while the entry exists.
        self._entries: dict[tuple[int, int], tuple[RWKV, tuple, RNNStepper]] = {}

    def get(self, model: RWKV, batch_size: int) -> RNNStepper:
        """The stepper for `model` at `batch_size`: the cached one while the model's tensors keep
        their storage, a newly built (and, on a GPU, newly captured) one otherwise."""
        key = _storage_key(model)
        entry = self._entries.get((id(model), batch_size))
        if entry is None or entry[0] is not model or entry[1] != key:
            entry = (model, key, RNNStepper(model, batch_size))
            self._entries[(id(model), batch_size)] = entry
        return entry[2]
