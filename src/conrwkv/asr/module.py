"""LightningModule for state tuning a speech recogniser (SpeechRWKV).

Only the trained tensors (time_state, projector, conv; the encoder when asked; the LLM's LoRA
matrices or weights under --llm_train lora / full) reach the optimizer, the weights files and the
resumable checkpoints: a 3B frozen LLM is never written again. The state gets its own, much
larger learning rate (docs/reference.md, "Learning rates"), and the LLM's weights their own.
"""

from __future__ import annotations

import lightning as L
import torch

from ..config import AsrConfig, TrainConfig
from ..data.accumulation import WINDOW_TARGETS, window_loss
from ..train.optim import build_optimizer
from .data import transcript_ids
from .speech_rwkv import SpeechRWKV


class AsrModule(L.LightningModule):
    def __init__(self, model: SpeechRWKV, train_config: TrainConfig, asr_config: AsrConfig, tokenizer):
        super().__init__()
        self.model = model
        self.train_config, self.asr_config, self.tokenizer = train_config, asr_config, tokenizer
        self.strict_loading = False        # resumable checkpoints hold the trained tensors only
        self._val_sums = None
        # Utterances used and skipped as bad audio (--skip_bad_audio) by this launch.
        self._audio_counts = torch.zeros(2, dtype=torch.float64)

    def targets(self, texts: list[str]) -> list[list[int]]:
        return transcript_ids(self.tokenizer, texts, self.asr_config)

    def training_step(self, batch, batch_idx):
        self._audio_counts += torch.tensor([len(batch["audio"]), batch["skipped"]], dtype=torch.float64)
        if self._audio_counts[1]:
            self.log("train/skipped_audio", float(self._audio_counts[1]), batch_size=1)
        if not batch["audio"]:
            # Every file of the batch was bad. The step still runs, with a zero loss that reaches
            # every trained parameter, so that the other processes' gradient all-reduce (DDP,
            # DeepSpeed) is matched instead of hanging (returning None skipped it on one rank).
            return sum((p * 0.0).sum() for p in self.model.trainable_named_parameters().values())
        sums, counts = self.model.utterance_losses(batch["audio"], self.targets(batch["texts"]),
                                                   self.asr_config.length_bucket)
        summed = sums.sum()
        self.log("train/loss", summed.detach() / counts.sum(), prog_bar=True, batch_size=len(batch["audio"]))
        # Token-weighted over the accumulation window, not a mean of micro-batch means.
        return window_loss(summed, batch[WINDOW_TARGETS], self.train_config.accumulate_grad_batches)

    def training_problem(self) -> str | None:
        """The guard's question (train/guards.py), asked on every process before each save and
        at each epoch's end: has no utterance that this launch read, on any process, decoded?"""
        used, skipped = self.trainer.strategy.reduce(self._audio_counts.to(self.device).clone(),
                                                     reduce_op="sum").tolist()
        if used == 0 and skipped > 0:
            return (f"none of the {int(skipped)} training utterances read since this launch "
                    f"started could be decoded (all skipped by --skip_bad_audio): check the audio "
                    f"of {self.train_config.data_file}; nothing was trained or saved")
        return None

    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(2, dtype=torch.float64, device=self.device)

    def validation_step(self, batch, batch_idx):
        if batch["audio"]:
            sums, counts = self.model.utterance_losses(batch["audio"], self.targets(batch["texts"]),
                                                       self.asr_config.length_bucket)
            self._val_sums += torch.stack([sums.sum().double(), counts.sum().double()])

    def on_validation_epoch_end(self) -> None:
        sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")
        if sums[1] > 0:
            self.log("val/loss", (sums[0] / sums[1]).float(), prog_bar=True, sync_dist=False)

    def configure_optimizers(self):
        cfg, asr = self.train_config, self.asr_config
        groups = self.model.named_parameter_groups()
        rates = {"state": (asr.lr_state_init, asr.lr_state_final),
                 "llm": (asr.lr_llm_init, asr.lr_llm_final)}
        return build_optimizer(
            {name: (list(params.items()), *rates.get(name, (cfg.lr_init, cfg.lr_final)))
             for name, params in groups.items() if params}, cfg)

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.trainable_state_dict()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {f"model.{k}": v for k, v in self.export_state_dict().items()}
