"""Builders for tiny models and checkpoints that the tests make themselves (nothing is downloaded)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from conrwkv.config import TrainConfig
from conrwkv.data.markov import MarkovDataParams, write_markov_dataset
from conrwkv.model import RWKV, ModelConfig

# The x070 LoRA factors att.w1 .. att.g2, which multiply from the right like x060's *_w1 / *_w2.
_X070_LORA = re.compile(r"\.att\.[wavg][12]$")


def markov_folder(tmp_path_factory, **params) -> Path:
    """A datanew.py folder of order-1 chains (MarkovDataParams fields as keywords)."""
    out = tmp_path_factory.mktemp("data") / "k1"
    write_markov_dataset(out, MarkovDataParams(**params), progress=False)
    return out


def tiny_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=97, n_layer=2, n_embd=64, head_size=16)
    base.update(overrides)
    return ModelConfig(**base)


@torch.no_grad()
def randomize_(model: RWKV, seed: int = 0) -> RWKV:
    """Random weights of realistic scale everywhere (the official init zeros whole matrices,
    which would hide mistakes): matrices of unit gain, raw decays in [-3, 0.5], LayerNorm gains
    near 1."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("att.time_decay"):
            p.copy_(torch.empty(p.shape).uniform_(-3.0, 0.5, generator=gen))
        elif ".ln" in name or name.startswith("ln_out"):
            centre = 1.0 if name.endswith("weight") else 0.0
            p.copy_(centre + 0.2 * torch.randn(p.shape, generator=gen))
        elif name.endswith(("_w1", "_w2")) or _X070_LORA.search(name):   # used as x @ w: fan-in first
            p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-2] ** 0.5)
        elif p.dim() == 2 and not name.startswith("emb"):  # Linear weights [out, in]
            p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
        else:
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    return model


def random_checkpoint(path: Path, seed: int = 0, **config) -> tuple[Path, RWKV]:
    """Write a random official-format `.pth` and return it with the model that wrote it."""
    model = randomize_(RWKV(tiny_config(**config)), seed)
    model.save_checkpoint(path)
    return path, model


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Norm-wise relative error of a against the reference b, in float64."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def assert_matches_reference(fast, reference, inputs, names: str, tol: float = 1e-5) -> tuple:
    """`fast` on float32 copies of `inputs` against `reference` on float64 ones: the output y,
    the final state and the gradient of every input (None inputs skipped) within `tol`.
    Returns fast's (y, state)."""
    leaves = [x.clone().requires_grad_(True) if x is not None else None for x in inputs]
    leaves64 = [x.detach().double().requires_grad_(True) if x is not None else None for x in inputs]
    y, s = fast(*leaves)
    y_ref, s_ref = reference(*leaves64)
    assert y.dtype == torch.float32
    assert rel(y, y_ref) < tol and rel(s, s_ref) < tol
    dy, ds = torch.randn_like(y), torch.randn_like(s)
    torch.autograd.backward([y, s], [dy, ds])
    torch.autograd.backward([y_ref, s_ref], [dy.double(), ds.double()])
    for name, x, x64 in zip(names.split(), leaves, leaves64):
        if x is None:
            continue
        assert x.grad is not None, name
        assert rel(x.grad, x64.grad) < tol, name
    return y, s


def markov_lm_configs(markov: Path, proj: Path, **train) -> tuple[ModelConfig, TrainConfig]:
    """A 1-layer Con-RWKV (kernel 2) on binary Markov chains of 33 symbols, trained on the CPU
    in 16-chain batches; `train` overrides any TrainConfig field (default: 4 steps)."""
    model = ModelConfig(vocab_size=2, n_layer=1, n_embd=32, head_size=16, conv_kernel=2)
    base = dict(proj_dir=str(proj), data_file=str(markov), ctx_len=32, micro_bsz=16, max_steps=4,
                lr_init=3e-3, lr_final=3e-4, warmup_steps=2, accelerator="cpu", devices="1", seed=0,
                log_every=1)
    return model, TrainConfig(**{**base, **train})
