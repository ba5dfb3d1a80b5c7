"""WKV6 benchmark: the torch backends on the CPU, and the project's CUDA kernels on a GPU.

    python bench/bench_wkv6.py --cpu            # B=1 H=4 N=64, T = 512 and 2048
    python bench/bench_wkv6.py --decays         # chunked fwd+bwd at slow / mixed / fast decays
    python bench/bench_wkv6.py --gpu            # S1 = B8 T4096 H32 N64, S2 = B4 T1024 H40 N64
    python bench/bench_wkv6.py --gpu-grid       # B in 1..16 x T in 1024..16384, H32 N64: split or not
    python bench/bench_wkv6.py --profile-split  # where the sequence split's time goes (torch.profiler)

--cpu: sequential reference vs chunked, median of repeats by wall clock. --gpu: our CUDA kernels
(backend "cuda") vs fla's chunk_rwkv6 (fla-core, if installed) vs our torch chunked backend, bf16
inputs, forward (no grad) and forward + backward with gradients to every input, without and with a
per-row initial state (and its gradient); medians of CUDA-event timings (triton.testing.do_bench,
L2 flushed between runs), peak memory beyond the inputs, the bandwidth floor from a measured copy,
and a correctness check of every output against the float32 torch chunked backend. Prints Markdown
tables and writes the raw numbers as JSON when --json is given.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import statistics
import sys
import time
from datetime import date

import torch

from conrwkv.ops import wkv6_chunked, wkv6_sequential


def cpu_inputs(B, T, H, N, requires_grad, w_range=(-8.0, 1.0)):
    g = torch.Generator().manual_seed(0)
    r, k, v = (torch.randn(B, T, H, N, generator=g) for _ in range(3))
    low, high = w_range                                            # raw decay: exp(-exp(w))
    w = torch.rand(B, T, H, N, generator=g) * (high - low) + low
    u = torch.randn(H, N, generator=g)
    s = torch.randn(B, H, N, N, generator=g)
    return [x.requires_grad_(requires_grad) for x in (r, k, v, w, u, s)]


def time_cpu(fn, args, backward, repeats):
    # Dense upstream gradients, as training gives: the gradient of y.sum() is an expanded
    # (stride 0) tensor, for which the backward's batched matrix products copy every matrix
    # on its own, which would time that copying rather than the backend.
    g = torch.Generator().manual_seed(1)
    grads = None

    def once():
        nonlocal grads
        y, s = fn(*args)
        if backward:
            if grads is None:
                grads = [torch.randn(x.shape, generator=g, dtype=x.dtype) for x in (y, s)]
            torch.autograd.backward([y, s], grads)

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


# The decay ranges of the --decays table: raw w, decay exp(-exp(w)) per step.
DECAY_RANGES = {"slow [-8, -4]": (-8.0, -4.0), "mixed [-8, 1]": (-8.0, 1.0), "fast [0, 3]": (0.0, 3.0)}
DECAY_SHAPES = {"B16 T512 H4 N16": (16, 512, 4, 16), "B1 T2048 H4 N64": (1, 2048, 4, 64)}


def bench_cpu_decays(repeats: int):
    """The chunked backend's forward + backward at each decay range: its cost should not
    depend on the values."""
    rows = []
    for shape_name, shape in DECAY_SHAPES.items():
        for range_name, w_range in DECAY_RANGES.items():
            args = cpu_inputs(*shape, True, w_range)
            rows.append(dict(shape=shape_name, decays=range_name,
                             chunked_ms=time_cpu(wkv6_chunked, args, True, repeats)))
    return rows


GPU_SIZES = {"S1": (8, 4096, 32, 64), "S2": (4, 1024, 40, 64)}


def gpu_inputs(B, T, H, N, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r, k, v = (torch.randn(B, T, H, N, device="cuda", generator=g).bfloat16() for _ in range(3))
    w = (torch.rand(B, T, H, N, device="cuda", generator=g) * 9 - 8).bfloat16()   # raw decay in [-8, 1]
    u = torch.randn(H, N, device="cuda", generator=g)
    s = torch.randn(B, H, N, N, device="cuda", generator=g) * 0.1
    return r, k, v, w, u, s


def gpu_impls():
    """name -> fn(r, k, v, w, u, state) -> y, each taking the raw decay w."""
    from conrwkv.ops.wkv6_cuda import wkv6_cuda

    impls = {"ours": lambda r, k, v, w, u, s: wkv6_cuda(r, k, v, w, u, s)[0]}
    try:
        from fla.ops.rwkv6 import chunk_rwkv6
    except ImportError:
        chunk_rwkv6 = None
    if chunk_rwkv6 is not None:
        # fla takes the log-decay; it is prepared outside the timed region (see prepare_fla), so
        # fla is timed on its own kernels only, in bf16 like the other inputs.
        impls["fla"] = lambda r, k, v, g, u, s: chunk_rwkv6(r, k, v, g, u, scale=1.0, initial_state=s)[0]
    impls["torch"] = lambda r, k, v, w, u, s: wkv6_chunked(r, k, v, w, u, s)[0]
    return impls


def prepare_fla(w, u):
    return (-torch.exp(w.float())).to(w.dtype), u.to(w.dtype)


def copy_bandwidth():
    """Bytes read plus written per second by a large device-to-device copy."""
    import triton.testing

    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() / (ms * 1e-3)


def floor_ms(B, T, H, N, backward, bandwidth):
    """Each input read once, each output written once: r, k, v, w -> y; and for the backward
    r, k, v, w, dy -> dr, dk, dv, dw (bf16; the N x N states are negligible)."""
    tensors = 5 + (9 if backward else 0)
    return tensors * B * T * H * N * 2 / bandwidth * 1e3


def time_gpu(name, fn, inputs, state, backward, dy):
    import triton.testing

    r, k, v, w, u, s = inputs
    if name == "fla":
        w, u = prepare_fla(w, u)
    leaves = [x.detach().requires_grad_(backward) for x in (r, k, v, w, u)]
    s = s.detach().requires_grad_(backward) if state else None
    args = leaves + [s]

    def fwd():
        with torch.no_grad():
            fn(*args)

    def fwd_bwd():
        fn(*args).backward(dy)

    run = fwd_bwd if backward else fwd
    grads = [x for x in args if x is not None] if backward else None
    for _ in range(3):           # builds our extension, runs fla's autotuning: keep it out of the timing
        run()
    torch.cuda.synchronize()
    ms = triton.testing.do_bench(run, warmup=100, rep=500, grad_to_none=grads, return_mode="median")
    for x in grads or []:
        x.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    for x in grads or []:
        x.grad = None
    return ms, peak


def check_gpu(impls, B, T, H, N):
    """Relative error of y and of every gradient against the float32 torch chunked backend."""
    inputs = gpu_inputs(B, T, H, N, seed=1)
    dy = torch.randn(B, T, H, N, device="cuda").bfloat16()

    def grads(name):
        if name == "torch":        # float32 leaves, so that the reference gradients are not rounded
            r, k, v, w, u, s = (x.detach().float().requires_grad_(True) for x in inputs)
        else:
            r, k, v, w, u, s = (x.detach().requires_grad_(True) for x in inputs)
        if name == "torch":
            y = wkv6_chunked(r, k, v, w, u, s)[0]
        elif name == "fla":
            g, ub = -torch.exp(w.float()), u.to(r.dtype)
            y = impls["fla"](r, k, v, g, ub, s)
        else:
            y = impls[name](r, k, v, w, u, s)
        y.backward(dy.to(y.dtype))
        return [y.detach()] + [x.grad for x in (r, k, v, w, u, s)]

    ref = grads("torch")
    out = {}
    for name in impls:
        if name == "torch":
            continue
        got = grads(name)
        out[name] = {key: ((a.double() - b.double()).norm() / b.double().norm()).item()
                     for key, a, b in zip(("y", "dr", "dk", "dv", "dw", "du", "dstate"), got, ref)}
    return out


def bench_gpu():
    impls = gpu_impls()
    bandwidth = copy_bandwidth()
    cases = [(size, backward, state) for size in GPU_SIZES for backward in (False, True)
             for state in (False, True)]
    rows = {case: dict(size=case[0], shape="B{} T{} H{} N{}".format(*GPU_SIZES[case[0]]),
                       pass_="fwd+bwd" if case[1] else "fwd", state=case[2],
                       floor_ms=floor_ms(*GPU_SIZES[case[0]], case[1], bandwidth)) for case in cases}
    check = None
    for name, fn in impls.items():                  # ours first: its numbers come out even if a peer is slow
        if name != "ours" and check is None:
            check = check_gpu(impls, *GPU_SIZES["S2"])
            for impl, errs in check.items():
                print(f"  check {impl}: " + " ".join(f"{k}={v:.1e}" for k, v in errs.items()), flush=True)
        for size in GPU_SIZES:
            B, T, H, N = GPU_SIZES[size]
            inputs = gpu_inputs(B, T, H, N)
            dy = torch.randn(B, T, H, N, device="cuda").bfloat16()
            for case in [c for c in cases if c[0] == size]:
                ms, peak = time_gpu(name, fn, inputs, case[2], case[1], dy)
                rows[case][f"{name}_ms"], rows[case][f"{name}_peak_mib"] = ms, peak / 2**20
                print(f"  {size} {rows[case]['pass_']} state={case[2]} {name}: {ms:.3f} ms, "
                      f"peak +{peak / 2**20:.0f} MiB", flush=True)
            del inputs, dy
            torch.cuda.empty_cache()
    return dict(device=torch.cuda.get_device_name(), bandwidth_gbs=bandwidth / 1e9, rows=list(rows.values()),
                check_vs_torch_fp32=check, impls=list(impls))


GRID_B, GRID_T, GRID_H, GRID_N = (1, 2, 4, 8, 16), (1024, 4096, 16384), 32, 64


def bench_gpu_grid(out: dict):
    """Forward + backward with a per-row initial state over B x T (H32 N64, bf16): our kernels
    with the sequence split as chosen (ops/sequence_split.py), the same without it (segments=1),
    and fla when installed, all timed in this one process, so that their ratios hold."""
    from conrwkv.ops.sequence_split import choose_segments
    from conrwkv.ops.wkv6_cuda import sm_count, wkv6_cuda

    impls = {"ours": lambda r, k, v, w, u, s: wkv6_cuda(r, k, v, w, u, s)[0],
             "ours-unsplit": lambda r, k, v, w, u, s: wkv6_cuda(r, k, v, w, u, s, segments=1)[0]}
    peers = gpu_impls()
    if "fla" in peers:
        impls["fla"] = peers["fla"]
    sms = sm_count(torch.cuda.current_device())
    res = dict(device=torch.cuda.get_device_name(), sms=sms, H=GRID_H, N=GRID_N, impls=list(impls),
               rows=[{"B": B, "T": T, "segments": choose_segments(B, GRID_H, T, sms)}
                     for T in GRID_T for B in GRID_B])
    out["gpu_grid"] = res        # filled in place, so that a run cut short still saves its rows
    for name, fn in impls.items():     # ours first: fla's cold autotuning must not hold its rows back
        for row in res["rows"]:
            B, T = row["B"], row["T"]
            inputs = gpu_inputs(B, T, GRID_H, GRID_N)
            dy = torch.randn(B, T, GRID_H, GRID_N, device="cuda").bfloat16()
            row[f"{name}_ms"] = time_gpu(name, fn, inputs, True, True, dy)[0]
            print(f"  B{B} T{T} {name}: {row[f'{name}_ms']:.3f} ms", flush=True)
            del inputs, dy
            torch.cuda.empty_cache()
    return res


def profile_split():
    """torch.profiler tables of fwd + bwd with a state, split against unsplit, at a small shape
    (B1 T1024, 4 segments) and a large one (B4 T16384, 2 segments), H32 N64: where the time of
    the sequence split goes (kernels, the torch code around them, host time)."""
    from torch.profiler import ProfilerActivity, profile

    from conrwkv.ops.wkv6_cuda import wkv6_cuda

    for B, T, split in ((1, 1024, 4), (4, 16384, 2)):
        r, k, v, w, u, s = (x.detach().requires_grad_(True) for x in gpu_inputs(B, T, GRID_H, GRID_N))
        dy = torch.randn(B, T, GRID_H, GRID_N, device="cuda").bfloat16()
        for segments in (split, 1):
            def run(segments=segments, leaves=(r, k, v, w, u, s), dy=dy):
                wkv6_cuda(*leaves, segments=segments)[0].backward(dy)

            for _ in range(3):
                run()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    run()
                torch.cuda.synchronize()
            print(f"\nB{B} T{T} H{GRID_H} N{GRID_N}, {segments} segment(s), 5 x fwd + bwd")
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14,
                                            max_name_column_width=60))


def print_gpu_grid(res):
    names = res["impls"]
    print(f"\nGPU ({res['device']}, {res['sms']} SMs), fwd+bwd with a per-row initial state, H{res['H']} "
          f"N{res['N']}, bf16, median ms")
    head = ["B", "T", "segments", *(f"{n} (ms)" for n in names), "split speed-up"]
    head += ["ours / fla"] if "fla" in names else []
    body = []

    def cell(row, key, fmt):                 # "-" where a run cut short measured nothing
        return fmt(row) if all(k in row for k in key) else "-"

    for row in res["rows"]:
        line = [row["B"], row["T"], row["segments"],
                *(cell(row, [n + "_ms"], lambda r, n=n: f"{r[n + '_ms']:.3f}") for n in names),
                cell(row, ["ours_ms", "ours-unsplit_ms"],
                     lambda r: f"{r['ours-unsplit_ms'] / r['ours_ms']:.2f}x")]
        line += [cell(row, ["ours_ms", "fla_ms"], lambda r: f"{r['ours_ms'] / r['fla_ms']:.2f}")
                 ] if "fla" in names else []
        body.append(line)
    print_table(head, body)


def print_gpu(res):
    names = res["impls"]
    print(f"\nGPU ({res['device']}, copy bandwidth {res['bandwidth_gbs']:.0f} GB/s), bf16 inputs, "
          "median of CUDA-event timings (ms); peak memory beyond the inputs (MiB)")
    head = " | ".join(f"{n} (ms)" for n in names)
    ratio = " ours / fla |" if "fla" in names else ""
    peaks = " | ".join(f"peak {n} (MiB)" for n in names if n != "torch")
    print(f"| size | pass | initial state | {head} |{ratio} floor (ms) | {peaks} |")
    print("|" + "---|" * (4 + len(names) + (1 if "fla" in names else 0) + len(names) - 1))
    for row in res["rows"]:
        times = " | ".join(f"{row[n + '_ms']:.3f}" for n in names)
        rat = f" {row['ours_ms'] / row['fla_ms']:.2f} |" if "fla" in names else ""
        pk = " | ".join(f"{row[n + '_peak_mib']:.0f}" for n in names if n != "torch")
        state = "yes" if row["state"] else "no"
        print(f"| {row['size']} {row['shape']} | {row['pass_']} | {state} | {times} |{rat} "
              f"{row['floor_ms']:.3f} | {pk} |")
    print("\nRelative error against the float32 torch chunked backend (S2, initial state, bf16 inputs)")
    keys = ("y", "dr", "dk", "dv", "dw", "du", "dstate")
    print("| impl | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, errs in res["check_vs_torch_fp32"].items():
        print(f"| {name} | " + " | ".join(f"{errs[k]:.1e}" for k in keys) + " |")


def print_table(head: list[str], rows: list[list]) -> None:
    """A Markdown table, as docs/benchmarks.md holds them."""
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run the CPU comparison (B=1 H=4 N=64)")
    parser.add_argument("--decays", action="store_true",
                        help="time the CPU chunked backend's forward + backward at slow, mixed and fast "
                             "decays (B16 T512 H4 N16 and B1 T2048 H4 N64)")
    parser.add_argument("--gpu", action="store_true",
                        help="run the GPU comparison at S1 and S2 (our CUDA kernels, fla, torch chunked)")
    parser.add_argument("--gpu-grid", action="store_true",
                        help="time fwd+bwd with a state over B in {1, 2, 4, 8, 16} x T in {1024, 4096, "
                             "16384} (H32 N64): our kernels with and without the sequence split, and fla")
    parser.add_argument("--profile-split", action="store_true",
                        help="print torch.profiler tables of the sequence split against the whole "
                             "sequence (B1 T1024 and B4 T16384, H32 N64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per CPU case (median reported)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if not (args.cpu or args.decays or args.gpu or args.gpu_grid or args.profile_split):
        parser.error("choose what to run: --cpu, --decays, --gpu, --gpu-grid and/or --profile-split")
    if (args.gpu or args.gpu_grid or args.profile_split) and not torch.cuda.is_available():
        parser.error("--gpu, --gpu-grid and --profile-split need a CUDA device")
    results = {"date": str(date.today()), "machine": platform.processor() or platform.machine(),
               "threads": torch.get_num_threads(), "torch": torch.__version__}
    if args.cpu:
        results["cpu"] = bench_cpu(args.repeats)
        print(f"CPU ({results['machine']}, {results['threads']} threads, torch {results['torch']}), "
              f"B=1 H=4 N=64, median of {args.repeats}")
        print_table(["T", "pass", "sequential (ms)", "chunked (ms)", "speed-up"],
                    [[r["T"], r["pass_"], f"{r['sequential_ms']:.1f}", f"{r['chunked_ms']:.1f}",
                      f"{r['speedup']:.1f}x"] for r in results["cpu"]])
    if args.decays:
        results["decays"] = bench_cpu_decays(args.repeats)
        print(f"\nChunked forward + backward by decay range ({results['threads']} threads, median of "
              f"{args.repeats})")
        print_table(["shape", "raw decays w", "chunked fwd+bwd (ms)"],
                    [[r["shape"], r["decays"], f"{r['chunked_ms']:.1f}"] for r in results["decays"]])
    if args.gpu:
        results["gpu"] = bench_gpu()
        print_gpu(results["gpu"])
    if args.profile_split:
        profile_split()
    if args.gpu_grid:
        # A `timeout` around the run sends SIGTERM: exit through the finally below, which prints
        # and saves the rows measured so far.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
        try:
            bench_gpu_grid(results)
        finally:
            if "gpu_grid" in results:
                print_gpu_grid(results["gpu_grid"])
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(results, f, indent=2)
    elif args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
