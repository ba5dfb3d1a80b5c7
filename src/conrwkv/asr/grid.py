"""The ASR grid: LM size x arm x seed, each cell a `--task asr` training and its corpus WER,
resumable across calls of limited length, ending in one table and one figure.

    python -m conrwkv.asr.grid --lm 6x384=output/lm-6x384 --lm 12x768=output/lm-12x768 \\
        --encoder output/encoder --corpus data/asr-offline/corpus --arms projector,state,oracle \\
        --seeds 0,1 --out output/asr-grid --budget_s 540 --train_args "--epochs 6 --micro_bsz 16"

A cell is `<out>/<lm label>/<arm>/seed<S>`, one ordinary run folder: training writes it and
resumes it (train/resume.py), `--op eval` writes its eval-* folder. What is done is read from
the folders, never from a state file: a cell is trained when its newest weights reached the
run's planned last step, and evaluated when those weights have an eval summary. A call trains
and evaluates the cells in order, seed by seed (every cell of the first seed before any of the
second, so that a grid cut short is whole for the seeds it reached), --parallel of them at a
time, until --budget_s runs out; a run still going then is killed (a kill is safe: the next
call resumes it from its last checkpoint, `--save_every` in train_args sets how much is
redone), and the call says how many cells remain. A cell that fails is reported and the others
go on; the call then exits 1. No cell starts while the disk has less than --min_free_gib free:
runs keep every checkpoint, and a full disk would fail every running cell at once. Every call that
finds evaluated cells writes a new summary folder (`summary`, `summary-2`, ...: results are
never replaced) with the table (grid.md), the rows (grid.json) and the figure (grid.png: WER
against LM size, one line per arm, the mean over seeds with their range, a panel per split).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..eval.fresh_names import new_folder
from ..io import atomic_json_save, read_json
from ..train.step_files import latest_weights
from .ablation import eval_summary, run_row
from .plan import WEIGHTS_NAME

# arm -> (its label in the table and figure, the training flags that make it)
ARMS = {
    "projector": ("projector only", ["--no-train_state"]),
    "state": ("projector + state", []),
    "state-conv": ("projector + state + conv", []),   # one cell per --conv_kernels entry
    "lora": ("projector + state + LoRA", ["--llm_train", "lora"]),
    "full": ("projector + state + full LLM", ["--llm_train", "full"]),
    "oracle": ("oracle prefix + state (no speech)", ["--oracle_prefix"]),
}
EVAL_SPLITS = ("test-clean", "test-other")


CONV_ARM = "state-conv"


@dataclass(frozen=True)
class Cell:
    lm_label: str
    lm_path: Path
    arm: str
    seed: int
    conv_kernel: int = 0     # the state-conv arm's kernel (0 for the other arms)

    @property
    def variant(self) -> str:
        """The arm as a folder and row name: state-conv-k5 for the conv arm of kernel 5."""
        return f"{self.arm}-k{self.conv_kernel}" if self.conv_kernel else self.arm

    def folder(self, out: Path) -> Path:
        return out / self.lm_label / self.variant / f"seed{self.seed}"

    def flags(self) -> list[str]:
        conv = ["--conv_kernel", str(self.conv_kernel)] if self.conv_kernel else []
        return [*ARMS[self.arm][1], *conv]


def arm_label(arm: str, conv_kernel: int) -> str:
    label = ARMS[arm][0]
    return f"{label} (k={conv_kernel})" if conv_kernel else label


def grid_cells(lms: list[tuple[str, Path]], arms: list[str], seeds: list[int],
               conv_kernels: list[int]) -> list[Cell]:
    """Every cell, seed by seed: each seed's cells (LM by LM, arm by arm) before the next seed's."""
    return [Cell(label, path, arm, seed, kernel) for seed in seeds for label, path in lms
            for arm in arms for kernel in (conv_kernels if arm == CONV_ARM else [0])]


def resolve_lm(spec: str) -> tuple[str, Path]:
    """LABEL=PATH: PATH an official .pth, or a run folder (its newest rwkv-step*.pth)."""
    label, sep, path = spec.partition("=")
    if not sep or not label or not path:
        raise ValueError(f"--lm {spec!r} is not LABEL=PATH")
    if "/" in label or label.startswith("."):
        raise ValueError(f"--lm {spec!r}: the label names a folder; use letters, digits, 'x', '-'")
    path = Path(path)
    if path.is_dir():
        newest = latest_weights(path, "rwkv")
        if newest is None:
            raise FileNotFoundError(f"--lm {spec!r}: no rwkv-step*.pth in {path}")
        path = newest
    elif not path.is_file():
        raise FileNotFoundError(f"--lm {spec!r}: {path} does not exist")
    return label, path


def parameter_count(path: Path) -> int:
    """Every tensor of the official .pth, embedding and head included."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:    # torch raises many kinds on a damaged file; all mean "unreadable"
        raise ValueError(f"{path} is not a readable .pth ({type(err).__name__})") from err
    return sum(t.numel() for t in state.values())


