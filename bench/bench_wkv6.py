"""WKV6 benchmark: the torch backends on the CPU (sequential reference vs chunked).

    python bench/bench_wkv6.py --cpu            # B=1 H=4 N=64, T = 512 and 2048

Prints a Markdown table (median of repeats, wall clock) and writes it with the raw numbers as
JSON when --json is given. Forward, and forward + backward with gradients to every input and
the initial state.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date

import torch

from conrwkv.ops import wkv6_chunked, wkv6_sequential


def cpu_inputs(B, T, H, N, requires_grad):
    g = torch.Generator().manual_seed(0)
    r, k, v = (torch.randn(B, T, H, N, generator=g) for _ in range(3))
    w = torch.rand(B, T, H, N, generator=g) * 9 - 8                # raw decay in [-8, 1]
    u = torch.randn(H, N, generator=g)
    s = torch.randn(B, H, N, N, generator=g)
    return [x.requires_grad_(requires_grad) for x in (r, k, v, w, u, s)]


def time_cpu(fn, args, backward, repeats):
    def once():
        y, s = fn(*args)
        if backward:
            (y.sum() + s.sum()).backward()

    once()                                                         # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def bench_cpu(repeats: int):
    rows = []
    for T in (512, 2048):
        for backward in (False, True):
            args = cpu_inputs(1, T, 4, 64, backward)
            seq = time_cpu(wkv6_sequential, args, backward, repeats)
            chunked = time_cpu(wkv6_chunked, args, backward, repeats)
            rows.append(dict(T=T, pass_="fwd+bwd" if backward else "fwd", sequential_ms=seq,
                             chunked_ms=chunked, speedup=seq / chunked))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run the CPU comparison (B=1 H=4 N=64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per case (median reported)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if not args.cpu:
        parser.error("choose what to run: --cpu")
    results = {"date": str(date.today()), "machine": platform.processor() or platform.machine(),
               "threads": torch.get_num_threads(), "torch": torch.__version__}
    results["cpu"] = bench_cpu(args.repeats)
    print(f"CPU ({results['machine']}, {results['threads']} threads, torch {results['torch']}), "
          f"B=1 H=4 N=64, median of {args.repeats}")
    print("| T | pass | sequential (ms) | chunked (ms) | speed-up |")
    print("|---|---|---|---|---|")
    for row in results["cpu"]:
        print(f"| {row['T']} | {row['pass_']} | {row['sequential_ms']:.1f} | {row['chunked_ms']:.1f} "
              f"| {row['speedup']:.1f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
