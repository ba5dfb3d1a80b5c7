"""Con-RWKV's one entry point (`python train.py ...`, the same as `python -m conrwkv ...`).

    python train.py --task lm  --op train --data_file data/markov-binidx/k1-... --n_layer 2 ...
    python train.py --task lm  --op eval  --data_file ... --proj_dir output/icl
    python train.py --task asr --op train --load_model RWKV.pth --encoder DIR --data_file ...
    python train.py --task asr --op eval|predict|merge --proj_dir output/asr ...

Each command (a task and an op) offers exactly the flags it reads, all generated from the
configuration dataclasses (config.py) with their help: `python train.py --task asr --op eval
--help` lists them, and any other flag is an unrecognized argument. eval, predict and merge of
the speech task rebuild the model from the record training wrote beside its weights, so they
take only what decides how to decode and where to run. `--dry_run` prints what the command will
use, read off the files where they exist (the model shape of a checkpoint, the settings a model
was trained with, the hardware), and exits.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from dataclasses import dataclass, fields

from .config import AsrConfig, ModelConfig, TrainConfig

_TRAINING = tuple(f.name for f in fields(TrainConfig))
_ASR_TRAINING = tuple(f.name for f in fields(AsrConfig) if f.name not in (
    "beam", "max_tokens_per_second", "eval_data", "audio", "asr_weights", "merge_out",
    "eval_max_duration"))
_DECODING = ("encoder", "encoder_batching", "beam", "max_tokens_per_second", "asr_weights",
             "skip_bad_audio")


@dataclass(frozen=True)
class Command:
    """What one task and op runs (module:function, called with the configurations), what its
    --dry_run prints, and the fields of each configuration it reads."""

    run: str
    plan: str
    help: str
    model: tuple[str, ...]
    train: tuple[str, ...]
    asr: tuple[str, ...] = ()


COMMANDS = {
    ("lm", "train"): Command(
        "conrwkv.lm.run:train_lm", "conrwkv.lm.plan:plan_train_lm",
        "train a language model from scratch or from --load_model; on a datanew.py folder, end with "
        "the in-context-learning evaluation against the Bayes-optimal estimator",
        model=tuple(f.name for f in fields(ModelConfig)), train=_TRAINING),
    ("lm", "eval"): Command(
        "conrwkv.lm.run:eval_lm", "conrwkv.lm.plan:plan_eval_lm",
        "the in-context-learning evaluation of --load_model or the newest weights in --proj_dir",
        model=("wkv_backend",),
        train=("proj_dir", "data_file", "ctx_len", "micro_bsz", "accelerator", "load_model")),
    ("asr", "train"): Command(
        "conrwkv.asr.run:train_asr", "conrwkv.asr.plan:plan_train_asr",
        "state-tune a frozen RWKV World model (--load_model) behind a frozen speech encoder "
        "(--llm_train lora / full: train its LoRA adapters or its weights too)",
        model=("n_layer", "n_embd", "conv_kernel", "wkv_backend", "grad_cp"),
        train=tuple(n for n in _TRAINING if n not in ("data_type", "ctx_len", "head_tokens")),
        asr=_ASR_TRAINING),
    ("asr", "eval"): Command(
        "conrwkv.asr.run:eval_asr", "conrwkv.asr.plan:plan_trained_asr",
        "corpus WER of the trained weights on --eval_data (default --val_file), under the "
        "project's and Whisper's normalisers, into a new eval-* folder",
        model=("wkv_backend",),
        train=("proj_dir", "val_file", "micro_bsz", "accelerator", "precision", "load_model", "compile"),
        asr=(*_DECODING, "eval_data", "eval_max_duration")),
    ("asr", "predict"): Command(
        "conrwkv.asr.run:predict_asr", "conrwkv.asr.plan:plan_trained_asr",
        "transcribe the --audio files and folders with the trained weights",
        model=("wkv_backend",), train=("proj_dir", "micro_bsz", "accelerator", "precision", "load_model",
                                       "compile"),
        asr=(*_DECODING, "audio")),
    ("asr", "merge"): Command(
        "conrwkv.asr.run:merge_asr", "conrwkv.asr.plan:plan_trained_asr",
        "write the LLM with its trained initial states (and conv; LoRA folded into its weights, "
        "or its fine-tuned weights) as one official .pth",
        model=(), train=("proj_dir", "accelerator", "precision", "load_model"),
        asr=("encoder", "asr_weights", "merge_out")),
}
TASKS = {"lm": "language-model training (RWKV-ICL)", "asr": "speech recognition by state tuning (RWKV-ASR)"}


def _function(target: str):
    """The function `module:name` (imported on use: --help stays fast)."""
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def build_parser(task: str, op: str) -> argparse.ArgumentParser:
    from .train.flags import add_dataclass_flags

    command = COMMANDS[task, op]
    # No abbreviations: `--dry` must not pass for --dry_run where the demos look for the full name.
    parser = argparse.ArgumentParser(
        prog="train.py", allow_abbrev=False, description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"--task {task} --op {op}: {command.help}.")
    parser.add_argument("--task", choices=list(TASKS), default="lm", help="; ".join(
        f"{name}: {what}" for name, what in TASKS.items()) + " (default: lm)")
    ops = [o for t, o in COMMANDS if t == task]
    parser.add_argument("--op", choices=ops, default="train",
                        help=f"for --task {task}: {', '.join(ops)} (default: train); each op offers "
                             f"its own flags: --op OP --help")
    parser.add_argument("--dry_run", action="store_true",
                        help="Print what the command will use, as JSON, and exit.")
    add_dataclass_flags(parser, ModelConfig, "model", only=command.model)
    add_dataclass_flags(parser, TrainConfig, "training and hardware", only=command.train)
    add_dataclass_flags(parser, AsrConfig, "speech recognition", only=command.asr)
    return parser


def _command_of(argv: list[str]) -> tuple[str, str]:
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--task", default="lm")
    pre.add_argument("--op", default="train")
    known = pre.parse_known_args(argv)[0]
    task = known.task if known.task in TASKS else "lm"   # the full parser reports a bad --task
    ops = [o for t, o in COMMANDS if t == task]
    return task, known.op if known.op in ops else "train"


def main(argv: list[str] | None = None) -> int:
    from .train.flags import take

    argv = sys.argv[1:] if argv is None else argv
    task, op = _command_of(argv)
    parser = build_parser(task, op)
    args = parser.parse_args(argv)
    command = COMMANDS[args.task, args.op]
    try:
        # The configurations check their values (a ValueError names the flag).
        model_cfg, model_given = take(ModelConfig, args)
        train_cfg, _ = take(TrainConfig, args)
        configs = [model_cfg, model_given, train_cfg]
        if args.task == "asr":
            configs.append(take(AsrConfig, args)[0])
        if args.dry_run:
            # The model flags as typed: the shape may come from a checkpoint (see "model"/"llm").
            flags = {"model": model_given, "train": {n: getattr(train_cfg, n) for n in command.train}}
            if command.asr:
                flags["asr"] = {n: getattr(configs[3], n) for n in command.asr}
            plan = {"task": args.task, "op": args.op, "flags": flags, **_function(command.plan)(*configs)}
            print(json.dumps(plan, indent=2, default=str))
            return 0
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logging.getLogger("conrwkv").handlers[:] = [handler]   # one handler, however often main() runs
        logging.getLogger("conrwkv").setLevel(logging.INFO)
        _function(command.run)(*configs)
    except (ValueError, OSError) as err:
        # Bad input and file problems (a missing, unreadable or existing file) are the user's to
        # fix: a one-line message naming the file or flag, not a traceback.
        print(f"train.py: error: {err}", file=sys.stderr)
        return 2
    return 0

