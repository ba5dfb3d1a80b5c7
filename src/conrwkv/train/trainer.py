"""The Lightning Trainer for both tasks: hardware and precision resolution, DeepSpeed, logs,
step checkpoints, guards against a diverged run, and resuming the run in the output folder."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from ..config import TrainConfig
from .checkpoint import AtomicCheckpointIO, StepCheckpoint
from .guards import TrainingGuard
from .random_state import RandomStates
from .resume import (
    ProjDirLock,
    check_run_settings,
    choose_resume_checkpoint,
    record_run_settings,
    remove_stale_temporaries,
)

log = logging.getLogger(__name__)


def resolve_accelerator(cfg: TrainConfig) -> str:
    if cfg.accelerator != "auto":
        return cfg.accelerator
    return "gpu" if torch.cuda.is_available() else "cpu"


def eval_device(cfg: TrainConfig) -> str:
    """Where evaluation after (or without) training runs; Lightning leaves models on the CPU."""
    return "cuda" if resolve_accelerator(cfg) == "gpu" else "cpu"


def resolve_precision(cfg: TrainConfig, accelerator: str) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16-mixed" if accelerator == "gpu" else "32-true"


def resolve_devices(cfg: TrainConfig):
    if cfg.devices == "auto":
        return "auto"
    try:
        return int(cfg.devices)
    except ValueError:
        raise ValueError(f"--devices must be a count or 'auto', got {cfg.devices!r}") from None


def world_size(cfg: TrainConfig) -> int:
    devices = resolve_devices(cfg)
    if devices == "auto":
        devices = max(torch.cuda.device_count(), 1) if resolve_accelerator(cfg) == "gpu" else 1
    return devices * cfg.num_nodes


def resolve_max_steps(cfg: TrainConfig, datamodule) -> TrainConfig:
    """With --epochs, turn epochs into optimizer steps (the schedule needs the total up front)."""
    if cfg.epochs <= 0:
        return cfg
    datamodule.setup("fit")
    per_epoch = cfg.epoch_steps or datamodule.steps_per_epoch(world_size(cfg))
    if per_epoch < 1:
        raise ValueError("the training data is smaller than one batch per device")
    log.info("%d epochs x %d steps = %d steps", cfg.epochs, per_epoch, cfg.epochs * per_epoch)
    return dataclasses.replace(cfg, max_steps=cfg.epochs * per_epoch)


def check_strategy(cfg: TrainConfig, accelerator: str) -> None:
    if cfg.strategy.startswith("deepspeed"):
        if accelerator != "gpu":
            raise ValueError(f"--strategy {cfg.strategy} needs GPUs (Lightning refuses DeepSpeed on "
                             f"the CPU); use --strategy auto or ddp on a CPU machine")
        if importlib.util.find_spec("deepspeed") is None:
            raise ValueError(f"--strategy {cfg.strategy} needs the deepspeed package "
                             f"(pip install deepspeed)")


class OutputFolder(L.Callback):
    """The process that writes the files (global rank 0) holds proj_dir for the whole fit:
    it takes the folder's lock, removes what killed launches left behind, and records the
    run's settings at its first launch (train/resume.py)."""

    def __init__(self, proj_dir: Path, settings: dict):
        self.lock, self.settings = ProjDirLock(proj_dir), settings

    def setup(self, trainer, pl_module, stage):
        if stage == "fit" and trainer.is_global_zero:
            self.lock.acquire()
            remove_stale_temporaries(self.lock.proj_dir)
            record_run_settings(self.lock.proj_dir, self.settings)

    def teardown(self, trainer, pl_module, stage):
        if stage == "fit":
            self.lock.release()


def build_trainer(cfg: TrainConfig, weights_name: str, settings: dict) -> L.Trainer:
    """Data modules shard over the processes themselves: no sampler is injected by Lightning."""
    accelerator = resolve_accelerator(cfg)
    check_strategy(cfg, accelerator)
    proj = Path(cfg.proj_dir)
    proj.mkdir(parents=True, exist_ok=True)
    # Each launch logs into a new version_N folder: a resumed run never overwrites earlier logs.
    loggers = [CSVLogger(proj, name="logs"), TensorBoardLogger(proj, name="tb")]
    guard = TrainingGuard(cfg.log_every)
    callbacks = [OutputFolder(proj, settings), guard, RandomStates(),
                 StepCheckpoint(proj, weights_name, cfg.save_every, settings, before_save=guard.check),
                 LearningRateMonitor(logging_interval="step"), TQDMProgressBar(refresh_rate=10)]
    # DeepSpeed writes its checkpoint folders itself; every other strategy writes through this.
    plugins = [] if cfg.strategy.startswith("deepspeed") else [AtomicCheckpointIO()]
    return L.Trainer(
        accelerator=accelerator, devices=resolve_devices(cfg), num_nodes=cfg.num_nodes,
        strategy=cfg.strategy, precision=resolve_precision(cfg, accelerator), plugins=plugins,
        max_steps=cfg.max_steps, max_epochs=-1,
        val_check_interval=cfg.val_every or None, check_val_every_n_epoch=None if cfg.val_every else 1,
        limit_val_batches=1.0 if cfg.val_every else 0, num_sanity_val_steps=0,
        log_every_n_steps=cfg.log_every, gradient_clip_val=cfg.grad_clip or None,
        logger=loggers, callbacks=callbacks, enable_checkpointing=False, default_root_dir=proj,
        use_distributed_sampler=False,
    )


def fit(module: L.LightningModule, datamodule: L.LightningDataModule, cfg: TrainConfig,
        weights_name: str, run_config: dict) -> L.Trainer:
    """Train, continuing the run in proj_dir when it holds one (same settings required: see
    train/resume.py), then validate once.

    The settings recorded and compared are `run_config` plus what the flags leave to the machine
    (the number of processes, the resolved precision): a resume must run the same arithmetic."""
    settings = {**run_config, "processes": world_size(cfg),
                "precision": resolve_precision(cfg, resolve_accelerator(cfg))}
    check_run_settings(cfg.proj_dir, settings)
    ckpt = choose_resume_checkpoint(cfg.proj_dir)
    if ckpt is not None:
        log.warning("resuming from %s", ckpt)
    L.seed_everything(cfg.seed, workers=True)
    trainer = build_trainer(cfg, weights_name, settings)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    trainer.limit_val_batches = 1.0
    trainer.validate(module, datamodule=datamodule, verbose=False)
    return trainer
