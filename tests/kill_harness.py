"""SIGKILL a real `train.py` process at chosen moments, resume it, and compare everything with a
run that was never interrupted: used by test_kill_resume.py (a few kills, CI) and by its slow
variant (many kills at random moments, run by hand: `python -m pytest -m slow`)."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from conrwkv.io import safe_torch_load

ROOT = Path(__file__).resolve().parents[1]
# One thread everywhere: the same arithmetic in every process, so that bit-identical weights
# are a property of the resume and not of how a reduction was split across threads.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0",
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def command(args: list[str], proj_dir: Path) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *args, "--proj_dir", str(proj_dir)]


def run_to_end(args: list[str], proj_dir: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(command(args, proj_dir), cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def run_in_process(args: list[str], proj_dir: Path) -> None:
    """The uninterrupted reference run, in this process (saves a process start) with the
    subprocesses' one thread."""
    from conrwkv import cli

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main([*args, "--proj_dir", str(proj_dir)]) == 0
    finally:
        torch.set_num_threads(threads)


def temporaries(proj_dir: Path) -> list[Path]:
    found = []
    for folder in (proj_dir, proj_dir / "checkpoints"):
        if folder.is_dir():
            found += [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    return found


STEP_FILE = re.compile(r"^\w+-step\d+\.(pth|json)$")
CHECKPOINT_FILE = re.compile(r"^step\d+\.ckpt$")


def step_files(proj_dir: Path) -> list[str]:
    """The weights files and their sidecars (not the evaluations written beside them)."""
    return sorted(p.name for p in proj_dir.iterdir() if STEP_FILE.match(p.name))


def _snapshot(proj_dir: Path) -> set[str]:
    names = set()
    for folder in (proj_dir, proj_dir / "checkpoints"):
        if folder.is_dir():
            names |= {f"{folder.name}/{p.name}" for p in folder.iterdir()}
    return names


def kill(args: list[str], proj_dir: Path, *, inside_save: bool, after_files: int = 0,
         delay: float = 0.0, timeout: float = 300) -> str:
    """Start a launch and SIGKILL it: as soon as a temporary file of one of its saves appears
    (after it has written `after_files` new files), or `delay` seconds after it wrote its first
    new file. Files present before the launch (a killed launch's leftovers) do not count.
    Returns where the kill landed: "inside a save", "between saves" or "after the end"."""
    before = _snapshot(proj_dir)
    log = proj_dir.parent / f"{proj_dir.name}-launch.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as stderr:
        proc = subprocess.Popen(command(args, proj_dir), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=stderr)
    deadline = time.monotonic() + timeout
    first_new = None
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            new = _snapshot(proj_dir) - before
            saving = any(name.endswith(".tmp") for name in new)
            written = sum(1 for name in new if STEP_FILE.match(name.split("/")[1])
                          or CHECKPOINT_FILE.match(name.split("/")[1]))
            if first_new is None and written:
                first_new = time.monotonic()
            due = (saving and written >= after_files if inside_save
                   else first_new is not None and time.monotonic() - first_new >= delay)
            if due:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                # What the kill left behind says where it landed.
                left = any(name.endswith(".tmp") for name in _snapshot(proj_dir) - before)
                return "inside a save" if left else "between saves"
            time.sleep(0.0005)
        if proc.poll() is None:
            raise AssertionError(f"launch did not reach the kill point in {timeout} s")
        assert proc.returncode == 0, log.read_text()[-4000:]
        return "after the end"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@dataclass
class Comparison:
    unreadable: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    different: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.unreadable or self.missing or self.extra or self.different or self.leftovers)


def compare(reference: Path, resumed: Path) -> Comparison:
    """Every step file of the reference run exists in the resumed one, reads, and (weights)
    holds bit-identical tensors; nothing else is there, and no temporary file is left."""
    import json

    result = Comparison()
    want, have = step_files(reference), step_files(resumed)
    result.missing = sorted(set(want) - set(have))
    result.extra = sorted(set(have) - set(want))
    for name in sorted(set(want) & set(have)):
        path = resumed / name
        try:
            if name.endswith(".json"):
                json.loads(path.read_text())
                continue
            got, expected = safe_torch_load(path), safe_torch_load(reference / name)
        except ValueError as err:
            result.unreadable.append(f"{name}: {err}")
            continue
        if got.keys() != expected.keys() or not all(torch.equal(got[k], expected[k]) for k in expected):
            result.different.append(name)
    def checkpoints(folder):
        return {p.name for p in (folder / "checkpoints").glob("step*.ckpt")}

    result.missing += sorted(f"checkpoints/{n}" for n in checkpoints(reference) - checkpoints(resumed))
    result.leftovers = [str(p) for p in temporaries(resumed)]
    return result


def random_kills(args: list[str], reference: Path, work: Path, kills: int, seed: int) -> dict:
    """Rounds of launches into a fresh folder, each SIGKILLed at a random moment (half of them
    as soon as a save's temporary file appears), until a launch runs to its end by itself;
    each round's folder is then compared with `reference`. Stops after `kills` kills."""
    rng = random.Random(seed)
    landed, comparisons = [], []
    while len(landed) < kills:
        folder = work / f"round{len(comparisons)}"
        while len(landed) < kills:
            where = kill(args, folder, inside_save=rng.random() < 0.5, after_files=rng.randrange(0, 4),
                         delay=rng.uniform(0.0, 2.0))
            if where == "after the end":
                break
            landed.append(where)
        else:
            run_to_end(args, folder)
        comparisons.append(compare(reference, folder))
    return {"kills": landed, "comparisons": comparisons}
