"""Con-RWKV's one entry point.

    python train.py --task lm  --op train --data_file data/markov-binidx/k1-... --n_layer 2 ...
    python train.py --task lm  --op eval  --data_file ... --proj_dir output/icl
    python train.py --task asr --op train|eval|predict|merge --load_model RWKV.pth --encoder DIR ...

Every flag comes from a configuration dataclass (src/conrwkv/config.py) and has help text:
`python train.py --task lm --help`. `--dry_run` prints the resolved configuration and exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from conrwkv.config import AsrConfig, ModelConfig, TrainConfig
from conrwkv.train.flags import add_dataclass_flags, take

OPS = {"lm": ("train", "eval"), "asr": ("train", "eval", "predict", "merge")}


def build_parser(task: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(OPS), default="lm",
                        help="lm: language-model training (RWKV-ICL); asr: speech recognition by "
                             "state tuning (RWKV-ASR). (default: lm)")
    parser.add_argument("--op", choices=("train", "eval", "predict", "merge"), default="train",
                        help="train; eval (lm: loss against Bayes-optimal; asr: corpus WER); "
                             "predict (asr: transcribe --audio); merge (asr: export the LLM with "
                             "its trained state as one official .pth). (default: train)")
    parser.add_argument("--dry_run", action="store_true",
                        help="Print the resolved configuration as JSON and exit.")
    add_dataclass_flags(parser, ModelConfig, "model")
    add_dataclass_flags(parser, TrainConfig, "training")
    if task == "asr":
        add_dataclass_flags(parser, AsrConfig, "speech recognition")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task", default="lm")
    task = pre.parse_known_args(argv)[0].task
    parser = build_parser(task if task in OPS else "lm")
    args = parser.parse_args(argv)
    if args.op not in OPS[args.task]:
        parser.error(f"--op {args.op} is not available for --task {args.task} "
                     f"(choose from {', '.join(OPS[args.task])})")
    model_cfg, model_given = take(ModelConfig, args)
    train_cfg, _ = take(TrainConfig, args)
    resolved = {"task": args.task, "op": args.op, "model": dataclasses.asdict(model_cfg),
                "train": dataclasses.asdict(train_cfg)}
    if args.task == "asr":
        asr_cfg, _ = take(AsrConfig, args)
        resolved["asr"] = dataclasses.asdict(asr_cfg)
    if train_cfg.load_model:
        resolved["model_from"] = {"checkpoint": train_cfg.load_model, "checked_or_set": model_given}
    if args.dry_run:
        print(json.dumps(resolved, indent=2))
        return 0

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger("conrwkv").handlers[:] = [handler]    # one handler, however often main() runs
    logging.getLogger("conrwkv").setLevel(logging.INFO)
    try:
        if args.task == "lm":
            from conrwkv.lm import run as run_lm

            getattr(run_lm, f"{args.op}_lm")(model_cfg, model_given, train_cfg)
        else:
            from conrwkv.asr import run as run_asr

            getattr(run_asr, f"{args.op}_asr")(model_cfg, model_given, train_cfg, asr_cfg)
    except (ValueError, OSError) as err:
        # Bad input and file problems (a missing, unreadable or existing file) are the user's to
        # fix: a one-line message naming the file or flag, not a traceback.
        print(f"train.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
