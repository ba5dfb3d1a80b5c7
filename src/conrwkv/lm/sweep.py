"""The RWKV-ICL sweep: Markov order k x conv kernel x depth, each trained from scratch, and the
final gap to the Bayes-optimal in-context estimator as a table and a heatmap.

The claim under test (docs/reference.md, "The claim under test"): a causal convolution of kernel
>= k + 1 lets the loss reach the Bayes-optimal level; smaller kernels plateau near a lower-order
estimator. Token shift is already a width-2 convolution and depth widens the view, so depth is part
of the grid.

    python -m conrwkv.lm.sweep --orders 1 2 3 4 --kernels 0 2 3 4 5 6 --depths 1 2 \\
        --steps 2000 --parallel 8 --out output/icl-sweep

Runs go to <out>/runs/k<k>-conv<K>-L<d>-s<seed>. Two engines train them, to the same weights:
- ensemble (default): the runs that share a shape (conv kernel, depth) are one group, trained in
  one process as one batched computation (lm/ensemble.py; its state in <out>/groups/<group>),
  several groups at once: small models leave a GPU idle, and a group pays the host's cost of a
  step once for all its members;
- process: each run is its own `python -m conrwkv` (train.py) process, several at once.
A run whose result exists is not repeated, so an interrupted sweep continues where it stopped
(an interrupted group resumes from its last checkpoint). Results: <out>/sweep.json, sweep.md
(mean and spread over the seeds), sweep.png (heatmap of the means), curves.png (the validation
gap against steps, ensemble engine).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from ..config import ARCHITECTURE_NAMES, ARCHITECTURES, WKV_BACKENDS
from ..data.markov import MarkovDataParams, write_markov_dataset
from ..io import atomic_json_save, atomic_write_bytes, read_json
from .plan import WEIGHTS_NAME

ENGINES = ("ensemble", "process")


def run_name(order: int, kernel: int, depth: int, seed: int) -> str:
    return f"k{order}-conv{kernel}-L{depth}-s{seed}"


def find_result(run_dir: Path) -> dict | None:
    """The run's final ICL evaluation with the validation gap against steps that its training
    record holds (ensemble engine; empty for a run trained by train.py), or None when the run
    has not finished."""
    found = sorted(run_dir.glob(f"{WEIGHTS_NAME}-step*-icl.json"))
    if not found:
        return None
    result = read_json(found[-1], "ICL evaluation")
    record = found[-1].with_name(found[-1].name.removesuffix("-icl.json") + ".json")
    curve = read_json(record, "training record").get("curve", []) if record.is_file() else []
    return {**result, "curve": curve}


def train_command(args, data: Path, run_dir: Path, kernel: int, depth: int, seed: int) -> list[str]:
    # `python -m conrwkv` is train.py; run in this process's folder, where the paths point.
    return [sys.executable, "-m", "conrwkv", "--task", "lm", "--op", "train",
            "--data_file", str(data), "--vocab_size", "2", "--arch", args.arch, "--n_layer", str(depth),
            "--n_embd", str(args.n_embd), "--head_size", str(args.head_size),
            "--conv_kernel", str(kernel), "--ctx_len", str(args.seq_len - 1),
            "--micro_bsz", str(args.micro_bsz), "--max_steps", str(args.steps),
            "--lr_init", str(args.lr_init), "--lr_final", str(args.lr_final),
            "--warmup_steps", "50", "--wkv_backend", args.wkv_backend,
            "--accelerator", args.accelerator, "--devices", "1", "--seed", str(seed),
            "--val_batches", "4", "--save_every", str(args.save_every), "--proj_dir", str(run_dir),
            *(["--no-token_shift"] if args.no_token_shift else [])]


def run_one(args, data: Path, order: int, kernel: int, depth: int, seed: int) -> dict:
    """The process engine: one train.py process for one run."""
    run_dir = Path(args.out) / "runs" / run_name(order, kernel, depth, seed)
    result = find_result(run_dir)
    if result is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        start = time.time()
        with open(run_dir / "train.log", "w") as log:
            proc = _run_child(train_command(args, data, run_dir, kernel, depth, seed), log, args)
        if proc.returncode:
            raise RuntimeError(f"run {run_dir} failed (exit {proc.returncode}); see {run_dir}/train.log")
        result = find_result(run_dir)
        result["wall_s"] = time.time() - start
    return [_row(order, kernel, depth, seed, result)]


_CHILDREN: set[subprocess.Popen] = set()
_CHILDREN_LOCK = threading.Lock()


def _run_child(command: list[str], log, args) -> subprocess.Popen:
    """Run a training process to its end; it is stopped with the sweep (stop_children)."""
    with _CHILDREN_LOCK:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_thread_env(args))
        _CHILDREN.add(proc)
    try:
        proc.wait()
    finally:
        with _CHILDREN_LOCK:
            _CHILDREN.discard(proc)
    return proc


def stop_children(signum=None, frame=None) -> None:
    """On SIGTERM (a deadline, a scheduler's stop) the training processes stop too: each resumes
    from its last checkpoint in the next sweep. Left running, they would hold their folders'
    locks and make that sweep's launches fail."""
    with _CHILDREN_LOCK:
        for proc in _CHILDREN:
            proc.terminate()
        for proc in _CHILDREN:
            proc.wait()
    if signum is not None:
        os._exit(128 + signum)


def _thread_env(args) -> dict:
    # Each process gets its share of the CPU: many with a full thread pool each would
    # oversubscribe the cores, and these small models are bound by host-side work.
    return {**os.environ, "OMP_NUM_THREADS": str(args.threads_per_run)}


def _row(order: int, kernel: int, depth: int, seed: int, result: dict) -> dict:
    return {"order": order, "kernel": kernel, "depth": depth, "seed": seed, **result}


def group_spec(args, data: dict, kernel: int, depth: int, runs: list[tuple[int, int]]):
    """The ensemble group of the runs (order, seed) of one shape. Its model and training
    settings are those train.py reads from the runs' own commands, so a member trains as the
    process engine would train it."""
    from ..config import ModelConfig, TrainConfig
    from ..train.flags import parse_configs
    from .ensemble import GroupSpec, Member

    members, configs = [], []
    for order, seed in runs:
        run_dir = Path(args.out) / "runs" / run_name(order, kernel, depth, seed)
        command = train_command(args, data[order], run_dir, kernel, depth, seed)
        configs.append(parse_configs(command[3:], ModelConfig, TrainConfig))   # after python -m conrwkv
        members.append(Member(data=str(data[order]), seed=seed, proj_dir=str(run_dir)))
    model_cfg, train_cfg = configs[0]
    gpu = args.accelerator == "gpu" or (args.accelerator == "auto" and _has_cuda())
    name = (f"conv{kernel}-L{depth}-k{''.join(str(o) for o in sorted({o for o, _ in runs}))}"
            f"-s{'-'.join(str(s) for s in sorted({s for _, s in runs}))}")
    return GroupSpec(model=model_cfg, train=dataclasses.replace(train_cfg, data_file="", proj_dir=""),
                     members=tuple(members), folder=str(Path(args.out) / "groups" / name),
                     device="cuda" if gpu else "cpu", precision="bf16-mixed" if gpu else "32-true",
                     eval_every=args.eval_every, eval_chains=args.eval_chains,
                     cuda_graphs=args.cuda_graphs)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_group(args, data: dict, kernel: int, depth: int, runs: list[tuple[int, int]]) -> list[dict]:
    """The ensemble engine: one process trains the group; its members' results are read back."""
    spec = group_spec(args, data, kernel, depth, runs)
    folder = Path(spec.folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_json_save(spec.to_json(), folder / "spec.json")
    start = time.time()
    with open(folder / f"train-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log", "w") as log:
        proc = _run_child([sys.executable, "-m", "conrwkv.lm.ensemble", "--spec",
                           str(folder / "spec.json"), "--no-progress"], log, args)
    if proc.returncode:
        raise RuntimeError(f"group {folder} failed (exit {proc.returncode}); see its train-*.log")
    return [_row(order, kernel, depth, seed, {**find_result(Path(member.proj_dir)),
                                              "wall_s": time.time() - start, "group": str(folder)})
            for (order, seed), member in zip(runs, spec.members)]


def dry_run(args, data: dict, grid: list) -> dict:
    """What the sweep would do, for --dry_run: the data folders and each run's train.py command
    (what the process engine runs; the ensemble engine trains the same settings) with whether
    its result exists (then it is kept)."""
    runs = []
    for order, kernel, depth, seed in grid:
        run_dir = Path(args.out) / "runs" / run_name(order, kernel, depth, seed)
        command = train_command(args, data[order], run_dir, kernel, depth, seed)
        runs.append({"name": run_name(order, kernel, depth, seed),
                     "done": find_result(run_dir) is not None, "command": command})
    return {"sweep": vars(args), "data": {order: str(folder) for order, folder in data.items()},
            "runs": runs}


def cell_statistics(rows: list[dict]) -> dict[tuple[int, int, int], dict]:
    """(depth, order, kernel) -> the gap's mean, spread (sample standard deviation; 0 for one
    seed), the seeds, and one row's references (Bayes, lower-order estimators)."""
    cells: dict[tuple[int, int, int], list[dict]] = {}
    for r in rows:
        cells.setdefault((r["depth"], r["order"], r["kernel"]), []).append(r)
    stats = {}
    for key, found in cells.items():
        gaps = np.array([r["gap"] for r in found])
        stats[key] = {"mean": float(gaps.mean()), "std": float(gaps.std(ddof=1)) if len(gaps) > 1 else 0.0,
                      "seeds": sorted(r["seed"] for r in found), "reference": found[0]}
    return stats


def make_table(rows: list[dict], kernels: list[int]) -> str:
    """Markdown: one line per (depth, order), one column per kernel; a cell is the final gap in
    nats, the mean over the seeds ± their standard deviation when there are several."""
    stats = cell_statistics(rows)
    lines = ["| depth | order k | " + " | ".join(f"conv {K}" for K in kernels)
             + " | seeds | Bayes | order k-1 estimator |",
             "|---|---|" + "---|" * len(kernels) + "---|---|---|"]
    for depth in sorted({r["depth"] for r in rows}):
        for order in sorted({r["order"] for r in rows}):
            cells = {K: stats[depth, order, K] for K in kernels if (depth, order, K) in stats}
            if not cells:
                continue
            reference = next(iter(cells.values()))["reference"]
            lower = reference["lower_order"][f"order_{order - 1}"] - reference["bayes"]
            gaps = [(f"{c['mean']:+.4f}" + (f" ± {c['std']:.4f}" if len(c["seeds"]) > 1 else ""))
                    if (c := cells.get(K)) else "" for K in kernels]
            seeds = sorted({len(c["seeds"]) for c in cells.values()})
            lines.append(f"| {depth} | {order} | " + " | ".join(gaps)
                         + f" | {'-'.join(map(str, seeds))} | {reference['bayes']:.4f} | {lower:+.4f} |")
    return "\n".join(lines)


def sweep_label(args) -> str:
    """What the figures' titles say the grid trained: the architecture and the ablation."""
    return ARCHITECTURE_NAMES[args.arch] + (", no token shift" if args.no_token_shift else "")


def plot_heatmap(rows: list[dict], kernels: list[int], path: Path, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = sorted({r["depth"] for r in rows})
    orders = sorted({r["order"] for r in rows})
    fig, axes = plt.subplots(1, len(depths), figsize=(4.4 * len(depths), 3.8), squeeze=False,
                             layout="constrained")
    for ax, depth in zip(axes[0], depths):
        grid = np.full((len(orders), len(kernels)), np.nan)
        for (d, order, kernel), cell in cell_statistics(rows).items():
            if d == depth and kernel in kernels:
                grid[orders.index(order), kernels.index(kernel)] = cell["mean"]
        image = ax.imshow(np.clip(grid, 1e-4, None), cmap="viridis_r", aspect="auto",
                          norm=matplotlib.colors.LogNorm(vmin=1e-3, vmax=0.2))
        for i, j in np.ndindex(grid.shape):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=7,
                        color="w" if grid[i, j] > 0.02 else "k")
        for i, order in enumerate(orders):                 # the claim: kernel >= k + 1 suffices
            if order + 1 in kernels:
                ax.add_patch(plt.Rectangle((kernels.index(order + 1) - 0.5, i - 0.5), 1, 1,
                                           fill=False, ec="r", lw=1.2))
        ax.set_xticks(range(len(kernels)), [str(k) for k in kernels])
        ax.set_yticks(range(len(orders)), [str(o) for o in orders])
        ax.set_xlabel("conv kernel (0 = off)")
        ax.set_ylabel("Markov order k")
        ax.set_title(f"{label}, depth {depth}:\ngap to Bayes (nats, mean of seeds)", fontsize=10)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.85)
    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def plot_curves(rows: list[dict], kernels: list[int], path: Path, label: str) -> bool:
    """The validation gap against steps, one panel per (depth, order), one line per kernel (the
    mean over seeds; the band spans the seeds). Written when some run has a curve (ensemble
    engine); returns whether it was."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("curve")]
    if not rows:
        return False
    panels = sorted({(r["depth"], r["order"]) for r in rows})
    columns = min(4, len(panels))
    lines = -(-len(panels) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(3.6 * columns, 2.9 * lines), squeeze=False,
                             layout="constrained", sharey=True)
    for ax, (depth, order) in zip(axes.flat, panels):
        for K in kernels:
            found = [r["curve"] for r in rows if (r["depth"], r["order"], r["kernel"]) == (depth, order, K)]
            if not found:
                continue
            length = min(len(c) for c in found)
            steps = [point["step"] for point in found[0][:length]]
            gaps = np.clip(np.array([[point["gap"] for point in c[:length]] for c in found]), 1e-4, None)
            line, = ax.plot(steps, gaps.mean(0), lw=1.2, label=f"conv {K}")
            if len(found) > 1:
                ax.fill_between(steps, gaps.min(0), gaps.max(0), color=line.get_color(), alpha=0.2, lw=0)
        ax.axhline(0.01, color="0.6", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_title(f"{label}, depth {depth}, order {order}", fontsize=9)
        ax.set_xlabel("step")
    for ax in axes[:, 0]:
        ax.set_ylabel("validation gap to Bayes (nats)")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return True


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orders", type=int, nargs="+", default=[1, 2, 3, 4], help="Markov orders k.")
    p.add_argument("--kernels", type=int, nargs="+", default=[0, 2, 3, 4, 5, 6],
                   help="Conv kernels (0 = no conv).")
    p.add_argument("--depths", type=int, nargs="+", default=[1, 2], help="Numbers of layers.")
    p.add_argument("--beta", type=float, default=1.0, help="Dirichlet prior of the tables.")
    p.add_argument("--seq-len", type=int, default=513, help="Symbols per chain.")
    p.add_argument("--n-train", type=int, default=50000, help="Training chains per order.")
    p.add_argument("--n-val", type=int, default=500, help="Validation chains per order.")
    p.add_argument("--arch", default="x060", choices=ARCHITECTURES,
                   help="Block architecture of every run: x060 (RWKV-6), x070 (RWKV-7) or x052. "
                        "Each architecture needs its own --out: a run whose result is there is kept, "
                        "whatever it was trained as.")
    p.add_argument("--n-embd", type=int, default=64, help="Model width.")
    p.add_argument("--head-size", type=int, default=16, help="WKV head size.")
    p.add_argument("--micro-bsz", type=int, default=32, help="Chains per step.")
    p.add_argument("--steps", type=int, default=2000, help="Training steps per run.")
    p.add_argument("--lr-init", type=float, default=3e-3, help="Learning rate after warmup.")
    p.add_argument("--lr-final", type=float, default=3e-4, help="Learning rate at the end.")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="Training seeds (model initialisation, batch order): each cell is trained "
                        "once per seed, and the table gives the mean and spread.")
    p.add_argument("--data-seed", type=int, default=0,
                   help="Seed of the Markov chains (the same data for every training seed).")
    p.add_argument("--engine", default="ensemble", choices=ENGINES,
                   help="ensemble: the runs of one shape trained in one process as one batched "
                        "computation (the fast way for these small models); process: one train.py "
                        "process per run. Both train a run to the same weights.")
    p.add_argument("--save-every", type=int, default=500,
                   help="Steps between resumable checkpoints of every run (or group): an interrupted "
                        "sweep resumes from them.")
    p.add_argument("--eval-every", type=int, default=100,
                   help="Ensemble engine: steps between the validation gaps of curves.png.")
    p.add_argument("--eval-chains", type=int, default=128,
                   help="Ensemble engine: validation chains behind those gaps (the final "
                        "evaluation uses all --n-val).")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="Ensemble engine on a GPU: replay each group's training step from a CUDA "
                        "graph (one launch per step; the step is otherwise bound by the host).")
    p.add_argument("--group-size", type=int, default=0,
                   help="Ensemble engine: at most this many runs per group (0: every run of a shape).")
    p.add_argument("--wkv-backend", default="torch", choices=WKV_BACKENDS,
                   help="WKV kernel for every run (torch: no kernel build in each process).")
    p.add_argument("--accelerator", default="auto", choices=("auto", "cpu", "gpu"),
                   help="Where the runs train.")
    p.add_argument("--no-token-shift", "--no_token_shift", dest="no_token_shift", action="store_true",
                   help="Train every run without the token shift (the ablation that tests whether the "
                        "shift is the extra token of view; use another --out).")
    p.add_argument("--parallel", type=int, default=8,
                   help="Processes at the same time: runs (process engine) or groups (ensemble).")
    p.add_argument("--threads-per-run", type=int, default=0,
                   help="CPU threads of each run (0: the machine's cores / --parallel).")
    p.add_argument("--out", default="output/icl-sweep", help="Output folder.")
    p.add_argument("--dry-run", "--dry_run", action="store_true",
                   help="Print the data folders and every run's train.py command (checked against "
                        "train.py's flags) as JSON, and exit: nothing is made or trained. "
                        "--dry_run is the spelling train.py and the demos use.")
    args = p.parse_args(argv)
    if args.engine == "ensemble" and args.wkv_backend != "torch":
        p.error(f"--wkv-backend {args.wkv_backend} with --engine ensemble: the ensemble batches the "
                f"torch backend only (the CUDA kernels are not batched over models); use "
                f"--engine process for another backend")
    if args.cuda_graphs and (args.engine != "ensemble" or args.accelerator == "cpu"):
        p.error("--cuda-graphs needs --engine ensemble on a GPU (--accelerator gpu or auto)")
    if args.threads_per_run <= 0:
        args.threads_per_run = max(1, (os.cpu_count() or 1) // args.parallel)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    data = {}
    for order in args.orders:
        params = MarkovDataParams(order=order, beta=args.beta, seq_len=args.seq_len,
                                  n_train=args.n_train, n_val=args.n_val, seed=args.data_seed)
        data[order] = params.default_folder(out / "data")
        if args.dry_run:
            params.validate()                   # what writing the data would check first
        else:
            write_markov_dataset(data[order], params)
    grid = [(k, K, d, seed) for d in args.depths for k in args.orders for K in args.kernels
            for seed in args.seeds]
    if args.dry_run:
        print(json.dumps(dry_run(args, data, grid), indent=2))
        return 0
    start = time.time()
    rows = []

    def save(final: bool) -> str:
        rows.sort(key=lambda r: (r["depth"], r["order"], r["kernel"], r["seed"]))
        table = make_table(rows, args.kernels)
        atomic_json_save({"args": vars(args), "wall_s": time.time() - start, "complete": final,
                          "runs": rows}, out / "sweep.json")
        atomic_write_bytes(out / "sweep.md", lambda f: f.write((table + "\n").encode()))
        if rows:                       # every run failed: the table says so, there is nothing to plot
            plot_heatmap(rows, args.kernels, out / "sweep.png", sweep_label(args))
            plot_curves(rows, args.kernels, out / "curves.png", sweep_label(args))
        return table

    previous = signal.signal(signal.SIGTERM, stop_children)
    try:
        return _train_grid(args, grid, data, rows, save, start)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _train_grid(args, grid, data, rows, save, start) -> int:
    jobs = work(args, data, grid)
    failed = []
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = {pool.submit(job, *job_args): job_args for job, job_args in jobs}
        for future in as_completed(futures):
            try:
                found = future.result()
            except RuntimeError as err:       # one failed run or group does not stop the others
                failed.append(str(err))
                print(f"error: {err}", file=sys.stderr, flush=True)
                continue
            rows.extend(found)
            for r in found:
                name = run_name(r["order"], r["kernel"], r["depth"], r["seed"])
                print(f"[{len(rows)}/{len(grid)}] {name}: "
                      f"loss {r['loss']:.4f}, Bayes {r['bayes']:.4f}, gap {r['gap']:+.4f} "
                      f"({time.time() - start:.0f} s)", flush=True)
            save(final=False)          # partial results survive an interrupted sweep
    table = save(final=not failed)
    print(table)
    if failed:
        print(f"{len(failed)} of {len(jobs)} jobs failed:\n" + "\n".join(failed), file=sys.stderr)
        return 1
    return 0


def work(args, data: dict, grid: list) -> list:
    """The jobs that train the grid: (function, arguments) per run (process engine) or per group
    of the unfinished runs of one shape (ensemble), and the finished runs read back."""
    jobs, done = [], []
    shapes: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for order, kernel, depth, seed in grid:
        result = find_result(Path(args.out) / "runs" / run_name(order, kernel, depth, seed))
        if result is not None and args.engine == "ensemble":
            done.append(_row(order, kernel, depth, seed, result))
        elif args.engine == "process":
            jobs.append((run_one, (args, data[order], order, kernel, depth, seed)))
        else:
            shapes.setdefault((kernel, depth), []).append((order, seed))
    for (kernel, depth), runs in shapes.items():
        size = args.group_size or len(runs)
        for i in range(0, len(runs), size):
            jobs.append((run_group, (args, data, kernel, depth, runs[i:i + size])))
    if done:
        jobs.append((lambda: done, ()))
    return jobs


if __name__ == "__main__":
    sys.exit(main())
