"""bench/bench_wkv6.py's GPU grid table: a run cut short by its timeout still prints every row,
with "-" where an implementation was not reached, and the ratios only where both timings exist."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_wkv6  # noqa: E402


def test_a_grid_cut_short_prints_what_was_measured(capsys):
    res = {"device": "GPU", "sms": 132, "H": 32, "N": 64, "impls": ["ours", "ours-unsplit", "fla"],
           "rows": [{"B": 1, "T": 1024, "segments": 1, "ours_ms": 1.0, "ours-unsplit_ms": 2.0, "fla_ms": 4.0},
                    {"B": 2, "T": 1024, "segments": 1, "ours_ms": 3.0},
                    {"B": 4, "T": 1024, "segments": 1}]}
    bench_wkv6.print_gpu_grid(res)
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if line.startswith("| ") and "---" not in line]
    assert rows[1:] == ["| 1 | 1024 | 1 | 1.000 | 2.000 | 4.000 | 2.00x | 0.25 |",
                        "| 2 | 1024 | 1 | 3.000 | - | - | - | - |",
                        "| 4 | 1024 | 1 | - | - | - | - | - |"]
