"""The random number generators' states as part of the resumable checkpoint.

Anything random in a training step (dropout, noise, random masking) draws from the global
generators of torch, numpy and Python. A resumed run starts from a fresh seed, so without their
saved states it would draw other numbers than the uninterrupted run from the first step after
the resume on. The states are saved with each checkpoint (after the step that it ends) and put
back just before the next step runs, where the uninterrupted run is at that point; the data
loaders have generators of their own (data/resumable.py), so nothing in between draws from the
global ones. The checkpoint holds global rank 0's states and every process restores them: the
processes' generators agree anyway (seeded alike by seed_everything, drawn from alike).
"""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch


def _numpy_state_as_tensors() -> dict:
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _set_numpy_state(state: dict) -> None:
    np.random.set_state((state["kind"], state["keys"].numpy().astype(np.uint32), state["position"],
                         state["has_gauss"], state["gauss"]))


class RandomStates(L.Callback):
    def __init__(self):
        self._to_restore: dict | None = None

    def state_dict(self) -> dict:
        # Python's state is a tuple of ints: stored as a tensor, a checkpoint stays a plain
        # weights_only-loadable file.
        version, internal, gauss = random.getstate()
        states = {"torch": torch.get_rng_state(), "numpy": _numpy_state_as_tensors(),
                  "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                             "gauss": gauss}}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            states["cuda"] = torch.cuda.get_rng_state()
        return states

    def load_state_dict(self, state_dict: dict) -> None:
        self._to_restore = state_dict

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        state, self._to_restore = self._to_restore, None
        if state is None:
            return
        torch.set_rng_state(state["torch"])
        _set_numpy_state(state["numpy"])
        python = state["python"]
        random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])
