"""What an LM command will use, resolved from its flags and the files they name: the data, the
model (read off a checkpoint's keys where one is given), the weights to evaluate, the hardware.
train_lm and eval_lm run on these, and --dry_run prints them; this module stays free of
Lightning so that a dry run starts in a second or two.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..config import ModelConfig, TrainConfig
from ..data.binidx import BinidxReader
from ..data.markov import META_KEYS
from ..data.sampling import magic_prime
from ..io import read_json
from ..model import RWKV
from ..train.batch_size import effective_batch
from ..train.hardware import Hardware
from ..train.step_files import latest_weights

WEIGHTS_NAME = "rwkv"


@dataclass(frozen=True)
class LMData:
    """What --data_file (and --val_file, --data_type) name, resolved once per run."""

    train: Path                    # binidx prefix
    val: Path | None
    kind: str                      # "windows" or "documents"
    markov_folder: Path | None     # a datanew.py folder: the Bayes references live there


def resolve_lm_data(cfg: TrainConfig) -> LMData:
    if not cfg.data_file:
        raise ValueError("--data_file is required: a binidx prefix or a datanew.py folder")
    data = Path(cfg.data_file)
    meta = None
    if data.is_dir():
        if not (data / "meta.json").is_file():
            raise ValueError(f"{data} is a folder without meta.json: pass a binidx prefix "
                             f"(path/name for path/name.bin + .idx) or a datanew.py folder")
        meta = read_json(data / "meta.json", "Markov data meta.json", META_KEYS)
        train, val = data / "train", data / "val"
    else:
        train = Path(str(data).removesuffix(".bin").removesuffix(".idx"))
        val = None
    if cfg.val_file:
        val = Path(str(cfg.val_file).removesuffix(".bin").removesuffix(".idx"))
    kind = cfg.data_type if cfg.data_type != "auto" else ("documents" if meta else "windows")
    if meta and kind == "windows":
        raise ValueError(f"--data_type windows on the datanew.py folder {data}: a window would run "
                         f"across chains with different transition tables, and the Bayes-optimal "
                         f"reference (val/gap, the ICL evaluation) is per chain; use --data_type "
                         f"documents (the default for such a folder)")
    return LMData(train, val, kind, data if meta else None)


def model_config(model_cfg: ModelConfig, model_given: dict, weights: str) -> ModelConfig:
    """The model a run builds: the flags' shape from scratch, or the shape read off the weights
    file with the typed flags checked against it or applied (what --dry_run prints)."""
    if not weights:
        return model_cfg
    return RWKV.config_from_checkpoint(weights, **model_given)


def weights_to_evaluate(train_cfg: TrainConfig) -> Path:
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


def train_samples(data: LMData, ctx_len: int) -> int:
    """Training samples in one epoch: the documents, or the magic prime's number of windows
    (what LMDataModule's data set holds), read off the index without reading the tokens."""
    reader = BinidxReader(data.train)
    return len(reader) if data.kind == "documents" else magic_prime(reader.n_tokens, ctx_len)


def plan_train_lm(model_cfg: ModelConfig, model_given: dict, train_cfg: TrainConfig) -> dict:
    """What train_lm will use, for --dry_run: the model, the data, the hardware and the
    effective batch resolved."""
    model = _model_plan(model_cfg, model_given, train_cfg.load_model)
    hardware = Hardware.of(train_cfg)
    data = _data_plan(train_cfg)
    micro_batches = None
    if "note" not in data:
        samples = train_samples(resolve_lm_data(train_cfg), train_cfg.ctx_len)
        micro_batches = samples // (train_cfg.micro_bsz * hardware.processes)
    return {"model": model, "data": data, "hardware": dataclasses.asdict(hardware),
            "batch": effective_batch(train_cfg, hardware, tokens_per_sample=train_cfg.ctx_len,
                                     micro_batches_per_epoch=micro_batches)}


def plan_eval_lm(model_cfg: ModelConfig, model_given: dict, train_cfg: TrainConfig) -> dict:
    """What eval_lm will use, for --dry_run."""
    try:
        weights = str(weights_to_evaluate(train_cfg))
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
