"""bench/icl_gpu.sh's collect: the tar that carries a sweep's records back from a GPU call must
hold what the sweep has made so far, group logs included, even when no run has finished yet
(a call that ran out of time: the logs are what says how far the groups got)."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def collect(tmp_path: Path, name: str) -> list[str]:
    out = tmp_path / "out"
    env = {**os.environ, "ROOT": str(tmp_path / "root"), "OUT": str(out)}
    subprocess.run(["sh", "bench/icl_gpu.sh", "collect", name], cwd=ROOT, env=env, check=True,
                   timeout=60)
    with tarfile.open(out / f"icl-{name}.tar") as tar:
        return sorted(tar.getnames())


def make(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")


def test_the_tar_keeps_the_group_logs_before_any_run_has_finished(tmp_path):
    group = tmp_path / "root/icl-x070/groups/conv0-L2-k1234-s0-1-2"
    make(group / "spec.json")
    make(group / "train-20261202-130747-1.log")
    make(group / "model.pth")                    # weights stay on the machine
    assert collect(tmp_path, "x070") == [f"icl-x070/groups/conv0-L2-k1234-s0-1-2/{name}"
                                         for name in ("spec.json", "train-20261202-130747-1.log")]


def test_the_tar_holds_the_finished_runs_records_and_the_tables(tmp_path):
    sweep = tmp_path / "root/icl-grid"
    for name in ("sweep.json", "sweep.md", "curves.png", "runs/k1-conv0-L1-s0/rwkv-step1500.json",
                 "runs/k1-conv0-L1-s0/rwkv-step1500-icl.json", "runs/k1-conv0-L1-s0/rwkv-step1500.pth",
                 "groups/g/spec.json"):
        make(sweep / name)
    assert collect(tmp_path, "grid") == sorted(
        f"icl-grid/{name}" for name in ("sweep.json", "sweep.md", "curves.png", "groups/g/spec.json",
                                        "runs/k1-conv0-L1-s0/rwkv-step1500.json",
                                        "runs/k1-conv0-L1-s0/rwkv-step1500-icl.json"))
