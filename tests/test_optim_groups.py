"""train/optim.build_optimizer: weight decay on weight matrices only, one name per optimizer group
(Lightning's learning-rate monitor refuses two of one name: it stopped `train.py --task lm
--weight_decay 0.1` before its first step)."""

import torch

from conrwkv.config import TrainConfig
from conrwkv.train.optim import build_optimizer


def test_a_group_split_by_weight_decay_names_its_parts_apart():
    layer = torch.nn.Sequential(torch.nn.Linear(3, 3))
    state = torch.nn.Parameter(torch.zeros(2, 2, 2))
    groups = {"model": (list(layer.named_parameters()), 1e-3, 1e-4),
              "state": ([("time_state", state)], 1e-2, 1e-3)}
    plain = build_optimizer(groups, TrainConfig(weight_decay=0.0))["optimizer"]
    assert [(g["name"], g["weight_decay"], len(g["params"])) for g in plain.param_groups] == [
        ("model", 0.0, 2), ("state", 0.0, 1)]
    decayed = build_optimizer(groups, TrainConfig(weight_decay=0.1))["optimizer"]
    assert isinstance(decayed, torch.optim.AdamW)
    assert [(g["name"], g["weight_decay"], len(g["params"])) for g in decayed.param_groups] == [
        ("model", 0.1, 1), ("model-no_decay", 0.0, 1), ("state", 0.0, 1)]
    assert decayed.param_groups[0]["params"][0] is layer[0].weight
