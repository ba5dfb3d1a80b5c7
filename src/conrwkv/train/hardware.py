"""Where and how a run computes, resolved once from the flags: accelerator, processes, precision,
strategy. Every part of a run (the Trainer, the dtype the frozen LLM is loaded in, the device an
evaluation runs on, the settings a resume compares) reads this one object instead of resolving
"auto" again on its own."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from ..config import TrainConfig


@dataclass(frozen=True)
class Hardware:
    accelerator: str            # "cpu" or "gpu"
    devices: int | str          # per node, as Lightning takes it: a count or "auto"
    num_nodes: int
    processes: int              # the world size
    precision: str              # a Lightning precision, never "auto"
    strategy: str

    @classmethod
    def of(cls, cfg: TrainConfig) -> Hardware:
        accelerator = cfg.accelerator
        if accelerator == "auto":
            accelerator = "gpu" if torch.cuda.is_available() else "cpu"
        if accelerator == "gpu" and not torch.cuda.is_available():
            raise ValueError("--accelerator gpu: no CUDA GPU is visible to torch (a CPU build of "
                             "torch, or no driver); use --accelerator cpu or auto")
        if cfg.devices == "auto":
            devices, per_node = "auto", max(torch.cuda.device_count(), 1) if accelerator == "gpu" else 1
        else:
            try:
                devices = per_node = int(cfg.devices)
            except ValueError:
                raise ValueError(f"--devices must be a count or 'auto', got {cfg.devices!r}") from None
            if per_node < 1:
                raise ValueError(f"--devices must be at least 1, got {per_node}")
        precision = cfg.precision
        if precision == "auto":
            precision = "bf16-mixed" if accelerator == "gpu" else "32-true"
        if cfg.strategy.startswith("deepspeed"):
            if accelerator != "gpu":
                raise ValueError(f"--strategy {cfg.strategy} needs GPUs (Lightning refuses DeepSpeed "
                                 f"on the CPU); use --strategy auto or ddp on a CPU machine")
            if importlib.util.find_spec("deepspeed") is None:
                raise ValueError(f"--strategy {cfg.strategy} needs the deepspeed package "
                                 f"(pip install deepspeed)")
        return cls(accelerator, devices, cfg.num_nodes, per_node * cfg.num_nodes, precision, cfg.strategy)

    @property
    def device(self) -> str:
        """Where an evaluation runs (one device; Lightning leaves trained models on the CPU)."""
        return "cuda" if self.accelerator == "gpu" else "cpu"

    @property
    def frozen_dtype(self) -> torch.dtype:
        """The dtype frozen weights are held in: bf16 under a bf16 precision, else fp32."""
        return torch.bfloat16 if self.precision.startswith("bf16") else torch.float32
