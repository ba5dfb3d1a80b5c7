"""One table from several `train.py --task asr` runs: corpus WER per split of each run's latest
trained weights, with the steps, training time and decoding time that produced it.

    python -m conrwkv.asr.ablation --run "projector=output/p" --run "+ state=output/s" \\
        --json output/ablation.json

Each run folder must hold `asr-step<N>.pth` with its `.json` sidecar (written by training) and
an evaluation of the same N, `eval-asr-step<N>-.../summary.json` (written by `--op eval`): a
table row never mixes the WER of one checkpoint with the steps of another. Where N was evaluated
more than once (another beam, a re-run), the newest evaluation is used, and stderr names it and
the others; each row records the folder it read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..io import atomic_json_save, read_json
from ..train.step_files import latest_weights
from .plan import WEIGHTS_NAME


def eval_summary(label: str, weights: Path) -> Path:
    """summary.json of the newest evaluation of `weights` (eval-<stem>-*/, or eval-<stem>/ as
    written before evaluations were named by their settings)."""
    stem = f"eval-{weights.stem}"
    found = sorted((p / "summary.json" for p in weights.parent.glob(f"{stem}*")
                    if (p.name == stem or p.name.startswith(f"{stem}-")) and (p / "summary.json").is_file()),
                   key=lambda path: (path.stat().st_mtime, str(path)))
    if not found:
        raise FileNotFoundError(f"run {label!r}: no {stem}*/summary.json in {weights.parent} "
                                f"(written by train.py --op eval)")
    if len(found) > 1:
        others = ", ".join(p.parent.name for p in found[:-1])
        print(f"ablation: run {label!r}: {len(found)} evaluations of {weights.name}; using the "
              f"newest, {found[-1].parent.name} (others: {others})", file=sys.stderr)
    return found[-1]


def run_row(label: str, folder: str | Path) -> dict:
    """The facts of one run's latest weights; names the missing file when something is absent."""
    weights = latest_weights(folder, WEIGHTS_NAME)
    if weights is None:
        raise FileNotFoundError(f"run {label!r}: no {WEIGHTS_NAME}-step*.pth in {folder}")
    sidecar = weights.with_suffix(".json")
    if not sidecar.is_file():
        raise FileNotFoundError(f"run {label!r}: {sidecar} is missing (written by training)")
    summary = eval_summary(label, weights)
    meta = read_json(sidecar, f"run {label!r} weights sidecar", ("step",))
    evaluated = read_json(summary, f"run {label!r} eval summary", ("beam", "splits"))
    return {"label": label, "folder": str(folder), "weights": str(weights), "step": meta["step"],
            "train_seconds": meta.get("train_seconds"), "beam": evaluated["beam"],
            "eval": str(summary.parent),
            "splits": {name: {"wer": s["wer"], "wer_whisper_normalizer": s.get("whisper", {}).get("wer"),
                              "utterances": s["utterances"], "words": s["reference_words"],
                              "decode_seconds": s.get("decode_s")}
                       for name, s in evaluated["splits"].items()}}


def format_table(rows: list[dict]) -> str:
    splits = list(dict.fromkeys(name for row in rows for name in row["splits"]))
    head = ["configuration", "steps", "train (s)", *[f"WER {s} (%)" for s in splits], "beam"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        seconds = "" if row["train_seconds"] is None else f"{row['train_seconds']:.0f}"
        wers = [f"{100 * row['splits'][s]['wer']:.2f}" if s in row["splits"] else "" for s in splits]
        cells = [row["label"], str(row["step"]), seconds, *wers, str(row["beam"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, metavar="LABEL=FOLDER",
                   help="a run's table label and its --proj_dir (split at the last =); repeat for "
                        "each run, in table order")
    p.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    rows = []
    for spec in args.run:
        label, sep, folder = spec.rpartition("=")
        if not sep or not label or not folder:
            p.error(f"--run {spec!r} is not LABEL=FOLDER")
        rows.append(run_row(label, folder))
    print(format_table(rows))
    if args.json:
        atomic_json_save({"runs": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
