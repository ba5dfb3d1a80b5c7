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
from ..data.binidx import BinidxReader
from ..io import read_json
from ..model import RWKV
from ..train.batch_size import effective_batch
from ..train.hardware import Hardware
from ..train.step_files import latest_weights
from ..train.trainer import fit, resolve_max_steps
from .data import LMDataModule
from .icl_eval import evaluate_and_plot
from .module import LMModule
from .plan import WEIGHTS_NAME, resolve_lm_data, weights_to_evaluate

log = logging.getLogger(__name__)


def build_model(model_cfg: ModelConfig, model_given: dict, weights: str) -> RWKV:
    """From scratch (official init), or from an official .pth whose shape wins over defaults;
    shape flags that were typed are checked against the file."""
    if not weights:
        return RWKV(model_cfg)
    return RWKV.from_checkpoint(weights, dtype=torch.float32, **model_given)


def restrict_head(model: RWKV, train_prefix: Path, train_cfg: TrainConfig) -> np.ndarray:
    """--head_tokens data: zero the head rows of every token the training data does not hold and
    return the ids of the others, the rows that are trained. On a resume the checkpoint's
    weights replace these (their zero rows have stayed zero: they get no gradient)."""
    if train_cfg.load_model:
        raise ValueError("--head_tokens data trains a model from scratch: the head rows it zeroes "
                         f"would be trained values of --load_model {train_cfg.load_model}; use "
                         "--head_tokens all to fine-tune")
    tokens = BinidxReader(train_prefix).distinct_tokens()
    with torch.no_grad():
        kept = torch.zeros(model.config.vocab_size, dtype=torch.bool)
        kept[torch.from_numpy(tokens)] = True
        model.head.weight[~kept] = 0.0
    log.info("--head_tokens data: %d of the %d head rows are trained (the tokens of %s)",
             len(tokens), model.config.vocab_size, train_prefix)
    return tokens


def trained_token_shift(weights: Path) -> bool:
    """Whether the run that wrote `weights` had the token shift: its training record beside the
    weights says so; an official .pth without one has it."""
    record = Path(weights).with_suffix(".json")
    if not record.is_file():
        return True
    return bool(read_json(record, "training record").get("model", {}).get("token_shift", True))


def train_lm(model_cfg: ModelConfig, model_given: dict, train_cfg: TrainConfig) -> dict:
    hardware = Hardware.of(train_cfg)
    data = resolve_lm_data(train_cfg)
    torch.manual_seed(train_cfg.seed)
    model = build_model(model_cfg, model_given, train_cfg.load_model)
    datamodule = LMDataModule(train_cfg, model.config.vocab_size, data)
    datamodule.setup("fit")              # every data check before training starts
    head_tokens = restrict_head(model, data.train, train_cfg) if train_cfg.head_tokens == "data" else None
    if train_cfg.compile:
        model.compile_model(mode=train_cfg.compile_mode)
    train_cfg = resolve_max_steps(train_cfg, datamodule, hardware)
    markov = data.markov_folder
    bayes = np.load(markov / "val_curves.npz")["bayes_by_sequence"] if markov else None
    module = LMModule(model, train_cfg, bayes, head_tokens)
    batch = effective_batch(train_cfg, hardware, tokens_per_sample=train_cfg.ctx_len,
                            micro_batches_per_epoch=datamodule.batches_per_epoch(hardware.processes))
    run_config = {"task": "lm", "model": dataclasses.asdict(model.config),
                  "train": dataclasses.asdict(train_cfg), "batch": batch}
    trainer = fit(module, datamodule, train_cfg, hardware, WEIGHTS_NAME, run_config)
    result = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if markov and trainer.is_global_zero:
        weights = latest_weights(train_cfg.proj_dir, WEIGHTS_NAME)
        # The file, not the trained module: DeepSpeed leaves that cast to bf16 or sharded.
        trained = build_model(model_cfg, model_given, str(weights))
        result["icl"] = evaluate_and_plot(trained.to(hardware.device), markov, train_cfg.ctx_len,
                                          weights, batch_size=max(train_cfg.micro_bsz, 32),
                                          device=hardware.device)
        _print_icl(result["icl"], weights)
    return result


def eval_lm(model_cfg: ModelConfig, model_given: dict, train_cfg: TrainConfig) -> dict:
    """Evaluate --load_model, or the newest weights in --proj_dir, on the validation data."""
    hardware = Hardware.of(train_cfg)
    weights = weights_to_evaluate(train_cfg)
    markov = resolve_lm_data(train_cfg).markov_folder
    if markov is None:
        raise ValueError("--op eval for --task lm needs a datanew.py folder as --data_file")
    # No key of the .pth says whether the run had a token shift; its training record does.
    model_given = {**model_given, "token_shift": trained_token_shift(weights)}
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
