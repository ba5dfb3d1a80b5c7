"""The Lightning Trainer for both tasks: the resolved hardware (hardware.py), DeepSpeed, logs,
step checkpoints, guards against a diverged run, and resuming the run in the output folder."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from ..config import TrainConfig
from ..data.accumulation import optimizer_steps
from .batch_size import describe
from .checkpoint import AtomicCheckpointIO, StepCheckpoint
from .guards import TrainingGuard
from .hardware import Hardware
from .random_state import RandomStates
from .resume import (
    ProjDirLock,
    check_run_settings,
    choose_resume_checkpoint,
    record_run_settings,
    remove_stale_temporaries,
)
from .speed import StepSpeed
from .tracking import finish_wandb, wandb_logger

log = logging.getLogger(__name__)


def check_accumulation(cfg: TrainConfig, micro_batches: int, hardware: Hardware) -> None:
    """Under DeepSpeed, Lightning leaves the accumulation to DeepSpeed, which counts its windows
    over the whole run, while Lightning's steps restart their windows at every epoch and do not
    step an epoch's incomplete last window: the two agree only when an epoch is whole windows."""
    n = cfg.accumulate_grad_batches
    if hardware.strategy.startswith("deepspeed") and micro_batches % n:
        raise ValueError(f"--accumulate_grad_batches {n} under --strategy {hardware.strategy}: an "
                         f"epoch has {micro_batches} micro-batches per process, not a multiple of "
                         f"{n}; choose an --accumulate_grad_batches that divides {micro_batches}, or "
                         f"another --micro_bsz")


def resolve_max_steps(cfg: TrainConfig, datamodule, hardware: Hardware) -> TrainConfig:
    """With --epochs, turn epochs into optimizer steps (the schedule needs the total up front):
    an epoch's micro-batches / accumulate_grad_batches, its incomplete last window counted as
    the step Lightning takes for it (data/accumulation.py)."""
    datamodule.setup("fit")
    micro_batches = datamodule.batches_per_epoch(hardware.processes)
    check_accumulation(cfg, micro_batches, hardware)
    if cfg.epochs <= 0:
        return cfg
    per_epoch = cfg.epoch_steps or optimizer_steps(micro_batches, cfg.accumulate_grad_batches)
    if per_epoch < 1:
        raise ValueError("the training data is smaller than one batch per device")
    log.info("%d epochs x %d optimizer steps = %d steps", cfg.epochs, per_epoch, cfg.epochs * per_epoch)
    return dataclasses.replace(cfg, max_steps=cfg.epochs * per_epoch)


def lightning_strategy(name: str):
    """The Trainer's strategy for --strategy `name`. DeepSpeed's checkpoints leave out the frozen
    parameters: in state tuning those are the whole LLM and encoder, which the run loads from
    their own files at every launch, and writing them into every checkpoint would cost their
    full size (15 GB at 7B) per save. Trained tensors, optimizer and scheduler states stay."""
    if name.startswith("deepspeed_stage_"):
        from lightning.pytorch.strategies import DeepSpeedStrategy

        return DeepSpeedStrategy(stage=int(name.removeprefix("deepspeed_stage_")),
                                 exclude_frozen_parameters=True)
    return name


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


def build_trainer(cfg: TrainConfig, hardware: Hardware, weights_name: str, settings: dict) -> L.Trainer:
    """Data modules shard over the processes themselves: no sampler is injected by Lightning."""
    proj = Path(cfg.proj_dir)
    proj.mkdir(parents=True, exist_ok=True)
    # Each launch logs into a new version_N folder: a resumed run never overwrites earlier logs.
    loggers = [CSVLogger(proj, name="logs"), TensorBoardLogger(proj, name="tb")]
    if cfg.wandb:
        loggers.append(wandb_logger(cfg.wandb, proj, settings))
    guard = TrainingGuard(cfg.log_every)
    callbacks = [OutputFolder(proj, settings), guard, RandomStates(),
                 StepCheckpoint(proj, weights_name, cfg.save_every, settings, before_save=guard.check),
                 StepSpeed(cfg.log_every), LearningRateMonitor(logging_interval="step"),
                 TQDMProgressBar(refresh_rate=10)]
    # DeepSpeed writes its checkpoint folders itself; every other strategy writes through this.
    plugins = [] if hardware.strategy.startswith("deepspeed") else [AtomicCheckpointIO()]
    return L.Trainer(
        accelerator=hardware.accelerator, devices=hardware.devices, num_nodes=hardware.num_nodes,
        strategy=lightning_strategy(hardware.strategy), precision=hardware.precision, plugins=plugins,
        max_steps=cfg.max_steps, max_epochs=-1, accumulate_grad_batches=cfg.accumulate_grad_batches,
        # An integer val_check_interval counts micro-batches; val_every counts optimizer steps.
        val_check_interval=cfg.val_every * cfg.accumulate_grad_batches or None,
        check_val_every_n_epoch=None if cfg.val_every else 1,
        limit_val_batches=1.0 if cfg.val_every else 0, num_sanity_val_steps=0,
        log_every_n_steps=cfg.log_every, gradient_clip_val=cfg.grad_clip or None,
        logger=loggers, callbacks=callbacks, enable_checkpointing=False, default_root_dir=proj,
        use_distributed_sampler=False,
    )


def fit(module: L.LightningModule, datamodule: L.LightningDataModule, cfg: TrainConfig,
        hardware: Hardware, weights_name: str, run_config: dict) -> L.Trainer:
    """Train, continuing the run in proj_dir when it holds one (same settings required: see
    train/resume.py), then validate once.

    The settings recorded and compared are `run_config` plus what the flags leave to the machine
    (the number of processes, the resolved precision): a resume must run the same arithmetic."""
    settings = {**run_config, "processes": hardware.processes, "precision": hardware.precision}
    if "batch" in settings:
        log.info("batch: %s", describe(settings["batch"]))
    check_run_settings(cfg.proj_dir, settings)
    ckpt = choose_resume_checkpoint(cfg.proj_dir)
    if ckpt is not None:
        log.warning("resuming from %s", ckpt)
    L.seed_everything(cfg.seed, workers=True)
    trainer = build_trainer(cfg, hardware, weights_name, settings)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        _validate_after_fit(trainer, module, datamodule)
    finally:
        finish_wandb(trainer)
    return trainer


def _validate_after_fit(trainer: L.Trainer, module, datamodule) -> None:
    if getattr(trainer.strategy, "zero_stage_3", False):
        # Lightning's validate after fit initialises DeepSpeed again on a module whose ZeRO-3
        # shards its teardown moved to the CPU, and fails (seen on an H200, docs/benchmarks.md).
        log.warning("ZeRO stage 3: no validation after training; the last validation during "
                    "training (--val_every) is the run's final one, and --op eval scores the weights")
        return
    trainer.limit_val_batches = 1.0
    trainer.validate(module, datamodule=datamodule, verbose=False)
