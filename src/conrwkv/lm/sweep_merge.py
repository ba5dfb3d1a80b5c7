"""One table from ICL sweeps run in parts: the runs of several sweep.json files (the same
settings, different seeds, depths, orders or kernels; e.g. a grid split over GPU calls, or a
part whose run records were lost and only its tabulation kept) as one sweep.json, sweep.md,
sweep.png and curves.png, as the sweep itself would have written them.

    python -m conrwkv.lm.sweep_merge docs/icl-x070.json output/icl-x070/sweep.json \\
        --out output/icl-x070-all

The parts must agree on every setting that shapes a run (architecture, width, steps, learning
rates, data...); a run found in two parts must have the same result in both. The output folder
must not hold a sweep.json yet: nothing is overwritten.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..io import atomic_json_save, atomic_write_bytes, read_json
from .sweep import make_table, plot_curves, plot_heatmap, sweep_label

# What the parts may differ in: the grid's axes and how it was run, not what a run is.
GRID_AXES = ("orders", "kernels", "depths", "seeds")
HOW_RUN = ("out", "parallel", "threads_per_run", "group_size", "dry_run", "cuda_graphs", "engine")
RUN_FIELDS = ("order", "kernel", "depth", "seed", "gap", "loss", "bayes", "lower_order")


def run_key(row: dict) -> tuple[int, int, int, int]:
    return row["order"], row["kernel"], row["depth"], row["seed"]


def curve_points(curve: list) -> list[dict]:
    """A run's gap curve as {"step", "gap"} points; the tabulations kept in docs/ write each
    point as [step, gap] (their "curve_format")."""
    return [point if isinstance(point, dict) else {"step": point[0], "gap": point[1]} for point in curve]


def merge(paths: list[Path]) -> dict:
    """The parts' runs as one sweep record; a ValueError naming the file and the setting or run
    that does not fit."""
    parts = [read_json(path, "sweep results", required=("args", "runs")) for path in paths]
    first_args = parts[0]["args"]
    settings = {key: value for key, value in first_args.items() if key not in GRID_AXES + HOW_RUN}
    rows: dict[tuple, dict] = {}
    for path, part in zip(paths, parts):
        for key, value in settings.items():
            if part["args"].get(key) != value:
                raise ValueError(f"{path}: --{key.replace('_', '-')} is {part['args'].get(key)!r}, "
                                 f"{paths[0]} has {value!r}: runs of different settings are not "
                                 f"one table")
        if not part.get("complete", True):
            print(f"sweep_merge: note: {path} is a sweep that had not finished; its finished runs "
                  f"are taken", file=sys.stderr)
        for row in part["runs"]:
            missing = [key for key in RUN_FIELDS if not isinstance(row, dict) or key not in row]
            if missing:
                raise ValueError(f"{path}: a run without {', '.join(missing)}: not a sweep's run record")
            row = {**row, "curve": curve_points(row.get("curve", []))}
            key = run_key(row)
            if key in rows and (rows[key]["gap"], rows[key]["loss"]) != (row["gap"], row["loss"]):
                raise ValueError(f"{path}: run k{key[0]}-conv{key[1]}-L{key[2]}-s{key[3]} is also in "
                                 f"an earlier part with another result (gap {rows[key]['gap']} "
                                 f"against {row['gap']})")
            rows.setdefault(key, row)
    merged_rows = [rows[key] for key in sorted(rows, key=lambda k: (k[2], k[0], k[1], k[3]))]
    args = {**first_args, **{axis: sorted({value for part in parts for value in part["args"][axis]})
                             for axis in GRID_AXES}}
    return {"args": args, "complete": all(part.get("complete", True) for part in parts),
            "merged_from": [str(path) for path in paths], "wall_s": None, "runs": merged_rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("parts", nargs="+", type=Path, help="The parts' sweep.json files (or their "
                   "tabulations in docs/, which have the same keys).")
    p.add_argument("--out", required=True, type=Path,
                   help="Folder for the merged sweep.json, sweep.md, sweep.png and curves.png "
                        "(created; must not hold a sweep.json yet).")
    args = p.parse_args(argv)
    if (args.out / "sweep.json").exists():
        p.error(f"--out {args.out} already holds a sweep.json; name a new folder (nothing is "
                f"overwritten)")
    try:
        record = merge(args.parts)
    except (OSError, ValueError) as err:
        print(f"sweep_merge: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    rows, kernels = record["runs"], record["args"]["kernels"]
    table = make_table(rows, kernels)
    atomic_json_save(record, args.out / "sweep.json")
    atomic_write_bytes(args.out / "sweep.md", lambda f: f.write((table + "\n").encode()))
    label = sweep_label(argparse.Namespace(**record["args"]))
    plot_heatmap(rows, kernels, args.out / "sweep.png", label)
    plot_curves(rows, kernels, args.out / "curves.png", label)
    print(table)
    print(f"sweep_merge: {len(rows)} runs from {len(args.parts)} parts in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
