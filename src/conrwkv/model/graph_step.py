"""RNN-mode decoding of an RWKV at a fixed batch size, replayed from a CUDA graph.

A one-token step of a 24-layer model launches a few hundred small kernels. Launched one by one
from Python, the host is the bottleneck at small batches (the GPU waits between kernels); a
CUDA graph records the step once and replays all its kernels with one call.

    stepper = RNNStepper(model, batch_size=1)          # captures the graph (on a CUDA model)
    stepper.reset(state)                               # the state after a prefill (None: initial)
    logits = stepper.step(tokens)                      # tokens [B] -> fp32 logits [B, V]
    generated = stepper.greedy(first_tokens, n)        # n greedy tokens per row [B, n]

The step reads its inputs from, and writes its outputs to, buffers that keep their addresses
(a graph replays fixed pointers): `step` copies the tokens in, and the new state is copied over
the old one inside the step. The same code runs without a graph (`use_graph=False`, and always
on the CPU), which is what the CPU tests check against the model's own forward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .rwkv import RWKV
from .state import LayerState, RWKVState


def initial_state(model: RWKV, batch_size: int) -> RWKVState:
    """The state the model starts from: zero shifts (and conv cache), the trained initial WKV
    state where the model has one, zeros otherwise. Equivalent to passing state=None."""
    cfg = model.config
    weight = model.emb.weight
    H, N = cfg.n_head, cfg.head_size
    layers = []
    for block in model.blocks:
        wkv0 = block.att.initial_wkv_state()
        wkv = (weight.new_zeros(batch_size, H, N, N, dtype=torch.float32) if wkv0 is None
               else wkv0.to(weight.device).expand(batch_size, H, N, N).clone())
        conv = (weight.new_zeros(batch_size, cfg.conv_kernel - 1, cfg.n_embd)
                if cfg.conv_kernel > 1 else None)
        layers.append(LayerState(weight.new_zeros(batch_size, cfg.n_embd), wkv,
                                 weight.new_zeros(batch_size, cfg.n_embd), conv))
    return RWKVState(layers)


def _copy_state(target: RWKVState, source: RWKVState) -> None:
    """Copy `source` into `target`'s tensors in place (their addresses are what a graph replays)."""
    for old, new in zip(target, source):
        for field in ("att_shift", "wkv", "ffn_shift", "conv"):
            if getattr(old, field) is not None:
                getattr(old, field).copy_(getattr(new, field))


class RNNStepper:
    def __init__(self, model: RWKV, batch_size: int, use_graph: bool | None = None, warmup: int = 2):
        """Prepare the buffers and, when `use_graph` (default: the model is on a CUDA device),
        capture the step. `warmup` eager steps run first on a side stream, as graph capture
        needs (lazy initialisation, the WKV extension's first load, cuBLAS workspaces)."""
        device = model.emb.weight.device
        if use_graph is None:
            use_graph = device.type == "cuda"
        if use_graph and device.type != "cuda":
            raise ValueError(f"RNNStepper: CUDA graphs need a CUDA model, this one is on {device}")
        if batch_size < 1:
            raise ValueError(f"RNNStepper: batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = batch_size
        self.tokens = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.state = initial_state(model, batch_size)
        self.logits = torch.zeros(batch_size, model.config.vocab_size, dtype=torch.float32, device=device)
        self.next_tokens = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.graph = None
        if use_graph:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    self._compute()
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._compute()
        self.reset()                       # the warm-up steps moved the state

    @torch.no_grad()
    def _compute(self) -> None:
        logits, new_state = self.model(self.tokens, self.state)
        self.logits.copy_(logits[:, -1])
        self.next_tokens.copy_(self.logits.argmax(-1))
        # Every new tensor is computed before the first copy, so overwriting the state is safe.
        _copy_state(self.state, new_state)

    def _run(self) -> None:
        if self.graph is None:
            self._compute()
        else:
            self.graph.replay()

    @torch.no_grad()
    def reset(self, state: RWKVState | None = None) -> None:
        """Load `state` (batch size `batch_size`, e.g. after a prefill) or the initial state."""
        source = initial_state(self.model, self.batch_size) if state is None else state
        if source.batch_size != self.batch_size:
            raise ValueError(f"RNNStepper: the state has batch size {source.batch_size}, the stepper "
                             f"{self.batch_size}")
        _copy_state(self.state, source)

    def current_state(self) -> RWKVState:
        """A copy of the state after the last step (the buffers themselves are overwritten)."""
        return self.state.map(lambda t: t.clone())

    @torch.no_grad()
    def step(self, tokens: Tensor) -> Tensor:
        """Feed one token per row (tokens [B]); return the fp32 next-token logits [B, V].

        The logits live in a buffer that the next step overwrites: clone them to keep them."""
        if tokens.shape != (self.batch_size,):
            raise ValueError(f"RNNStepper.step: tokens must have shape [{self.batch_size}], got "
                             f"{tuple(tokens.shape)}")
        self.tokens.copy_(tokens.view(-1, 1))
        self._run()
        return self.logits

    @torch.no_grad()
    def greedy(self, first_tokens: Tensor, n: int) -> Tensor:
        """Feed `first_tokens` [B], then each step's argmax, n steps; returns the n argmax tokens
        of each row [B, n]. Nothing waits for the host between steps."""
        out = torch.empty(self.batch_size, n, dtype=torch.long, device=self.tokens.device)
        self.tokens.copy_(first_tokens.view(-1, 1))
        for i in range(n):
            self._run()
            out[:, i] = self.next_tokens
            self.tokens.copy_(self.next_tokens.view(-1, 1))
        return out
