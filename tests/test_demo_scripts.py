"""The demo shell scripts under sh (dash on Debian): a stage that fails makes the script fail."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Stands in for python on PATH: "training" succeeds at once; the ablation table prints a line and
# exits with $ABLATION_STATUS, so the script's handling of it is tested without any real work.
FAKE_PYTHON = """#!/bin/sh
case " $* " in
  *" train.py "*) exit 0 ;;
  *" conrwkv.asr.ablation "*) echo "| configuration | test-clean WER |"; exit "$ABLATION_STATUS" ;;
esac
echo "unexpected python call: $*" >&2; exit 99
"""


def run_slam_stage(tmp_path: Path, ablation_status: int) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    data, runs = tmp_path / "data", tmp_path / "runs"
    (data / "corpus").mkdir(parents=True, exist_ok=True)
    (data / "corpus" / "meta.json").write_text("{}")
    (runs / "lm").mkdir(parents=True, exist_ok=True)
    (runs / "lm" / "rwkv-step000010.pth").write_bytes(b"")
    (runs / "encoder").mkdir(exist_ok=True)
    (runs / "encoder" / "config.json").write_text("{}")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "STAGES": "slam",
           "DATA": str(data), "RUN_DIR": str(runs), "ABLATION_STATUS": str(ablation_status)}
    return subprocess.run(["sh", "demo/demo-asr-offline.sh"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_a_failing_ablation_fails_the_offline_demo_and_leaves_no_table(tmp_path):
    out = run_slam_stage(tmp_path, ablation_status=3)
    assert out.returncode == 3, out.stderr
    assert "| configuration | test-clean WER |" in out.stdout          # still shown as it came
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["encoder", "lm"]


def test_a_passing_ablation_keeps_its_table(tmp_path):
    out = run_slam_stage(tmp_path, ablation_status=0)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "runs" / "ablation.md").read_text() == "| configuration | test-clean WER |\n"
    assert out.stdout.endswith("| configuration | test-clean WER |\n")
