"""Speed of the RWKV-ICL sweep's training: the ensemble engine (lm/ensemble.py, the runs of one
shape as one batched computation) against one train.py process per run, in run-steps per second
(one run-step = one optimizer step of one run: what a sweep needs 1500 of per run).

    python bench/bench_icl_sweep.py --gpu --json icl-speed.json
    python bench/bench_icl_sweep.py --cpu-smoke                 # tiny, to check the code runs

1. Steps: the batched step alone, in one process, for groups of M members (the sweep's shape:
   n_embd 64, head size 16, 32 chains of 512 predictions, depth 1 and 2, conv kernel 4, bf16 on
   a GPU), eager and (GPU) replayed from a CUDA graph, after warm-up steps: group steps/s,
   run-steps/s = M x that, the memory peak, and how far the graph's losses are from the eager
   run's (the same members from the same start, so they should agree to bf16 rounding).
2. Sweeps end to end (data made beforehand; each process's start, data loading and final ICL
   evaluation included): the same runs by `conrwkv.lm.sweep --engine process --parallel P` (how
   the 2026-11-24 sweep ran) and by `--engine ensemble`; run-steps/s = runs x steps / wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import environment, log, table, write_json  # noqa: E402

from conrwkv.data.markov import MarkovDataParams, write_markov_dataset  # noqa: E402
from conrwkv.lm import sweep as icl_sweep  # noqa: E402
from conrwkv.lm.ensemble import GroupTrainer  # noqa: E402


def step_rates(root: Path, device: str, sizes: list[int], depths: list[int], steps: int, warmup: int,
               common: list[str], modes: tuple[bool, ...] = (False,)) -> list[dict]:
    args = icl_sweep.parse_args([*common, "--out", str(root / f"steps-{len(list(root.glob('steps*')))}")])
    params = MarkovDataParams(order=2, seq_len=args.seq_len, n_train=args.n_train, n_val=64, seed=0)
    data = {2: params.default_folder(Path(args.out) / "data")}
    write_markov_dataset(data[2], params)
    rows = []
    for depth in depths:
        for members in sizes:
            losses_by_mode = {}
            for graphs in modes:
                spec = icl_sweep.group_spec(args, data, kernel=4, depth=depth,
                                            runs=[(2, seed) for seed in range(members)])
                spec = dataclasses.replace(spec, eval_chains=32, cuda_graphs=graphs)
                if device == "cuda":
                    # before the trainer: a graph's memory pool is allocated while it is captured
                    torch.cuda.reset_peak_memory_stats()
                trainer = GroupTrainer(spec)
                first = time.perf_counter()
                losses = [trainer.train_step() for _ in range(warmup)]   # a graph is captured here
                torch.stack(losses).tolist()
                warmup_s = time.perf_counter() - first
                start = time.perf_counter()
                for _ in range(steps):
                    losses.append(trainer.train_step())
                trajectory = torch.stack(losses).float()
                trajectory.tolist()                    # waits for the last step
                seconds = time.perf_counter() - start
                losses_by_mode[graphs] = trajectory
                peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
                differs = (float((trajectory - losses_by_mode[False]).abs().max())
                           if graphs and False in losses_by_mode else float("nan"))
                rows.append({"arch": args.arch, "depth": depth, "members": members, "graphs": graphs,
                             "group_steps_s": steps / seconds, "run_steps_s": members * steps / seconds,
                             "peak_gib": peak, "warmup_s": warmup_s, "loss_diff_vs_eager": differs})
                log(f"steps: {args.arch}, depth {depth}, {members} members, graphs {graphs}: "
                    f"{steps / seconds:.1f} group steps/s, {members * steps / seconds:.0f} run-steps/s, "
                    f"peak {peak:.2f} GiB, "
                    f"first {warmup} steps {warmup_s:.1f} s, loss vs eager {differs:.2e}")
                del trainer
                if device == "cuda":
                    torch.cuda.empty_cache()
    return rows


def sweep_rates(root: Path, common: list[str], grid: list[str], steps: int, process_parallel: int,
                ensemble_parallel: int) -> list[dict]:
    rows = []
    data_args = [*common, *grid, "--steps", str(steps)]
    # the data first, outside the timings: both engines read copies of the same folders
    args = icl_sweep.parse_args([*data_args, "--out", str(root / "data-only")])
    for order in args.orders:
        params = MarkovDataParams(order=order, beta=args.beta, seq_len=args.seq_len,
                                  n_train=args.n_train, n_val=args.n_val, seed=args.data_seed)
        write_markov_dataset(params.default_folder(root / "data-only" / "data"), params)
    for engine, parallel in (("process", process_parallel), ("ensemble", ensemble_parallel)):
        out = root / f"sweep-{engine}"
        shutil.copytree(root / "data-only" / "data", out / "data", dirs_exist_ok=True)
        start = time.perf_counter()
        assert icl_sweep.main([*data_args, "--engine", engine, "--parallel", str(parallel),
                               "--out", str(out)]) == 0
        seconds = time.perf_counter() - start
        runs = len(json.loads((out / "sweep.json").read_text())["runs"])
        rows.append({"engine": engine, "parallel": parallel, "runs": runs, "steps": steps,
                     "wall_s": seconds, "run_steps_s": runs * steps / seconds})
        log(f"sweep: {engine}, {runs} runs x {steps} steps, {parallel} processes: {seconds:.1f} s, "
            f"{runs * steps / seconds:.0f} run-steps/s")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--gpu", action="store_true", help="The sweep's shapes on the GPU.")
    mode.add_argument("--cpu-smoke", action="store_true", help="Tiny shapes on the CPU (checks the code).")
    p.add_argument("--json", default="", help="Write every measurement here as JSON.")
    p.add_argument("--steps-only", action="store_true",
                   help="Part 1 alone (the batched step, eager and graph-captured); no end-to-end sweeps.")
    args = p.parse_args(argv)
    device = "cuda" if args.gpu else "cpu"
    root = Path(tempfile.mkdtemp(prefix="bench-icl-"))
    if args.gpu:
        common = ["--accelerator", "gpu", "--n-train", "12000", "--n-val", "500"]
        steps = step_rates(root, device, [1, 12, 48], [1, 2], steps=60, warmup=10, common=common,
                           modes=(False, True))
        steps += step_rates(root, device, [12], [1, 2], steps=60, warmup=10,
                            common=[*common, "--arch", "x070"], modes=(False, True))
        grid = ["--orders", "1", "2", "3", "4", "--kernels", "2", "3", "4", "--depths", "1"]
        sweeps = [] if args.steps_only else sweep_rates(root, common, grid, steps=300, process_parallel=12,
                                                        ensemble_parallel=3)
    else:
        common = ["--accelerator", "cpu", "--n-train", "256", "--n-val", "16", "--seq-len", "33",
                  "--n-embd", "32", "--micro-bsz", "8"]
        steps = step_rates(root, device, [1, 2], [1], steps=3, warmup=1, common=common)
        grid = ["--orders", "1", "2", "--kernels", "2", "--depths", "1"]
        sweeps = [] if args.steps_only else sweep_rates(root, common, grid, steps=4, process_parallel=2,
                                                        ensemble_parallel=1)
    env = environment(device)
    print(f"\n{env}\n")
    print(table(["arch", "depth", "members", "CUDA graph", "group steps/s", "run-steps/s", "peak GiB",
                 "loss vs eager"],
                [[r["arch"], r["depth"], r["members"], "yes" if r["graphs"] else "no",
                  f"{r['group_steps_s']:.1f}", f"{r['run_steps_s']:.0f}", f"{r['peak_gib']:.2f}",
                  f"{r['loss_diff_vs_eager']:.1e}"]
                 for r in steps]))
    if sweeps:
        print()
        print(table(["engine", "processes", "runs x steps", "wall s", "run-steps/s"],
                    [[r["engine"], r["parallel"], f"{r['runs']} x {r['steps']}", f"{r['wall_s']:.1f}",
                      f"{r['run_steps_s']:.0f}"] for r in sweeps]))
    write_json(args.json, {"environment": env, "steps": steps, "sweeps": sweeps})
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
