"""WKV7 (RWKV-7) benchmark on the CPU: the chunked torch backend against the sequential reference.

    python bench/bench_wkv7.py --repeats 5 [--json wkv7.json]

B = 1, H = 4, N = 64, T = 512 and 2048, float32; forward, and forward + backward with gradients
to every input and the initial state (per-row state given). Inputs as an RWKV-7 block makes them:
a = -kk and b = kk * iclr with kk unit-norm per head and iclr in (0, 1), raw decays w in [-8, -0.5]
(the range the block's -softplus(...) - 0.5 gives). Median of repeats by wall clock, after one
warm-up; Markdown table as docs/benchmarks.md holds them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import environment, table  # noqa: E402
from bench_wkv6 import time_cpu  # noqa: E402

from conrwkv.ops.wkv7_torch import wkv7_chunked, wkv7_sequential  # noqa: E402


def inputs(B: int, T: int, H: int, N: int, requires_grad: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    r, k, v = (torch.randn(B, T, H, N, generator=g) for _ in range(3))
    w = torch.rand(B, T, H, N, generator=g) * 7.5 - 8.0
    kk = torch.nn.functional.normalize(torch.randn(B, T, H, N, generator=g), dim=-1)
    iclr = torch.rand(B, T, H, N, generator=g)
    state = torch.randn(B, H, N, N, generator=g) * 0.1
    return [x.requires_grad_(requires_grad) for x in (r, w, k, v, -kk, kk * iclr, state)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="Timed repeats per case (median reported).")
    p.add_argument("--json", default="", help="Also write the results to this JSON file.")
    args = p.parse_args(argv)
    rows = []
    for T in (512, 2048):
        for backward in (False, True):
            case = inputs(1, T, 4, 64, backward)
            sequential = time_cpu(wkv7_sequential, case, backward, args.repeats)
            chunked = time_cpu(wkv7_chunked, case, backward, args.repeats)
            rows.append({"T": T, "pass": "fwd+bwd" if backward else "fwd", "sequential_ms": sequential,
                         "chunked_ms": chunked, "speedup": sequential / chunked})
    env = {**environment("cpu"), "threads": torch.get_num_threads()}
    print(env)
    print(table(["T", "pass", "sequential ms", "chunked ms", "chunked speed-up"],
                [[r["T"], r["pass"], f"{r['sequential_ms']:.1f}", f"{r['chunked_ms']:.1f}",
                  f"{r['speedup']:.1f}x"] for r in rows]))
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
