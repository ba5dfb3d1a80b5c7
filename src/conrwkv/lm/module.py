"""LightningModule for language-model training: from scratch (RWKV-ICL) or from an official .pth.

Loss: mean next-token cross-entropy over the unmasked targets; under gradient accumulation, over
the targets of the whole accumulation window (data/accumulation.py). Validation accumulates summed
loss and token counts across batches and processes before dividing, so the reported loss is a
true per-token mean whatever the batching; on Markov data it also sums the Bayes-optimal loss
of exactly the same documents and positions, so val/gap is an exact comparison.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ModelConfig, TrainConfig
from ..data.accumulation import WINDOW_TARGETS, window_loss
from ..model import RWKV
from ..train.optim import build_optimizer


def masked_token_losses(logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Per-token cross-entropy [B, T] in float32, zero where mask is False."""
    losses = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="none")
    return losses.view_as(target) * mask


def head_subset_token_losses(hidden: Tensor, head_weight: Tensor, tokens: Tensor, position: Tensor,
                             target: Tensor, mask: Tensor) -> Tensor:
    """masked_token_losses of the full head, computed from the rows of `tokens` only, for a head
    whose every other row is zero (--head_tokens data).

    Each zero row's logit is exactly 0, so the V - S of them together add (V - S) e^0 to the
    softmax's denominator: one extra logit ln(V - S) stands for them all, and the loss is the
    full-vocabulary cross-entropy to rounding. `position` [V] maps a token id to its place in
    `tokens` (targets must be among them wherever mask is True)."""
    V, S = head_weight.shape[0], tokens.numel()
    logits = F.linear(hidden, head_weight[tokens]).float()
    if S < V:
        rest = torch.full((*logits.shape[:-1], 1), math.log(V - S), dtype=logits.dtype, device=logits.device)
        logits = torch.cat([logits, rest], -1)
    # masked targets may be any id (padding): they are sent to class 0 and weigh nothing
    index = torch.where(mask.bool(), position[target], 0)
    losses = F.cross_entropy(logits.flatten(0, 1), index.flatten(), reduction="none")
    return losses.view_as(target) * mask


class LMModule(L.LightningModule):
    def __init__(self, model: RWKV, train_config: TrainConfig,
                 bayes_by_sequence: np.ndarray | None = None, head_tokens: np.ndarray | None = None):
        """bayes_by_sequence: [n_val, seq_len - 1] Bayes-optimal loss of each validation
        document at each predicted position (from a datanew.py folder), or None. head_tokens:
        the sorted token ids whose head rows are trained (the others must be zero), or None
        for the whole head."""
        super().__init__()
        self.model = model
        self.train_config = train_config
        self.bayes = None if bayes_by_sequence is None else torch.from_numpy(bayes_by_sequence)
        self._val_sums: Tensor | None = None
        if head_tokens is None:
            self.head_tokens: Tensor | None = None
        else:
            tokens = torch.as_tensor(head_tokens, dtype=torch.long)
            position = torch.full((model.config.vocab_size,), -1, dtype=torch.long)
            position[tokens] = torch.arange(tokens.numel())
            # buffers, so that they follow the module to its device; not saved in checkpoints
            self.register_buffer("head_tokens", tokens, persistent=False)
            self.register_buffer("head_position", position, persistent=False)

    @property
    def model_config(self) -> ModelConfig:
        return self.model.config

    def forward(self, idx: Tensor) -> Tensor:
        return self.model(idx)[0]

    def training_step(self, batch, batch_idx):
        if self.head_tokens is None:
            losses = masked_token_losses(self(batch["input"]), batch["target"], batch["mask"])
        else:
            hidden = self.model.forward_hidden(batch["input"])[0]
            losses = head_subset_token_losses(hidden, self.model.head.weight, self.head_tokens,
                                              self.head_position, batch["target"], batch["mask"])
        summed = losses.sum()
        self.log("train/loss", summed.detach() / batch["mask"].sum().clamp(min=1), prog_bar=True)
        return window_loss(summed, batch[WINDOW_TARGETS], self.train_config.accumulate_grad_batches)

    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss, bayes, count

    def validation_step(self, batch, batch_idx):
        mask = batch["mask"]
        losses = masked_token_losses(self(batch["input"]), batch["target"], mask)
        self._val_sums[0] += losses.sum().double()
        self._val_sums[2] += mask.sum()
        if self.bayes is not None:
            T = mask.shape[1]
            reference = self.bayes[batch["index"].cpu(), :T].to(self.device, torch.float64)
            self._val_sums[1] += (reference * mask[:, : reference.shape[1]]).sum()

    def on_validation_epoch_end(self) -> None:
        sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")
        if sums[2] == 0:
            return
        loss = sums[0] / sums[2]
        self.log("val/loss", loss.float(), prog_bar=True, sync_dist=False)
        if self.bayes is not None:
            bayes = sums[1] / sums[2]
            self.log("val/bayes", bayes.float(), sync_dist=False)
            self.log("val/gap", (loss - bayes).float(), prog_bar=True, sync_dist=False)

    def configure_optimizers(self):
        cfg = self.train_config
        return build_optimizer({"model": (list(self.model.named_parameters()), cfg.lr_init, cfg.lr_final)},
                               cfg)

    def export_state_dict(self) -> dict[str, Tensor]:
        """What the weights file holds: here the whole model, under the official key names."""
        return self.model.official_state_dict()
