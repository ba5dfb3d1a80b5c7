"""The effective batch of a run, stated once and the same way everywhere: in run.json and the
weights' .json records, in the `--dry_run` plan and in the log's first lines.

micro_bsz x accumulate_grad_batches x devices per node x nodes = the global batch (samples per
optimizer step), and what one optimizer step sees: tokens (LM: the global batch x ctx_len, an
upper bound for documents shorter than ctx_len) or seconds of audio (ASR: the mean utterance
duration x the global batch, a mean: length buckets make single steps longer or shorter), and
the optimizer steps an epoch takes. Free of Lightning, so that a dry run states it quickly.
"""

from __future__ import annotations

from ..config import TrainConfig
from ..data.accumulation import optimizer_steps
from .hardware import Hardware


def effective_batch(cfg: TrainConfig, hardware: Hardware, *, micro_batches_per_epoch: int | None,
                    tokens_per_sample: int | None = None,
                    mean_seconds_per_sample: float | None = None) -> dict:
    """The statement as a dict; `micro_batches_per_epoch` per process (None: data not read yet)."""
    per_node = hardware.processes // hardware.num_nodes
    global_batch = cfg.micro_bsz * cfg.accumulate_grad_batches * hardware.processes
    stated = {"micro_bsz": cfg.micro_bsz, "accumulate_grad_batches": cfg.accumulate_grad_batches,
              "devices_per_node": per_node, "num_nodes": hardware.num_nodes,
              "global_batch": global_batch}
    if tokens_per_sample is not None:
        stated["tokens_per_optimizer_step"] = global_batch * tokens_per_sample
    if mean_seconds_per_sample is not None:
        stated["mean_audio_seconds_per_optimizer_step"] = round(global_batch * mean_seconds_per_sample, 2)
    if micro_batches_per_epoch is not None:
        stated["optimizer_steps_per_epoch"] = (
            cfg.epoch_steps or optimizer_steps(micro_batches_per_epoch, cfg.accumulate_grad_batches))
    return stated


def describe(stated: dict) -> str:
    """One line for the log: `micro batch 8 x accumulation 4 x devices 2 x nodes 1 = global
    batch 64; 32768 tokens per optimizer step; 120 optimizer steps per epoch`."""
    parts = [f"micro batch {stated['micro_bsz']} x accumulation {stated['accumulate_grad_batches']} "
             f"x devices {stated['devices_per_node']} x nodes {stated['num_nodes']} = global batch "
             f"{stated['global_batch']}"]
    if "tokens_per_optimizer_step" in stated:
        parts.append(f"{stated['tokens_per_optimizer_step']} tokens per optimizer step")
    if "mean_audio_seconds_per_optimizer_step" in stated:
        parts.append(f"{stated['mean_audio_seconds_per_optimizer_step']} s of audio per optimizer "
                     f"step (mean)")
    if "optimizer_steps_per_epoch" in stated:
        parts.append(f"{stated['optimizer_steps_per_epoch']} optimizer steps per epoch")
    return "; ".join(parts)
