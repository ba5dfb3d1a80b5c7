"""`train.py --task lm`: train a language model (from scratch or from a .pth) and evaluate it.

On a datanew.py folder the run ends with the in-context-learning evaluation: loss against the
Bayes-optimal estimator on the validation chains, written as JSON and a PNG beside the final
weights.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from ..config import ModelConfig, TrainConfig
from ..model import RWKV6
from ..train.checkpoint import latest_weights
from ..train.hardware import Hardware
from ..train.trainer import fit, resolve_max_steps
from .data import LMDataModule, resolve_lm_data
from .icl_eval import evaluate_and_plot
from .module import LMModule

log = logging.getLogger(__name__)
WEIGHTS_NAME = "rwkv"


def model_config(model_cfg: ModelConfig, model_given: dict, weights: str) -> ModelConfig:
    """The model a run builds: the flags' shape from scratch, or the shape read off the weights
    file with the typed flags checked against it or applied (what --dry_run prints)."""
    if not weights:
        return model_cfg
    return RWKV6.config_from_checkpoint(weights, **model_given)


def _weights_to_evaluate(train_cfg: TrainConfig) -> Path:
    weights = train_cfg.load_model or latest_weights(train_cfg.proj_dir, WEIGHTS_NAME)
    if not weights:
        raise ValueError(f"nothing to evaluate: give --load_model, or train into --proj_dir "
                         f"{train_cfg.proj_dir} first (no {WEIGHTS_NAME}-step*.pth there)")
    return Path(weights)


def _model_plan(model_cfg: ModelConfig, model_given: dict, weights: str) -> dict:
    if weights and not Path(weights).is_file():
        return {"from": weights, "note": "not there yet: its shape is read when the run starts"}
    return {"from": weights or "scratch (official init)",
            **dataclasses.asdict(model_config(model_cfg, model_given, weights))}


def plan_train_lm(model_cfg: ModelConfig, model_given: dict, train_cfg: TrainConfig) -> dict:
    """What train_lm will use, for --dry_run: the model, the data and the hardware resolved."""
    return {"model": _model_plan(model_cfg, model_given, train_cfg.load_model),
            "data": _data_plan(train_cfg), "hardware": dataclasses.asdict(Hardware.of(train_cfg))}


def plan_eval_lm(model_cfg: ModelConfig, model_given: dict, train_cfg: TrainConfig) -> dict:
    """What eval_lm will use, for --dry_run."""
    try:
        weights = str(_weights_to_evaluate(train_cfg))
    except ValueError as err:
        weights = f"none yet ({err})"
    return {"weights": weights, "model": _model_plan(model_cfg, model_given, weights)
            if Path(weights).is_file() else {}, "data": _data_plan(train_cfg),
            "hardware": dataclasses.asdict(Hardware.of(train_cfg))}


def _data_plan(train_cfg: TrainConfig) -> dict:
    if not Path(train_cfg.data_file).exists() and not Path(f"{train_cfg.data_file}.idx").exists():
        return {"from": train_cfg.data_file, "note": "not there yet: resolved when the run starts"}
    data = resolve_lm_data(train_cfg)
    return {"train": str(data.train), "val": str(data.val) if data.val else None,
            "sampling": data.kind, "markov_folder": str(data.markov_folder) if data.markov_folder else None}


def build_model(model_cfg: ModelConfig, model_given: dict, weights: str) -> RWKV6:
    """From scratch (official init), or from an official .pth whose shape wins over defaults;
    shape flags that were typed are checked against the file."""
    if not weights:
        return RWKV6(model_cfg)
    return RWKV6.from_checkpoint(weights, dtype=torch.float32, **model_given)


def train_lm(model_cfg: ModelConfig, model_given: dict, train_cfg: TrainConfig) -> dict:
    hardware = Hardware.of(train_cfg)
    data = resolve_lm_data(train_cfg)
    torch.manual_seed(train_cfg.seed)
    model = build_model(model_cfg, model_given, train_cfg.load_model)
    if train_cfg.compile:
        model.compile_blocks()
    datamodule = LMDataModule(train_cfg, model.config.vocab_size, data)
    datamodule.setup("fit")              # every data check before training starts
    train_cfg = resolve_max_steps(train_cfg, datamodule, hardware)
    markov = data.markov_folder
    bayes = np.load(markov / "val_curves.npz")["bayes_by_sequence"] if markov else None
    module = LMModule(model, train_cfg, bayes)
    run_config = {"task": "lm", "model": dataclasses.asdict(model.config),
                  "train": dataclasses.asdict(train_cfg)}
    trainer = fit(module, datamodule, train_cfg, hardware, WEIGHTS_NAME, run_config)
    result = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if markov and trainer.is_global_zero:
        weights = latest_weights(train_cfg.proj_dir, WEIGHTS_NAME)
        result["icl"] = evaluate_and_plot(module.model.to(hardware.device), markov, train_cfg.ctx_len,
                                          weights, batch_size=max(train_cfg.micro_bsz, 32),
                                          device=hardware.device)
        _print_icl(result["icl"], weights)
    return result


def eval_lm(model_cfg: ModelConfig, model_given: dict, train_cfg: TrainConfig) -> dict:
    """Evaluate --load_model, or the newest weights in --proj_dir, on the validation data."""
    hardware = Hardware.of(train_cfg)
    weights = _weights_to_evaluate(train_cfg)
    markov = resolve_lm_data(train_cfg).markov_folder
    if markov is None:
        raise ValueError("--op eval for --task lm needs a datanew.py folder as --data_file")
    model = build_model(model_cfg, model_given, str(weights))
    summary = evaluate_and_plot(model.to(hardware.device), markov, train_cfg.ctx_len, weights,
                                batch_size=max(train_cfg.micro_bsz, 32), device=hardware.device)
    _print_icl(summary, weights)
    return {"icl": summary}


def _print_icl(summary: dict, weights) -> None:
    lower = ", ".join(f"{k} {v:.4f}" for k, v in summary["lower_order"].items())
    print(f"\nICL evaluation of {weights} on {summary['chains']} validation chains, "
          f"{summary['positions']} positions:\n"
          f"  model loss   {summary['loss']:.4f} nats/token\n"
          f"  Bayes-optimal {summary['bayes']:.4f}   gap {summary['gap']:+.4f}\n"
          f"  oracle {summary['oracle']:.4f}   lower-order add-beta: {lower}\n"
          f"  written: {summary['files']['json']}, plot {summary['files']['plot']}")
