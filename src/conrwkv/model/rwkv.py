"""The RWKV-6 language model (Peng et al. 2024, "Eagle and Finch"), with Con-RWKV's optional
causal convolution and a trainable initial state, loading and saving official `.pth` files.
The same class runs RWKV-5.2 (x052) and RWKV-7 (x070) blocks, chosen by `ModelConfig.arch`.

    model = RWKV.from_checkpoint("RWKV-x060-World-1B6.pth")   # shape inferred from the keys
    logits, state = model(idx)                                 # idx [B, T] -> logits [B, T, V]
    logits, state = model(idx, state=state)                    # continue from a state

The same forward serves whole sequences and RNN mode (T = 1 per call, the state carried); the
two agree to rounding. Inputs may also be embeddings [B, T, C] (speech features, for example),
which enter where emb(idx) would, before ln0.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, replace

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..config import ModelConfig
from ..io import atomic_torch_save, safe_torch_load
from ..ops import resolve_backend
from .channel_mix import ChannelMix
from .channel_mix7 import ChannelMix7
from .official_format import infer_config, load_matching, strip_prefix
from .state import LayerState, RWKVState
from .time_mix import TimeMix
from .time_mix7 import TimeMix7


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        C = config.n_embd
        self.ln0 = nn.LayerNorm(C) if layer_id == 0 else None
        self.ln1 = nn.LayerNorm(C)
        self.ln2 = nn.LayerNorm(C)
        self.rwkv7 = config.arch == "x070"
        self.att = (TimeMix7 if self.rwkv7 else TimeMix)(config, layer_id)
        self.ffn = (ChannelMix7 if self.rwkv7 else ChannelMix)(config, layer_id)

    def forward(self, x: Tensor, state: LayerState | None, v_first: Tensor | None = None
                ) -> tuple[Tensor, LayerState, Tensor | None]:
        """Returns (x, new state, v_first): x070's value residual, block 0's value, passed on
        to every later block (None for x060 and x052)."""
        if self.ln0 is not None:
            x = self.ln0(x)
        if self.rwkv7:
            att_out, att_shift, wkv, conv, v_first = self.att(self.ln1(x), state, v_first)
        else:
            att_out, att_shift, wkv, conv = self.att(self.ln1(x), state)
        x = x + att_out
        ffn_out, ffn_shift = self.ffn(self.ln2(x), None if state is None else state.ffn_shift)
        return x + ffn_out, LayerState(att_shift, wkv, ffn_shift, conv), v_first


class RWKV(nn.Module):
    def __init__(self, config: ModelConfig, init: bool = True):
        """Build the model; `init=False` leaves weights uninitialised (for loading)."""
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if init:
            self.init_weights()

    # ---------------------------------------------------------------- initialisation
    @torch.no_grad()
    def init_weights(self) -> None:
        """The official scheme for training from scratch (docs/reference.md, "Initialisation")."""
        V, C = self.config.vocab_size, self.config.n_embd
        self.emb.weight.uniform_(-1e-4, 1e-4)
        nn.init.orthogonal_(self.head.weight, gain=0.5 * (V / C) ** 0.5 if V > C else 0.5)
        for module in self.modules():
            if isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        for block in self.blocks:
            block.att.init_weights()
            block.ffn.init_weights()

    # ---------------------------------------------------------------- forward
    def forward_hidden(self, inputs: Tensor, state: RWKVState | None = None) -> tuple[Tensor, RWKVState]:
        """inputs: token ids [B, T] or embeddings [B, T, C]. Returns (ln_out(x) [B, T, C], state)."""
        if inputs.dtype in (torch.int32, torch.int64):
            if inputs.dim() != 2:
                raise ValueError(f"token ids must be [B, T], got shape {tuple(inputs.shape)}")
            x = self.emb(inputs)
        elif inputs.dim() == 3 and inputs.shape[-1] == self.config.n_embd:
            x = inputs.to(self.emb.weight.dtype)
        else:
            raise ValueError(f"inputs must be token ids [B, T] or embeddings [B, T, "
                             f"{self.config.n_embd}], got {inputs.dtype} {tuple(inputs.shape)}")
        if state is not None and len(state) != len(self.blocks):
            raise ValueError(f"state has {len(state)} layers, the model {len(self.blocks)}")
        new_state = RWKVState()
        v_first = None
        for i, block in enumerate(self.blocks):
            layer_state = None if state is None else state[i]
            if self.config.grad_cp and self.training and torch.is_grad_enabled():
                x, layer_state, v_first = checkpoint(block, x, layer_state, v_first, use_reentrant=False)
            else:
                x, layer_state, v_first = block(x, layer_state, v_first)
            new_state.append(layer_state)
        return self.ln_out(x), new_state

    def forward(self, inputs: Tensor, state: RWKVState | None = None) -> tuple[Tensor, RWKVState]:
        """inputs: token ids [B, T] or embeddings [B, T, C]. Returns (logits [B, T, V], state)."""
        hidden, state = self.forward_hidden(inputs, state)
        return self.head(hidden), state

    def compile_blocks(self, **options) -> None:
        """torch.compile every block in place (`options` go to torch.compile).

        Each block's token shift, low-rank mixes, LayerNorms, GroupNorm x gate and channel mix
        become a few fused kernels instead of dozens of unfused elementwise ones; the WKV CUDA
        kernels are one node of each block's graph (the custom op conrwkv::wkv6), fla's a graph
        break, so any WKV backend works. The blocks
        share one compiled code object (same code, parameters as inputs), so the compile cost
        is paid once per input shape, not once per layer."""
        for block in self.blocks:
            block.compile(**options)

    def compile_model(self, **options) -> None:
        """torch.compile the whole model in place, as one graph (fullgraph=True unless `options`
        say otherwise; the rest go to torch.compile too): what `train.py --compile` does.

        The graph is forward_hidden (embedding, every block, the last LayerNorm), which both
        forward and the ASR model (asr/speech_rwkv.py, which applies the head to the target
        positions only) call; the head is one matrix product either way. No graph break with
        any WKV backend but fla: the torch backend is plain tensor code and the CUDA kernels are
        the custom op conrwkv::wkv6 (ops/wkv_op.py), so the fusions cross block boundaries and
        nothing leaves the graph. Costs one compile of the whole model per input shape, instead
        of one of a block (compile_blocks)."""
        compiled = torch.compile(self.forward_hidden, **{"fullgraph": True, **options})
        resolves_wkv6 = self.config.arch != "x070"

        def forward_hidden(inputs: Tensor, state: RWKVState | None = None) -> tuple[Tensor, RWKVState]:
            if resolves_wkv6:
                # The first choice of "auto" for a device logs and may build the CUDA kernels: a
                # graph break under fullgraph. Made here, outside the graph, the traced code finds
                # it cached.
                resolve_backend(self.config.wkv_backend, inputs.device)
            return compiled(inputs, state)

        self.forward_hidden = forward_hidden

    # ---------------------------------------------------------------- official .pth files
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, dtype: torch.dtype | None = None,
                        device: str | torch.device = "cpu", **overrides) -> RWKV:
        """Load an official RWKV-7, RWKV-6 or RWKV-5.2 `.pth`; its shape is read off the keys.

        `overrides` are ModelConfig fields. Options (conv_kernel, state_tuning, wkv_backend,
        grad_cp) switch things on; shape fields (n_layer, n_embd, ...) are expectations, and a
        file of another shape is refused with the key and both shapes. `dtype` defaults to the
        file's own."""
        source = str(path)
        sd = strip_prefix(safe_torch_load(path))
        config = _config_of(sd, source, overrides)
        dtype = dtype or sd["emb.weight"].dtype
        with _default_dtype(dtype), torch.device("meta"):
            model = cls(config, init=False)
        model = model.to_empty(device=device)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name in load_matching(model, sd, source):
                params[name].zero_()            # an adapter the file lacks starts neutral
        return model

    @staticmethod
    def config_from_checkpoint(path: str | os.PathLike, **overrides) -> ModelConfig:
        """The ModelConfig that from_checkpoint(path, **overrides) builds, read off the keys and
        shapes alone (memory-mapped: the weights are not read)."""
        sd = strip_prefix(safe_torch_load(path, mmap=True, finite=False))
        config = _config_of(sd, str(path), overrides)
        inferred = infer_config(sd, str(path))
        for name in ("vocab_size", "n_embd", "dim_att", "dim_ffn", "head_size", "mix_rank", "decay_rank",
                     "w_rank", "a_rank", "v_rank", "g_rank"):
            if name in overrides and overrides[name] != getattr(inferred, name):
                raise ValueError(f"{path}: its keys give {name} = {getattr(inferred, name)}, not "
                                 f"{overrides[name]}")
        return config

    def official_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """The state dict under the official key names (the module names are those names)."""
        return {k: (v.to(dtype) if dtype else v).detach().cpu().contiguous()
                for k, v in self.state_dict().items()}

    def save_checkpoint(self, path: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
        """Write an official-layout `.pth` (atomically: a crash never leaves half a file)."""
        atomic_torch_save(self.official_state_dict(dtype), path)


def _config_of(sd: dict[str, Tensor], source: str, overrides: dict) -> ModelConfig:
    """The shape read off an official state dict, with `overrides` (ModelConfig fields) applied:
    options switch things on, shape fields are checked against the file."""
    inferred = infer_config(sd, source)
    if "n_layer" in overrides and overrides["n_layer"] != inferred.n_layer:
        raise ValueError(f"{source}: has {inferred.n_layer} layers (blocks.0 .. "
                         f"blocks.{inferred.n_layer - 1}), but n_layer = {overrides['n_layer']}")
    unknown = set(overrides) - set(asdict(inferred))
    if unknown:
        raise TypeError(f"unknown ModelConfig fields: {sorted(unknown)}")
    # "off" never removes what the file has.
    applied = {k: v for k, v in overrides.items() if not (k in ("conv_kernel", "state_tuning") and not v)}
    return replace(inferred, **applied)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