def cell_status(folder: Path) -> str:
    """"new", "training" (weights exist but not of the planned last step), "trained" or "done"."""
    weights = latest_weights(folder, WEIGHTS_NAME)
    if weights is None:
        return "new"
    record = read_json(weights.with_suffix(".json"), "training record", ("step", "train"))
    if record["step"] < record["train"]["max_steps"]:
        return "training"
    try:
        eval_summary(str(folder), weights)
    except FileNotFoundError:
        return "trained"
    return "done"


def commands(cell: Cell, args) -> tuple[list[str], list[str]]:
    corpus = Path(args.corpus)
    folder = cell.folder(Path(args.out))
    train = [sys.executable, "-m", "conrwkv", "--task", "asr", "--op", "train",
             "--load_model", str(cell.lm_path), "--encoder", args.encoder,
             "--data_file", str(corpus / "train"), "--val_file", str(corpus / "dev"),
             "--seed", str(cell.seed), "--proj_dir", str(folder), *cell.flags(),
             *shlex.split(args.train_args)]
    evaluate = [sys.executable, "-m", "conrwkv", "--task", "asr", "--op", "eval",
                "--eval_data", ",".join(str(corpus / s) for s in EVAL_SPLITS),
                "--proj_dir", str(folder), *shlex.split(args.eval_args)]
    return train, evaluate


