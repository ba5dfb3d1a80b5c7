"""Both demos as a user runs them, under each strategy, at real shapes on one GPU (issue 14).

    python bench/bench_demos.py --out OUT --corpus CORPUS                   # GPU: 1.6B + HuBERT-large
    python bench/bench_demos.py --out OUT --corpus CORPUS --size tiny --asr auto --icl auto  # CPU

CORPUS is a LibriSpeech-layout folder with train, dev, test-clean and test-other (`python
dataset2.py synth`, made where espeak-ng runs and carried). The script writes a random RWKV-6 of
--size in the official layout (as the frozen LLM) and a random HuBERT-shaped encoder folder
(save_pretrained), then runs the demo scripts themselves, with only their variables and extra
flags set, as a user would:

- ASR (`demo/demo-state-tuning.sh`), one case per --asr name: OP=train with a save every 10
  steps, a SIGKILL of the whole process group once step 20's checkpoint exists, OP=train again
  (the resume), then OP=eval, OP=predict and OP=merge. Checked: every op exits 0; the resume
  named the step-20 checkpoint, its first logged step follows it and every logged learning rate
  is the schedule's value at that step; the loss falls; every trained-only file holds exactly
  the trained key set (time_state of every layer, the projector, the conv when on) and the same
  set as every other save; the merged file runs in the `rwkv` package with the logits of this
  project's RWKV (a conv model is run by this project alone) and holds the trained state.
- ICL (`demo/demo-training-run.sh`), one case per --icl name: the demo's default run. Checked:
  exit 0; the training-loss curve against the `auto` case's (max and mean absolute difference
  at the logged steps); the final val/gap; the .pth in the `rwkv` package (conv 0 only).

Step time is the median of the logged `time/step_seconds` (train/speed.py) of a run, peak memory
the largest logged `memory/peak_gib` (per process, so still exact when cases share the GPU).
--parallel > 1 runs cases side by side (for checks and memory); then --timing re-runs each
case's training alone for its step time. Writes OUT/demos.json, OUT/demos.md, OUT/logs.tar.gz.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

ASR_CASES = {           # name -> (demo variables, extra flags of OP=train)
    "auto": ({"strategy": "auto"}, []),
    "ds1": ({"strategy": "deepspeed_stage_1"}, []),
    "ds2": ({"strategy": "deepspeed_stage_2"}, []),
    "ds3": ({"strategy": "deepspeed_stage_3"}, []),
    "conv": ({"strategy": "auto", "conv": "1"}, []),
    "grad_cp": ({"strategy": "auto", "grad_cp": "1"}, []),
    "compile": ({"strategy": "auto"}, ["--compile"]),
}
ICL_CASES = {           # name -> demo variables
    "auto": {"STRATEGY": "auto"},
    "ds1": {"STRATEGY": "deepspeed_stage_1"},
    "ds2": {"STRATEGY": "deepspeed_stage_2"},
    "ds3": {"STRATEGY": "deepspeed_stage_3"},
    "ds3-conv0": {"STRATEGY": "deepspeed_stage_3", "CONV_KERNEL": "0"},
}
SAVE_EVERY, KILL_AT, LOG_EVERY = 10, 20, 5
ASR_RATES = {"state": (1.0, 0.01), "other": (1e-4, 1e-5)}     # the demo's lr defaults
ASR_WARMUP = 10


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------ processes
class Runner:
    """Runs demo commands with one environment, each with its log file and a deadline."""

    def __init__(self, work: Path, deadline: float):
        self.work, self.deadline = work, deadline
        self._port = 29500
        self._lock = threading.Lock()
        shim = work / "bin"
        shim.mkdir(parents=True, exist_ok=True)
        python = shim / "python"            # the demos call `python`; some machines have python3 only
        python.unlink(missing_ok=True)
        python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        python.chmod(0o755)
        paths = [str(ROOT / "src"), os.environ.get("PYTHONPATH")]
        self.env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}",
                    "PYTHONPATH": os.pathsep.join(filter(None, paths)),
                    "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}

    def port(self) -> str:
        with self._lock:
            self._port += 1
            return str(self._port)

    def start(self, script: str, variables: dict, flags: list[str], log_path: Path) -> subprocess.Popen:
        env = {**self.env, **variables, "MASTER_PORT": self.port()}
        handle = open(log_path, "ab")
        handle.write(f"\n$ {' '.join(f'{k}={v}' for k, v in variables.items())} sh {script} "
                     f"{' '.join(flags)}\n".encode())
        handle.flush()
        return subprocess.Popen(["sh", script, *flags], cwd=ROOT, env=env, stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def run(self, script: str, variables: dict, flags: list[str], log_path: Path) -> tuple[int, float]:
        start = time.perf_counter()
        proc = self.start(script, variables, flags, log_path)
        try:
            rc = proc.wait(timeout=max(1.0, self.deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = "deadline"
        return rc, round(time.perf_counter() - start, 1)

    def run_and_kill(self, script: str, variables: dict, flags: list[str], log_path: Path,
                     kill_when: Path) -> tuple[int | str, float]:
        """Start, SIGKILL the process group once `kill_when` exists; "killed" or the exit code."""
        start = time.perf_counter()
        proc = self.start(script, variables, flags, log_path)
        while proc.poll() is None and not kill_when.exists() and time.time() < self.deadline:
            time.sleep(0.2)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return ("killed" if kill_when.exists() else "deadline"), round(time.perf_counter() - start, 1)
        return proc.returncode, round(time.perf_counter() - start, 1)


# ------------------------------------------------------------------------------ reading runs
def metric_rows(proj_dir: Path) -> list[dict]:
    """Every row of every launch's CSV log, with its launch number."""
    rows = []
    for version in sorted((proj_dir / "logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1])):
        with open(version / "metrics.csv") as f:
            for row in csv.DictReader(f):
                rows.append({"launch": int(version.name.split("_")[1]),
                             **{k: float(v) for k, v in row.items() if v not in ("", None)}})
    return rows


def series(rows: list[dict], key: str, launch: int | None = None) -> dict[int, float]:
    return {int(r["step"]): r[key] for r in rows if key in r and (launch is None or r["launch"] == launch)}


def speed_and_memory(rows: list[dict]) -> dict:
    seconds = [r["time/step_seconds"] for r in rows if "time/step_seconds" in r]
    memory = [r["memory/peak_gib"] for r in rows if "memory/peak_gib" in r]
    return {"step_s": round(statistics.median(seconds), 4) if seconds else None,
            "peak_gib": round(max(memory), 2) if memory else None}


def loss_falls(rows: list[dict], key: str = "train/loss") -> dict:
    losses = [v for _, v in sorted(series(rows, key).items())]
    if len(losses) < 4:
        return {"ok": False, "why": f"{len(losses)} logged losses"}
    first, last = statistics.mean(losses[:2]), statistics.mean(losses[-2:])
    return {"ok": last < first, "first": round(first, 4), "last": round(last, 4)}


# ------------------------------------------------------------------------------ ASR
def trained_files(proj_dir: Path) -> dict[int, Path]:
    """step -> asr-step<N>.pth, the trained-only weights (not the merged files beside them)."""
    found = (re.match(r"^asr-step(\d+)\.pth$", p.name) for p in proj_dir.glob("asr-step*.pth"))
    return {int(m.group(1)): proj_dir / m.group(0) for m in found if m}


def trained_keys_check(proj_dir: Path, n_layer: int, conv: bool) -> dict:
    import torch

    files = [path for _, path in sorted(trained_files(proj_dir).items())]
    key_sets = {f.name: sorted(torch.load(f, map_location="cpu", weights_only=True)) for f in files}
    if not key_sets:
        return {"ok": False, "why": "no asr-step*.pth"}
    first = next(iter(key_sets.values()))
    states = [k for k in first if k.endswith("time_state")]
    convs = [k for k in first if ".conv" in k]
    others = [k for k in first if k not in states and k not in convs and not k.startswith("projector.")]
    ok = (all(keys == first for keys in key_sets.values()) and len(states) == n_layer
          and bool(convs) == conv and not others)
    return {"ok": ok, "files": list(key_sets), "keys": len(first), "time_states": len(states),
            "conv_keys": len(convs), "unexpected": others}


def resume_check(proj_dir: Path, log_text: str, max_steps: int) -> dict:
    from conrwkv.train.schedule import lr_factor

    rows = metric_rows(proj_dir)
    launches = sorted({r["launch"] for r in rows})
    if len(launches) < 2:
        return {"ok": False, "why": f"{len(launches)} launches logged"}
    resumed = launches[-1]
    steps = sorted(series(rows, "epoch", resumed) or series(rows, "train/loss", resumed))
    named = f"step{KILL_AT}.ckpt" in log_text and "resuming from" in log_text
    bad_lr = []
    for key in {k for r in rows for k in r if k.startswith("lr-")}:
        init, final = ASR_RATES["state" if key.endswith("/state") else "other"]
        for step, lr in series(rows, key, resumed).items():
            expected = init * lr_factor(step, max_steps, ASR_WARMUP, final / init, "exp")
            if abs(lr - expected) > 1e-6 * expected:
                bad_lr.append((key, step, lr, expected))
    first = min(steps) if steps else None
    columns = sorted({k for r in rows for k in r if k.startswith("lr-")})
    ok = named and first is not None and first >= KILL_AT and not bad_lr
    return {"ok": ok, "resumed_from_named": named, "first_step_after_resume": first,
            "lr_mismatches": bad_lr[:5], "lr_columns": columns}


def rwkv_package_agreement(path: Path, tokens: list[int], device: str) -> dict:
    """This project's RWKV and the `rwkv` package on the same official file, both in float32.

    The package prepares some tensors in the file's dtype before casting them (the embedding
    goes through ln0 in bf16 for a bf16 file), which moves its logits by about 3e-3 from its
    own result on the same numbers stored in float32 (measured on CPU, docs/benchmarks.md). So
    the comparison that judges our forward pass runs on an exact float32 copy of a bf16 file;
    the difference on the file as it is is reported beside it."""
    import tempfile

    import torch

    from conrwkv.model import RWKV

    torch.backends.cuda.matmul.allow_tf32 = False
    model = RWKV.from_checkpoint(path, dtype=torch.float32, device=device)
    with torch.no_grad():
        ours = model(torch.tensor([tokens], device=device))[0][0].float().cpu()
    result = {"ours_finite": bool(torch.isfinite(ours).all())}
    if model.config.conv_kernel:
        result["rwkv_package"] = "not applicable: the rwkv package has no Con-RWKV conv"
        result["ok"] = result["ours_finite"]
        return result
    del model
    os.environ.setdefault("RWKV_JIT_ON", "1")
    os.environ["RWKV_CUDA_ON"] = "0"
    from rwkv.model import RWKV

    torch.backends.cuda.matmul.allow_tf32 = False    # the rwkv package turns TF32 on when imported
    strategy = f"{'cuda' if device == 'cuda' else 'cpu'} fp32"

    def relative_error(file: Path) -> float:
        theirs, _ = RWKV(str(file), strategy=strategy, verbose=False).forward(tokens, None, full_output=True)
        return float((theirs.float().cpu() - ours).norm() / ours.norm())

    result["rel_err_file_as_is"] = relative_error(path)
    weights = torch.load(path, map_location="cpu", weights_only=True)
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "float32.pth"
        torch.save({k: v.float() if v.is_floating_point() else v for k, v in weights.items()}, copy)
        del weights
        result["rel_err_float32_copy"] = relative_error(copy)
    result["ok"] = result["ours_finite"] and result["rel_err_float32_copy"] < 1e-4
    return result


def check_merged(merged: Path, weights: Path, device: str) -> dict:
    """The merged .pth: the trained time_state in it, and its forward pass (rwkv_package_agreement)."""
    import torch

    merged_sd = torch.load(merged, map_location="cpu", weights_only=True, mmap=True)
    trained = torch.load(weights, map_location="cpu", weights_only=True)
    state_diff = max(
        float((merged_sd[k.removeprefix("llm.")].float() - v.float()).abs().max())
        for k, v in trained.items() if k.endswith("time_state"))
    del merged_sd
    result = rwkv_package_agreement(merged, [510, 3319, 21, 33, 4418, 11, 92, 7], device)
    result.update(time_state_max_abs_diff=state_diff, ok=result["ok"] and state_diff < 1e-2)
    return result


def asr_case(name: str, runner: Runner, models: dict, corpus: Path, work: Path, timing_only: bool) -> dict:
    variables, train_flags = ASR_CASES[name]
    proj = work / f"asr-{name}{'-timing' if timing_only else ''}"
    log_path = work / "logs" / f"{proj.name}.log"
    base = {**variables, "load_model": str(models["llm"]), "encoder": str(models["encoder"]),
            "train_data": str(corpus / "train"), "val_data": str(corpus / "dev"),
            "eval_data": f"{corpus / 'test-clean'},{corpus / 'test-other'}",
            "predict_audio": str(corpus / "test-other"), "epoch_count": "1", "proj_dir": str(proj)}
    script = "demo/demo-state-tuning.sh"
    flags = [*train_flags, "--save_every", str(SAVE_EVERY), "--log_every", str(LOG_EVERY)]
    result = {"case": name, "kind": "asr", "ops": {}}
    if timing_only:
        result["ops"]["train"] = runner.run(script, {**base, "OP": "train"}, flags, log_path)
        result.update(speed_and_memory(metric_rows(proj)) if (proj / "logs").is_dir() else {})
        result["ok"] = result["ops"]["train"][0] == 0
        return result
    result["ops"]["train_killed"] = runner.run_and_kill(
        script, {**base, "OP": "train"}, flags, log_path, proj / "checkpoints" / f"step{KILL_AT}.ckpt")
    result["ops"]["train_resumed"] = runner.run(script, {**base, "OP": "train"}, flags, log_path)
    for op in ("eval", "predict", "merge"):
        result["ops"][op] = runner.run(script, {**base, "OP": op}, [], log_path)
    rows = metric_rows(proj) if (proj / "logs").is_dir() else []
    text = log_path.read_text(errors="replace")
    result.update(speed_and_memory(rows))
    checks = {"loss_falls": loss_falls(rows),
              "keys": trained_keys_check(proj, models["n_layer"], variables.get("conv") == "1")}
    steps = sorted(trained_files(proj))
    checks["resume"] = resume_check(proj, text, steps[-1] if steps else 0)
    summaries = sorted(proj.glob("eval-*/summary.json"))
    if summaries:
        splits = json.loads(summaries[-1].read_text())["splits"]
        whole = all(s["utterances_scored"] == s["utterances_in_corpus"] for s in splits.values())
        checks["eval"] = {"ok": whole,
                          "wer": {k: s.get("wer") for k, s in splits.items()},
                          "scored": {k: s["utterances_scored"] for k, s in splits.items()}}
    else:
        checks["eval"] = {"ok": False, "why": "no eval-*/summary.json"}
    merged = sorted(proj.glob("*-merged-llm.pth"))
    if merged and steps:
        probe = subprocess.run([sys.executable, __file__, "--check_merged", str(merged[-1]),
                                str(proj / f"asr-step{steps[-1]:06d}.pth"), "--device", models["device"]],
                               capture_output=True, text=True, env=runner.env, timeout=600)
        try:
            checks["merged"] = json.loads(probe.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            checks["merged"] = {"ok": False, "why": (probe.stderr or probe.stdout)[-2000:]}
    result["checks"] = checks
    result["ok"] = (result["ops"]["train_killed"][0] == "killed"
                    and all(v[0] == 0 for k, v in result["ops"].items() if k != "train_killed")
                    and all(c.get("ok", False) for c in checks.values()))
    return result


# ------------------------------------------------------------------------------ ICL
def check_lm_pth(path: Path, device: str) -> dict:
    return rwkv_package_agreement(path, [0, 1, 1, 0, 1, 0, 0, 0, 1, 1, 1, 0], device)


def icl_case(name: str, runner: Runner, data: Path, work: Path, device: str, timing_only: bool) -> dict:
    proj = work / f"icl-{name}{'-timing' if timing_only else ''}"
    log_path = work / "logs" / f"{proj.name}.log"
    variables = {**ICL_CASES[name], "DATA": str(data), "PROJ_DIR": str(proj)}
    result = {"case": name, "kind": "icl", "ops": {}}
    result["ops"]["train"] = runner.run("demo/demo-training-run.sh", variables, [], log_path)
    rows = metric_rows(proj) if (proj / "logs").is_dir() else []
    result.update(speed_and_memory(rows))
    result["train_loss"] = series(rows, "train/loss")
    gaps = series(rows, "val/gap")
    result["final_val_gap"] = gaps[max(gaps)] if gaps else None
    if timing_only:
        result["ok"] = result["ops"]["train"][0] == 0
        return result
    checks = {"loss_falls": loss_falls(rows)}
    weights = sorted(proj.glob("rwkv-step*.pth"))
    if weights:
        probe = subprocess.run([sys.executable, __file__, "--check_lm_pth", str(weights[-1]),
                                "--device", device],
                               capture_output=True, text=True, env=runner.env, timeout=300)
        try:
            checks["pth"] = json.loads(probe.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            checks["pth"] = {"ok": False, "why": (probe.stderr or probe.stdout)[-2000:]}
    else:
        checks["pth"] = {"ok": False, "why": "no rwkv-step*.pth"}
    result["checks"] = checks
    result["ok"] = result["ops"]["train"][0] == 0 and all(c.get("ok", False) for c in checks.values())
    return result


def compare_curves(results: list[dict]) -> None:
    """Each ICL case's loss curve against the auto case's at the steps both logged."""
    reference = next((r for r in results if r["kind"] == "icl" and r["case"] == "auto"), None)
    if reference is None:
        return
    for r in results:
        if r["kind"] == "icl" and r is not reference and ICL_CASES[r["case"]].get("CONV_KERNEL") is None:
            common = sorted(set(r["train_loss"]) & set(reference["train_loss"]))
            diffs = [abs(r["train_loss"][s] - reference["train_loss"][s]) for s in common]
            r["vs_auto"] = ({"steps": len(common), "max_abs": round(max(diffs), 4),
                             "mean_abs": round(statistics.mean(diffs), 4)} if diffs else None)


# ------------------------------------------------------------------------------ setup, report
def prepare(work: Path, size: str, device: str) -> dict:
    import torch
    from bench_common import SIZES, random_rwkv, save_hubert_folder

    llm, encoder = work / f"rwkv6-{size}.pth", work / f"hubert-{'large' if size != 'tiny' else 'tiny'}"
    if not llm.exists():
        log(f"writing a random {size} RWKV-6 ({SIZES[size]}) in the official layout")
        model = random_rwkv(size, device).cpu()
        model.save_checkpoint(llm)
        del model
    if not (encoder / "config.json").exists():
        log(f"writing a random encoder folder {encoder.name}")
        with torch.device(device):
            save_hubert_folder(encoder, "large" if size != "tiny" else "tiny")
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"llm": llm, "encoder": encoder, "n_layer": SIZES[size][0], "device": device}


def markdown(results: list[dict], environment: dict, command: str) -> str:
    lines = [f"Device: {environment.get('device_name', environment.get('device'))}; torch "
             f"{environment.get('torch')}; deepspeed {environment.get('deepspeed')}; lightning "
             f"{environment.get('lightning')}; date {time.strftime('%Y-%m-%d')}", f"Command: `{command}`", "",
             "| demo | case | works | step (s) | peak (GiB) | notes |", "|---|---|---|---|---|---|"]
    for r in results:
        notes = []
        for name, c in r.get("checks", {}).items():
            if not c.get("ok", False):
                notes.append(f"{name} FAILED")
        for op, (rc, _) in r["ops"].items():
            if rc not in (0, "killed"):
                notes.append(f"{op} rc={rc}")
        if r.get("vs_auto"):
            notes.append(f"loss vs auto: max {r['vs_auto']['max_abs']}, mean {r['vs_auto']['mean_abs']}")
        if r.get("final_val_gap") is not None:
            notes.append(f"val/gap {r['final_val_gap']:.4f}")
        lines.append(f"| {r['kind']} | {r['case']} | {'yes' if r['ok'] else 'NO'} | {r.get('step_s')} | "
                     f"{r.get('peak_gib')} | {'; '.join(notes)} |")
    return "\n".join(lines) + "\n"


def environment(device: str) -> dict:
    import importlib.metadata as md

    import torch

    env = {"device": device, "torch": torch.__version__}
    if device == "cuda":
        env["device_name"] = torch.cuda.get_device_name()
    for package in ("deepspeed", "lightning", "transformers", "rwkv"):
        try:
            env[package] = md.version(package)
        except md.PackageNotFoundError:
            env[package] = None
    return env


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="Folder for demos.json, demos.md and logs.tar.gz.")
    p.add_argument("--corpus", help="LibriSpeech-layout corpus (train, dev, test-clean, test-other).")
    p.add_argument("--work", default="/tmp/bench-demos", help="Folder for the models and the runs.")
    p.add_argument("--size", default="1.6B", help="RWKV-6 size of the frozen LLM (bench_common.SIZES).")
    p.add_argument("--asr", default=",".join(ASR_CASES), help="ASR cases, comma-separated ('' for none).")
    p.add_argument("--icl", default=",".join(ICL_CASES), help="ICL cases, comma-separated ('' for none).")
    p.add_argument("--parallel", type=int, default=1, help="Cases run side by side.")
    p.add_argument("--timing", action="store_true",
                   help="Train each case alone once, for its step time only.")
    p.add_argument("--deadline_s", type=float, default=540, help="Stop starting and kill runs after this.")
    p.add_argument("--check_merged", nargs=2, metavar=("MERGED", "WEIGHTS"), help=argparse.SUPPRESS)
    p.add_argument("--check_lm_pth", help=argparse.SUPPRESS)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when visible).")
    args = p.parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.check_merged:
        print(json.dumps(check_merged(Path(args.check_merged[0]), Path(args.check_merged[1]), device)))
        return 0
    if args.check_lm_pth:
        print(json.dumps(check_lm_pth(Path(args.check_lm_pth), device)))
        return 0
    if not args.out:
        p.error("--out is required")
    deadline = time.time() + args.deadline_s
    out, work = Path(args.out), Path(args.work)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    log(json.dumps(env))
    runner = Runner(work, deadline)
    asr = [c for c in args.asr.split(",") if c]
    icl = [c for c in args.icl.split(",") if c]
    models = prepare(work, args.size, device) if asr else None
    data = work / "markov"
    if icl and not (data / "meta.json").exists():
        subprocess.run([sys.executable, "datanew.py", "--order", "1", "--beta", "1", "--seq-len", "513",
                        "--n-train", "20000", "--n-val", "500", "--seed", "0", "--out", str(data)],
                       cwd=ROOT, env=runner.env, check=True)
    jobs = [("asr", c) for c in asr] + [("icl", c) for c in icl]
    results = []

    def one(job):
        kind, name = job
        if time.time() > deadline - 30:
            return {"case": name, "kind": kind, "ops": {}, "ok": False, "skipped": "deadline"}
        log(f"start {kind} {name}")
        try:
            r = (asr_case(name, runner, models, Path(args.corpus), work, args.timing) if kind == "asr"
                 else icl_case(name, runner, data, work, device, args.timing))
        except Exception as err:                       # one broken case must not lose the others
            r = {"case": name, "kind": kind, "ops": {}, "ok": False, "error": repr(err)}
        log(f"done {kind} {name}: ok={r['ok']} step_s={r.get('step_s')} peak={r.get('peak_gib')}")
        results.append(r)
        write_report(out, work, results, env, argv)
        return r

    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        list(pool.map(one, jobs))
    compare_curves(results)
    write_report(out, work, results, env, argv)
    print((out / "demos.md").read_text())
    return 0


_REPORT_LOCK = threading.Lock()


def write_report(out: Path, work: Path, results: list[dict], env: dict, argv) -> None:
    with _REPORT_LOCK:
        _write_report(out, work, results, env, argv)


def _write_report(out: Path, work: Path, results: list[dict], env: dict, argv) -> None:
    command = "python bench/bench_demos.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = {"environment": env, "results": results}
    (out / "demos.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "demos.md").write_text(markdown(results, env, command))
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        tar.add(work / "logs", arcname="logs")
        for proj in work.glob("*/logs"):
            tar.add(proj, arcname=f"csv/{proj.parent.name}")


if __name__ == "__main__":
    sys.exit(main())
