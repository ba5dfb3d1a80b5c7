"""Adam parameter groups and the per-step learning-rate scheduler shared by LM and ASR training.

Every named group has its own (lr_init, lr_final) and follows the schedule of schedule.py; a
group is split further so that weight decay, when on, touches weight matrices only (never
decays, mixes, LayerNorms, biases or the trained state).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import TrainConfig
from .schedule import lr_factor


def build_optimizer(groups: dict[str, tuple[list[tuple[str, nn.Parameter]], float, float]],
                    cfg: TrainConfig) -> dict:
    """groups: name -> (named parameters, lr_init, lr_final). Frozen parameters are skipped.

    Returns Lightning's optimizer dict with a LambdaLR stepped every optimizer step."""
    param_groups, final_ratios = [], []
    for name, (named, lr_init, lr_final) in groups.items():
        if cfg.lr_schedule == "exp" and lr_final <= 0:
            raise ValueError(f"exponential decay needs lr_final > 0 (group {name!r} has {lr_final})")
        trainable = [(n, p) for n, p in named if p.requires_grad]
        matrices = [p for n, p in trainable if p.dim() == 2 and n.endswith(".weight")]
        others = [p for n, p in trainable if not (p.dim() == 2 and n.endswith(".weight"))]
        splits = ([(matrices, cfg.weight_decay), (others, 0.0)] if cfg.weight_decay > 0
                  else [(matrices + others, 0.0)])
        splits = [(params, decay) for params, decay in splits if params]
        for params, decay in splits:
            # one name per optimizer group (Lightning's learning-rate monitor refuses two of one
            # name): a group split by weight decay names its undecayed part apart
            group_name = f"{name}-no_decay" if len(splits) > 1 and not decay else name
            param_groups.append({"params": params, "lr": lr_init, "weight_decay": decay,
                                 "name": group_name})
            final_ratios.append(lr_final / lr_init if lr_init > 0 else 1.0)
    if not param_groups:
        raise ValueError("no trainable parameters")
    optimizer_class = torch.optim.AdamW if cfg.weight_decay > 0 else torch.optim.Adam
    optimizer = optimizer_class(param_groups, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps)
    schedules = [
        (lambda step, r=ratio: lr_factor(step, cfg.max_steps, cfg.warmup_steps, r, cfg.lr_schedule))
        for ratio in final_ratios
    ]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