def run_until(command: list[str], log_path: Path, deadline: float | None) -> int | None:
    """Run `command` with its output appended to log_path; None when the deadline killed it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n$ {shlex.join(command)}\n".encode())
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=None if deadline is None else max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)     # safe: the next call resumes the run
            proc.wait()
            return None


def summarise(cells: list[Cell], out: Path, sizes: dict[str, int]) -> Path | None:
    """A new summary folder with the rows of every evaluated cell, the table and the figure."""
    rows = []
    for cell in cells:
        folder = cell.folder(out)
        if cell_status(folder) == "done":
            row = run_row(f"{cell.lm_label} {cell.variant} seed{cell.seed}", folder)
            rows.append({**row, "lm": cell.lm_label, "lm_parameters": sizes[cell.lm_label],
                         "arm": cell.arm, "conv_kernel": cell.conv_kernel, "seed": cell.seed})
    if not rows:
        return None
    summary = new_folder(out, "summary")
    atomic_json_save({"cells": len(cells), "rows": rows}, summary / "grid.json")
    (summary / "grid.md").write_text(format_table(rows, len(cells)) + "\n")
    plot(rows, summary / "grid.png")
    return summary


def format_table(rows: list[dict], cells: int) -> str:
    head = ["LM", "parameters (M)", "arm", "seed", "steps",
            *[f"WER {s} (%)" for s in EVAL_SPLITS]]
    lines = [f"{len(rows)} of {cells} cells evaluated.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        wers = [f"{100 * r['splits'][s]['wer']:.2f}" if s in r["splits"] else "" for s in EVAL_SPLITS]
        lines.append("| " + " | ".join([r["lm"], f"{r['lm_parameters'] / 1e6:.1f}",
                                         arm_label(r["arm"], r.get("conv_kernel", 0)),
                                         str(r["seed"]), str(r["step"]), *wers]) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(EVAL_SPLITS), figsize=(5 * len(EVAL_SPLITS), 4), sharey=True)
    for ax, split in zip(axes, EVAL_SPLITS):
        for arm, kernel in dict.fromkeys((r["arm"], r.get("conv_kernel", 0)) for r in rows):
            by_size: dict[int, list[float]] = {}
            for r in rows:
                if (r["arm"], r.get("conv_kernel", 0)) == (arm, kernel) and split in r["splits"]:
                    by_size.setdefault(r["lm_parameters"], []).append(100 * r["splits"][split]["wer"])
            if not by_size:
                continue
            sizes = sorted(by_size)
            means = [statistics.mean(by_size[s]) for s in sizes]
            low = [m - min(by_size[s]) for m, s in zip(means, sizes)]
            high = [max(by_size[s]) - m for m, s in zip(means, sizes)]
            ax.errorbar([s / 1e6 for s in sizes], means, yerr=[low, high], marker="o", capsize=3,
                        label=arm_label(arm, kernel))
        ax.set_xscale("log")
        ax.set_xlabel("LM parameters (M)")
        ax.set_title(split)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("corpus WER (%)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lm", action="append", required=True, metavar="LABEL=PATH",
                   help="an LM of the ladder: its label and its official .pth or run folder (the "
                        "newest rwkv-step*.pth); repeat for each size")
    p.add_argument("--encoder", required=True, help="the speech encoder folder (HuggingFace) of every cell")
    p.add_argument("--corpus", required=True,
                   help="LibriSpeech-layout corpus: train and dev to train on, test-clean and "
                        "test-other to score")
    p.add_argument("--arms", default="projector,state,state-conv",
                   help=f"comma-separated arms, of: {', '.join(ARMS)}")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds")
    p.add_argument("--conv_kernels", default="3",
                   help="comma-separated conv kernels of the state-conv arm: one cell per kernel")
    p.add_argument("--parallel", type=int, default=1,
                   help="cells trained at the same time (one process each; they share the GPU)")
    p.add_argument("--out", required=True, help="the grid's folder (one run folder per cell)")
    p.add_argument("--train_args", default="", help="more flags for every training, one string")
    p.add_argument("--eval_args", default="", help="more flags for every evaluation, one string")
    p.add_argument("--budget_s", type=float, default=0,
                   help="stop this call after this many seconds, killing a run in progress (the "
                        "next call resumes it); 0: no limit")
    p.add_argument("--min_free_gib", type=float, default=10.0,
                   help="start no cell while the disk of --out has less free space than this (runs "
                        "never delete their checkpoints; a full disk would fail every cell at once)")
    p.add_argument("--dry_run", action="store_true", help="print each cell's state and commands; run nothing")
    args = p.parse_args(argv)
    unknown = [a for a in args.arms.split(",") if a not in ARMS]
    if unknown or not args.arms:
        p.error(f"--arms: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(ARMS)}")
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds {args.seeds!r} is not a comma-separated list of integers")
    try:
        args.kernel_list = [int(k) for k in args.conv_kernels.split(",")]
    except ValueError:
        p.error(f"--conv_kernels {args.conv_kernels!r} is not a comma-separated list of integers")
    if any(k < 1 for k in args.kernel_list):
        p.error(f"--conv_kernels {args.conv_kernels!r}: every kernel must be at least 1")
    if args.parallel < 1:
        p.error(f"--parallel {args.parallel}: at least 1")
    return args


def free_disk_gib(folder: Path) -> float:
    """Free space of the disk that holds `folder` (or the nearest folder above it that exists)."""
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free / 2**30


def run_cell(cell: Cell, name: str, status: str, args, deadline: float | None, start: float,
             say) -> str:
    """Train (unless trained) and evaluate one cell: "done", "stopped" (the budget ran out) or
    "failed"."""
    folder = cell.folder(Path(args.out))
    log_path = folder.parent / f"seed{cell.seed}.log"
    train, evaluate = commands(cell, args)
    for step, command in (("train", train), ("eval", evaluate)):
        if step == "train" and status == "trained":
            continue
        say(f"{name}: {step} ... (log: {log_path})")
        rc = run_until(command, log_path, deadline)
        if rc is None:
            say(f"{name}: stopped by --budget_s during {step}; the next call resumes it")
            return "stopped"
        if rc != 0:
            say(f"grid: error: {name}: {step} exited {rc}; see {log_path}", error=True)
            return "failed"
    say(f"{name}: done ({time.time() - start:.0f} s into this call)")
    return "done"


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.time()
    deadline = start + args.budget_s if args.budget_s > 0 else None
    out = Path(args.out)
    try:
        lms = [resolve_lm(spec) for spec in args.lm]
        sizes = {label: parameter_count(path) for label, path in lms}
    except (OSError, ValueError) as err:
        print(f"grid: error: {err}", file=sys.stderr)
        return 2
    cells = grid_cells(lms, args.arms.split(","), args.seed_list, args.kernel_list)
    lock = threading.Lock()

    def say(message: str, error: bool = False) -> None:
        with lock:
            print(message, file=sys.stderr if error else sys.stdout, flush=True)

    def work(i: int, cell: Cell) -> str:
        name = f"[{i}/{len(cells)}] {cell.lm_label} {cell.variant} seed{cell.seed}"
        status = cell_status(cell.folder(out))
        if status == "done":
            say(f"{name}: done, kept")
            return "done"
        if deadline is not None and time.time() >= deadline:
            say(f"{name}: not started, --budget_s is used up")
            return "stopped"
        free_gib = free_disk_gib(out)
        if free_gib < args.min_free_gib:
            say(f"{name}: not started, {free_gib:.1f} GiB free on the disk of {out}, below "
                f"--min_free_gib {args.min_free_gib:g} (every cell keeps all its checkpoints)")
            return "stopped"
        return run_cell(cell, name, status, args, deadline, start, say)

    if args.dry_run:
        for i, cell in enumerate(cells, 1):
            status = cell_status(cell.folder(out))
            train, evaluate = commands(cell, args)
            print(f"[{i}/{len(cells)}] {cell.lm_label} {cell.variant} seed{cell.seed}: {status}")
            if status in ("new", "training"):
                print(f"  {shlex.join(train)}")
            if status != "done":
                print(f"  {shlex.join(evaluate)}")
        return 0
    # Cells start in order as workers free up; each worker runs its cell's processes in turn.
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        outcomes = list(pool.map(work, range(1, len(cells) + 1), cells))
    remaining = sum(cell_status(c.folder(out)) != "done" for c in cells)
    summary = summarise(cells, out, sizes)
    if summary is not None:
        print((summary / "grid.md").read_text())
        print(f"grid: table, rows and figure in {summary}")
    if remaining:
        print(f"grid: {remaining} of {len(cells)} cells not done; run the same command again to go on")
    failed = outcomes.count("failed")
    if failed:
        print(f"grid: error: {failed} cell(s) failed (above); the others were run", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
