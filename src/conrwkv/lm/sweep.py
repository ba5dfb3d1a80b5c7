"""The RWKV-ICL sweep: Markov order k x conv kernel x depth, each trained from scratch, and the
final gap to the Bayes-optimal in-context estimator as a table and a heatmap.

The claim under test (docs/reference.md, "The claim under test"): a causal convolution of kernel
>= k + 1 lets the loss reach the Bayes-optimal level; smaller kernels plateau near a lower-order
estimator. Token shift is already a width-2 convolution and depth widens the view, so depth is part
of the grid.

    python -m conrwkv.lm.sweep --orders 1 2 3 4 --kernels 0 2 3 4 5 6 --depths 1 2 \\
        --steps 2000 --parallel 8 --out output/icl-sweep

Runs go to <out>/runs/k<k>-conv<K>-L<d> as separate `python -m conrwkv` (train.py) processes,
several at once (small models leave a GPU mostly idle); a run whose result exists is not
repeated, so an interrupted sweep continues where it stopped. Results: <out>/sweep.json, sweep.md, sweep.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from ..config import ARCHITECTURES, WKV_BACKENDS
from ..data.markov import MarkovDataParams, write_markov_dataset
from ..io import atomic_json_save, atomic_write_bytes, read_json


def run_name(order: int, kernel: int, depth: int) -> str:
    return f"k{order}-conv{kernel}-L{depth}"


def find_result(run_dir: Path) -> dict | None:
    found = sorted(run_dir.glob("rwkv-step*-icl.json"))
    return read_json(found[-1], "ICL evaluation") if found else None


def train_command(args, data: Path, run_dir: Path, kernel: int, depth: int) -> list[str]:
    # `python -m conrwkv` is train.py; run in this process's folder, where the paths point.
    return [sys.executable, "-m", "conrwkv", "--task", "lm", "--op", "train",
            "--data_file", str(data), "--vocab_size", "2", "--arch", args.arch, "--n_layer", str(depth),
            "--n_embd", str(args.n_embd), "--head_size", str(args.head_size),
            "--conv_kernel", str(kernel), "--ctx_len", str(args.seq_len - 1),
            "--micro_bsz", str(args.micro_bsz), "--max_steps", str(args.steps),
            "--lr_init", str(args.lr_init), "--lr_final", str(args.lr_final),
            "--warmup_steps", "50", "--wkv_backend", args.wkv_backend,
            "--accelerator", args.accelerator, "--devices", "1", "--seed", str(args.seed),
            "--val_batches", "4", "--proj_dir", str(run_dir),
            *(["--no-token_shift"] if args.no_token_shift else [])]


def run_one(args, data: Path, order: int, kernel: int, depth: int) -> dict:
    run_dir = Path(args.out) / "runs" / run_name(order, kernel, depth)
    result = find_result(run_dir)
    if result is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        start = time.time()
        with open(run_dir / "train.log", "w") as log:
            # Each run gets its share of the CPU: many runs with a full thread pool each would
            # oversubscribe the cores, and these small models are bound by host-side work.
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads_per_run)}
            proc = subprocess.run(train_command(args, data, run_dir, kernel, depth), stdout=log,
                                  stderr=subprocess.STDOUT, env=env)
        if proc.returncode:
            raise RuntimeError(f"run {run_dir} failed (exit {proc.returncode}); see {run_dir}/train.log")
        result = find_result(run_dir)
        result["wall_s"] = time.time() - start
    return {"order": order, "kernel": kernel, "depth": depth, **result}


def dry_run(args, data: dict, grid: list) -> dict:
    """What the sweep would do, for --dry_run: the data folders and each run's train.py command
    with whether its result exists (then it is kept)."""
    runs = []
    for order, kernel, depth in grid:
        run_dir = Path(args.out) / "runs" / run_name(order, kernel, depth)
        command = train_command(args, data[order], run_dir, kernel, depth)
        runs.append({"name": run_name(order, kernel, depth), "done": find_result(run_dir) is not None,
                     "command": command})
    return {"sweep": vars(args), "data": {order: str(folder) for order, folder in data.items()},
            "runs": runs}


def make_table(rows: list[dict], kernels: list[int]) -> str:
    """Markdown: one line per (depth, order), one column per kernel, cells = gap in nats."""
    lines = ["| depth | order k | " + " | ".join(f"conv {K}" for K in kernels)
             + " | Bayes | order k-1 estimator |",
             "|---|---|" + "---|" * len(kernels) + "---|---|"]
    for depth in sorted({r["depth"] for r in rows}):
        for order in sorted({r["order"] for r in rows}):
            cells = {r["kernel"]: r for r in rows if r["depth"] == depth and r["order"] == order}
            if not cells:
                continue
            any_row = next(iter(cells.values()))
            lower = any_row["lower_order"][f"order_{order - 1}"] - any_row["bayes"]
            gaps = [f"{cells[K]['gap']:+.4f}" if K in cells else "" for K in kernels]
            lines.append(f"| {depth} | {order} | " + " | ".join(gaps)
                         + f" | {any_row['bayes']:.4f} | {lower:+.4f} |")
    return "\n".join(lines)


def plot_heatmap(rows: list[dict], kernels: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = sorted({r["depth"] for r in rows})
    orders = sorted({r["order"] for r in rows})
    fig, axes = plt.subplots(1, len(depths), figsize=(4.4 * len(depths), 3.8), squeeze=False,
                             layout="constrained")
    for ax, depth in zip(axes[0], depths):
        grid = np.full((len(orders), len(kernels)), np.nan)
        for r in rows:
            if r["depth"] == depth:
                grid[orders.index(r["order"]), kernels.index(r["kernel"])] = r["gap"]
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
        ax.set_title(f"depth {depth}: gap to Bayes (nats)")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.85)
    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


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
    p.add_argument("--seed", type=int, default=0, help="Seed of data and training.")
    p.add_argument("--wkv-backend", default="torch", choices=WKV_BACKENDS,
                   help="WKV kernel for every run (torch: no kernel build in each process).")
    p.add_argument("--accelerator", default="auto", choices=("auto", "cpu", "gpu"),
                   help="Where the runs train.")
    p.add_argument("--no-token-shift", "--no_token_shift", dest="no_token_shift", action="store_true",
                   help="Train every run without the token shift (the ablation that tests whether the "
                        "shift is the extra token of view; use another --out).")
    p.add_argument("--parallel", type=int, default=8, help="Runs trained at the same time.")
    p.add_argument("--threads-per-run", type=int, default=0,
                   help="CPU threads of each run (0: the machine's cores / --parallel).")
    p.add_argument("--out", default="output/icl-sweep", help="Output folder.")
    p.add_argument("--dry-run", "--dry_run", action="store_true",
                   help="Print the data folders and every run's train.py command (checked against "
                        "train.py's flags) as JSON, and exit: nothing is made or trained. "
                        "--dry_run is the spelling train.py and the demos use.")
    args = p.parse_args(argv)
    if args.threads_per_run <= 0:
        args.threads_per_run = max(1, (os.cpu_count() or 1) // args.parallel)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    data = {}
    for order in args.orders:
        params = MarkovDataParams(order=order, beta=args.beta, seq_len=args.seq_len,
                                  n_train=args.n_train, n_val=args.n_val, seed=args.seed)
        data[order] = params.default_folder(out / "data")
        if args.dry_run:
            params.validate()                   # what writing the data would check first
        else:
            write_markov_dataset(data[order], params)
    grid = [(k, K, d) for d in args.depths for k in args.orders for K in args.kernels]
    if args.dry_run:
        print(json.dumps(dry_run(args, data, grid), indent=2))
        return 0
    start = time.time()
    rows = []

    def save(final: bool) -> str:
        rows.sort(key=lambda r: (r["depth"], r["order"], r["kernel"]))
        table = make_table(rows, args.kernels)
        atomic_json_save({"args": vars(args), "wall_s": time.time() - start, "complete": final,
                          "runs": rows}, out / "sweep.json")
        atomic_write_bytes(out / "sweep.md", lambda f: f.write((table + "\n").encode()))
        plot_heatmap(rows, args.kernels, out / "sweep.png")
        return table

    with ThreadPoolExecutor(args.parallel) as pool:
        futures = [pool.submit(run_one, args, data[k], k, K, d) for k, K, d in grid]
        for future in as_completed(futures):
            r = future.result()
            rows.append(r)
            print(f"[{len(rows)}/{len(grid)}] {run_name(r['order'], r['kernel'], r['depth'])}: "
                  f"loss {r['loss']:.4f}, Bayes {r['bayes']:.4f}, gap {r['gap']:+.4f} "
                  f"({time.time() - start:.0f} s)", flush=True)
            save(final=False)          # partial results survive an interrupted sweep
    table = save(final=True)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
