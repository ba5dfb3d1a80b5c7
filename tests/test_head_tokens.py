"""--head_tokens data: only the head rows of the tokens the training data holds are trained, the
others stay exactly zero, and the loss it trains on is the full-vocabulary cross-entropy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conrwkv.config import ModelConfig, TrainConfig
from conrwkv.data.binidx import BinidxReader, write_binidx
from conrwkv.lm.module import head_subset_token_losses, masked_token_losses
from conrwkv.lm.run import train_lm
from conrwkv.model import RWKV

VOCAB = 300
ALPHABET = np.array([0, 7, 11, 42, 199, 250])        # the only ids in the training data


def test_the_subset_loss_is_the_full_cross_entropy_of_a_head_with_zero_rows():
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(VOCAB, 16, dtype=torch.float64)
    tokens = torch.from_numpy(ALPHABET)
    outside = torch.ones(VOCAB, dtype=torch.bool)
    outside[tokens] = False
    weight[outside] = 0.0
    weight.requires_grad_(True)
    position = torch.full((VOCAB,), -1, dtype=torch.long)
    position[tokens] = torch.arange(len(tokens))
    target = tokens[torch.randint(0, len(tokens), (3, 5))]
    mask = torch.ones(3, 5)
    mask[2, 3:] = 0
    target[2, 3:] = 123                                  # padding: an id outside the set, masked
    full = masked_token_losses(F.linear(hidden, weight), target, mask)
    subset = head_subset_token_losses(hidden, weight, tokens, position, target, mask)
    assert torch.allclose(full.double(), subset.double(), rtol=1e-6, atol=1e-6)
    g_full = torch.autograd.grad(full.sum(), (hidden, weight))
    g_subset = torch.autograd.grad(subset.sum(), (hidden, weight))
    assert torch.allclose(g_full[0], g_subset[0], atol=1e-6)
    # the rows of the set get the full head's gradient; the zero rows none (there they would get
    # p_j h, which is what keeping them at zero gives up)
    assert torch.allclose(g_full[1][tokens], g_subset[1][tokens], atol=1e-6)
    assert g_subset[1][outside].abs().max() == 0


def test_training_keeps_the_rows_outside_the_data_at_zero_and_learns(tmp_path):
    rng = np.random.default_rng(0)
    documents = [rng.choice(ALPHABET, size=40) for _ in range(200)]
    write_binidx(tmp_path / "train", documents, vocab_size=VOCAB)
    assert list(BinidxReader(tmp_path / "train").distinct_tokens()) == list(ALPHABET)
    model_cfg = ModelConfig(vocab_size=VOCAB, n_layer=1, n_embd=32, head_size=16)
    train_cfg = TrainConfig(proj_dir=str(tmp_path / "run"), data_file=str(tmp_path / "train"),
                            ctx_len=32, micro_bsz=8, max_steps=30, lr_init=2e-2, lr_final=2e-3,
                            warmup_steps=3, accelerator="cpu", devices="1", seed=0,
                            head_tokens="data", weight_decay=0.1)
    train_lm(model_cfg, {}, train_cfg)
    trained = RWKV.from_checkpoint(tmp_path / "run" / "rwkv-step000030.pth")
    head = trained.head.weight
    outside = torch.ones(VOCAB, dtype=torch.bool)
    outside[torch.from_numpy(ALPHABET)] = False
    assert head[outside].abs().max() == 0 and head[~outside].abs().min() > 0
    # the saved model with its full head: the i.i.d. letters cost ln 6 = 1.79 at best, a
    # uniform guess over the whole vocabulary ln 300 = 5.70
    batch = torch.from_numpy(np.stack(documents[:16])).long()
    with torch.no_grad():
        loss = F.cross_entropy(trained(batch[:, :-1])[0].flatten(0, 1), batch[:, 1:].flatten())
    assert loss < 2.0, loss


def test_head_tokens_data_refuses_a_model_to_fine_tune(tmp_path):
    write_binidx(tmp_path / "train", [ALPHABET] * 4, vocab_size=VOCAB)
    weights = tmp_path / "m.pth"
    RWKV(ModelConfig(vocab_size=VOCAB, n_layer=1, n_embd=32, head_size=16)).save_checkpoint(weights)
    train_cfg = TrainConfig(proj_dir=str(tmp_path / "run"), data_file=str(tmp_path / "train"), ctx_len=4,
                            accelerator="cpu", devices="1", head_tokens="data", load_model=str(weights))
    with pytest.raises(ValueError, match="--head_tokens data trains a model from scratch"):
        train_lm(ModelConfig(), {}, train_cfg)
