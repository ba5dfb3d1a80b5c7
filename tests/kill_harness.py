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
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_cli", ROOT / "train.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
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


def step_files(proj_dir: Path) -> list[str]:
    """The weights files and their sidecars (not the evaluations written beside them)."""
    return sorted(p.name for p in proj_dir.iterdir() if STEP_FILE.match(p.name))


def kill(args: list[str], proj_dir: Path, *, inside_save: bool, after_files: int = 0,
         delay: float = 0.0, timeout: float = 300) -> str:
    """Start a launch and SIGKILL it: as soon as a temporary file of a save appears (once
    `after_files` step files exist), or `delay` seconds after the first step file appeared.
    Returns where the kill landed ("inside a save", "between saves", or "after the end")."""
    proc = subprocess.Popen(command(args, proj_dir), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    first_seen = None
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            written = len(step_files(proj_dir)) if proj_dir.is_dir() else 0
            if inside_save:
                if written >= after_files and temporaries(proj_dir):
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return "inside a save"
            else:
                if written and first_seen is None:
                    first_seen = time.monotonic()
                if first_seen is not None and time.monotonic() - first_seen >= delay:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return "inside a save" if temporaries(proj_dir) else "between saves"
            time.sleep(0.0005)
        if proc.poll() is None:
            proc.kill()
            raise AssertionError(f"launch did not reach the kill point in {timeout} s")
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
    ckpts = {p.name for p in (resumed / "checkpoints").iterdir()} if (resumed / "checkpoints").is_dir() else set()
    want_ckpts = {p.name for p in (reference / "checkpoints").iterdir()}
    result.missing += sorted(f"checkpoints/{n}" for n in want_ckpts - ckpts)
    result.leftovers = [str(p) for p in temporaries(resumed)]
    return result


def random_kills(args: list[str], reference: Path, work: Path, kills: int, seed: int) -> dict:
    """`kills` launches into one folder, each SIGKILLed at a random moment (half of them as soon
    as a save's temporary file appears), then one launch to the end; compared with `reference`."""
    rng = random.Random(seed)
    places = []
    for _ in range(kills):
        inside = rng.random() < 0.5
        places.append(kill(args, work, inside_save=inside, after_files=rng.randrange(0, 6),
                           delay=rng.uniform(0.0, 3.0)))
    run_to_end(args, work)
    result = compare(reference, work)
    return {"kills": places, "comparison": result}
