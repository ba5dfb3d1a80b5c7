"""What a speech command will use, resolved from its flags and the files they name: the LLM read
off --load_model's keys with the options applied, the trained weights, and the settings they were
trained with (from the record training writes beside them). train_asr, eval_asr, predict_asr and
merge_asr run on these, and --dry_run prints them; this module stays free of Lightning and of the
speech encoder so that a dry run starts in a second or two.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import AsrConfig, ModelConfig, TrainConfig
from ..io import read_json
from ..model import RWKV
from ..train.batch_size import effective_batch
from ..train.hardware import Hardware
from ..train.step_files import latest_weights
from .oracle import ORACLE_FIELDS

WEIGHTS_NAME = "asr"
# The settings that decide which tensors were trained and what they mean: eval, predict and
# merge take them from the weights' record, never from their own flags.
TRAINED_AS = ("encoder_trainable", "projector", "downsample", "projector_hidden", "train_state",
              "separator", "lowercase", *ORACLE_FIELDS,
              "llm_train", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets")


def llm_config(model_given: dict, train_cfg: TrainConfig) -> ModelConfig:
    """The LLM a speech run builds: read off --load_model, state tuning on, the options applied."""
    if not train_cfg.load_model:
        raise ValueError("--load_model is required: the RWKV World .pth to state-tune")
    return RWKV.config_from_checkpoint(train_cfg.load_model, state_tuning=True, **model_given)


def trained_weights(train_cfg: TrainConfig, asr_cfg: AsrConfig) -> Path:
    """--asr_weights, or the newest asr-step*.pth in proj_dir."""
    weights = asr_cfg.asr_weights or latest_weights(train_cfg.proj_dir, WEIGHTS_NAME)
    if not weights:
        raise ValueError(f"no trained weights: give --asr_weights, or train into --proj_dir "
                         f"{train_cfg.proj_dir} first (no {WEIGHTS_NAME}-step*.pth there)")
    return Path(weights)


def as_trained(weights: Path, model_given: dict, train_cfg: TrainConfig,
               asr_cfg: AsrConfig) -> tuple[dict, TrainConfig, AsrConfig]:
    """The settings that rebuild the model `weights` were trained as: TRAINED_AS, the conv and
    the LLM's shape from the record beside them, the frozen files' paths from it unless given."""
    record_path = weights.with_suffix(".json")
    if not record_path.is_file():
        raise FileNotFoundError(f"{record_path} is missing: training writes it beside {weights.name}, "
                                f"and eval, predict and merge rebuild the model from it")
    record = read_json(record_path, "training record", ("model", "train", "asr"))
    trained_asr, trained_llm = record["asr"], record["model"]
    # A record written before a setting existed was trained without it: the field's default.
    defaults = {f.name: f.default for f in dataclasses.fields(AsrConfig)}
    asr_cfg = dataclasses.replace(asr_cfg, encoder=asr_cfg.encoder or trained_asr["encoder"],
                                  **{name: trained_asr.get(name, defaults[name]) for name in TRAINED_AS})
    train_cfg = dataclasses.replace(train_cfg,
                                    load_model=train_cfg.load_model or record["train"]["load_model"])
    model_given = {**model_given,
                   **{name: trained_llm[name] for name in ("conv_kernel", "n_layer", "n_embd")}}
    return model_given, train_cfg, asr_cfg


def _llm_plan(model_given: dict, train_cfg: TrainConfig) -> dict:
    if train_cfg.load_model and not Path(train_cfg.load_model).is_file():
        return {"from": train_cfg.load_model, "note": "not there yet: read when the run starts"}
    return {"from": train_cfg.load_model, **dataclasses.asdict(llm_config(model_given, train_cfg))}


def plan_train_asr(model_cfg: ModelConfig, model_given: dict, train_cfg: TrainConfig,
                   asr_cfg: AsrConfig) -> dict:
    """What train_asr will use, for --dry_run: the LLM read off --load_model with the options
    applied, and the hardware resolved."""
    hardware = Hardware.of(train_cfg)
    # The corpus is not read here (its headers take minutes for a large one): the mean audio per
    # step and the steps per epoch are stated in run.json and the log when the run reads it.
    batch = {**effective_batch(train_cfg, hardware, micro_batches_per_epoch=None),
             "note": "mean audio seconds per optimizer step and optimizer steps per epoch: in "
                     "run.json and the log's first lines, once the run has read the corpus"}
    return {"llm": _llm_plan(model_given, train_cfg), "hardware": dataclasses.asdict(hardware),
            "batch": batch}


def plan_trained_asr(model_cfg: ModelConfig, model_given: dict, train_cfg: TrainConfig,
                     asr_cfg: AsrConfig) -> dict:
    """What eval, predict and merge will use, for --dry_run: the weights, the settings they were
    trained with (from their record), the LLM, the hardware."""
    try:
        weights = trained_weights(train_cfg, asr_cfg)
    except ValueError as err:
        return {"weights": f"none yet ({err})", "hardware": dataclasses.asdict(Hardware.of(train_cfg))}
    model_given, train_cfg, asr_cfg = as_trained(weights, model_given, train_cfg, asr_cfg)
    return {"weights": str(weights),
            "trained_as": {"encoder": asr_cfg.encoder,
                           **{name: getattr(asr_cfg, name) for name in TRAINED_AS}},
            "llm": _llm_plan(model_given, train_cfg),
            "hardware": dataclasses.asdict(Hardware.of(train_cfg))}
