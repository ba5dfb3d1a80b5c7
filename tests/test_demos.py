"""The demo scripts, run under sh (dash on Debian) as a user runs them.

Every demo/*.sh is found by a glob and dry-run (`--dry_run`): it must exit 0, print what train.py
(or the sweep) will use as JSON, and write no file. Each dry run runs in a copy of the scripts, so
whatever it wrote would show there, and they all run at once: a train.py process spends most of
its seconds importing. The state-tuning demo is dry-run with OP=all (its train, eval and predict)
and OP=merge, so every op's flags meet train.py's parser for that op. Then, with a stand-in for
python, which calls a demo makes and what it does when one fails.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMOS = sorted(p.name for p in (ROOT / "demo").glob("*.sh"))
PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"   # python: this venv's

# name: (demo, its environment, its extra arguments after --dry_run). Every demo has a case of its
# own name; the settings given are there to show that the environment and extra flags reach train.py.
DRY_RUNS = {name: (name, {}, []) for name in DEMOS}
DRY_RUNS["demo-training-run.sh"] = ("demo-training-run.sh", {"MICRO_BSZ": "4", "GRAD_ACCUM": "3",
                                                          "WANDB": "icl"}, ["--max_steps", "7"])
DRY_RUNS["demo-training-run.sh TOKEN_SHIFT=0"] = ("demo-training-run.sh", {"TOKEN_SHIFT": "0"}, [])
DRY_RUNS["demo-training-run.sh MODEL_TYPE=x070"] = ("demo-training-run.sh", {"MODEL_TYPE": "x070"}, [])
DRY_RUNS["demo-state-tuning.sh"] = ("demo-state-tuning.sh", {"conv": "1", "n_embed": "64",
                                                          "accumulate_grad_batches": "2"}, [])
DRY_RUNS["demo-state-tuning.sh OP=merge"] = ("demo-state-tuning.sh", {"OP": "merge", "merge_out": "m.pth"},
                                              [])
DRY_RUNS["demo-icl-sweep.sh MODEL_TYPE=x070"] = ("demo-icl-sweep.sh", {"MODEL_TYPE": "x070"}, [])
DRY_RUNS["demo-state-tuning.sh smoke_arch=x070"] = ("demo-state-tuning.sh", {"smoke_arch": "x070"}, [])
DRY_RUNS["demo-state-tuning.sh compile=1"] = ("demo-state-tuning.sh", {
    "compile": "1", "length_bucket": "64", "compile_mode": "reduce-overhead"}, [])


def files_under(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*") if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    """name -> (exit status, stdout, stderr, the files the run added to its copy)."""
    started = {}
    for name, (demo, env, args) in DRY_RUNS.items():
        copy = tmp_path_factory.mktemp("demo")
        shutil.copytree(ROOT / "demo", copy / "demo")
        for script in ROOT.glob("*.py"):                # train.py, datanew.py, dataset2.py
            shutil.copy(script, copy)
        before = files_under(copy)
        proc = subprocess.Popen(["sh", f"demo/{demo}", "--dry_run", *args], cwd=copy, text=True,
                                env={**os.environ, "PATH": PATH, **env},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        started[name] = (proc, copy, before)
    results = {}
    for name, (proc, copy, before) in started.items():
        out, err = proc.communicate(timeout=600)
        results[name] = (proc.returncode, out, err, files_under(copy) - before)
    return results


def printed_json(stdout: str) -> list[dict]:
    """The JSON objects among a demo's output lines: train.py prints each with indent=2, so each
    begins at a line that is only "{" (a nested one's line is indented)."""
    decoder, at, found = json.JSONDecoder(), 0, []
    for line in stdout.splitlines(keepends=True):
        if line.rstrip("\n") == "{":
            found.append(decoder.raw_decode(stdout, at)[0])
        at += len(line)
    return found


@pytest.mark.parametrize("name", sorted(DRY_RUNS))
def test_every_demo_dry_runs_prints_json_and_writes_nothing(dry_runs, name):
    status, out, err, written = dry_runs[name]
    assert status == 0, err
    assert printed_json(out)
    assert not written


def test_the_icl_demo_passes_its_settings_and_extra_flags(dry_runs):
    (plan,) = printed_json(dry_runs["demo-training-run.sh"][1])
    assert plan["task"] == "lm" and plan["op"] == "train"
    assert plan["flags"]["model"]["conv_kernel"] == 2 and plan["model"]["conv_kernel"] == 2
    assert plan["flags"]["train"]["max_steps"] == 7                  # the extra flag wins
    assert plan["flags"]["train"]["micro_bsz"] == 4                  # MICRO_BSZ: the former name
    assert plan["flags"]["train"]["accumulate_grad_batches"] == 3 and plan["flags"]["train"]["wandb"] == "icl"
    assert plan["batch"]["global_batch"] == 12                       # 4 x 3 x one CPU process
    assert plan["flags"]["train"]["proj_dir"] == "output/icl-k1-conv2-L2"
    assert "markov-binidx/k1-beta1-len513" in plan["flags"]["train"]["data_file"]
    assert plan["data"]["note"].startswith("not there yet")         # the dry run made no data
    assert plan["model"]["token_shift"] is True
    (ablation,) = printed_json(dry_runs["demo-training-run.sh TOKEN_SHIFT=0"][1])
    assert ablation["model"]["token_shift"] is False          # its own folder: a run is never mixed
    assert ablation["flags"]["train"]["proj_dir"] == "output/icl-k1-conv2-L2-noshift"
    (rwkv7,) = printed_json(dry_runs["demo-training-run.sh MODEL_TYPE=x070"][1])
    assert rwkv7["model"]["arch"] == "x070" and rwkv7["model"]["dim_ffn"] == 4 * 64   # x070's F = 4C
    assert rwkv7["flags"]["train"]["proj_dir"] == "output/icl-k1-conv2-L2-x070"     # never an x060 run's


def test_the_sweep_demo_lists_every_run_and_makes_no_data(dry_runs):
    (plan,) = printed_json(dry_runs["demo-icl-sweep.sh"][1])
    assert len(plan["runs"]) == 4 * 6 * 2 * 3 and not any(run["done"] for run in plan["runs"])
    assert plan["sweep"]["engine"] == "ensemble"
    run = next(r for r in plan["runs"] if r["name"] == "k3-conv4-L2-s1")
    flags = run["command"][3:]                                        # after python -m conrwkv
    assert flags[flags.index("--conv_kernel") + 1] == "4" and flags[flags.index("--n_layer") + 1] == "2"
    assert flags[flags.index("--seed") + 1] == "1"
    assert plan["data"]["3"] in flags
    (rwkv7,) = printed_json(dry_runs["demo-icl-sweep.sh MODEL_TYPE=x070"][1])
    assert rwkv7["sweep"]["out"] == "output/icl-sweep-x070"                  # never an x060 sweep's
    assert all(r["command"][r["command"].index("--arch") + 1] == "x070" for r in rwkv7["runs"])
    assert flags[flags.index("--arch") + 1] == "x060"


def test_the_state_tuning_demo_gives_each_op_only_its_flags(dry_runs):
    train, evaluate, predict = printed_json(dry_runs["demo-state-tuning.sh"][1])
    assert [p["op"] for p in (train, evaluate, predict)] == ["train", "eval", "predict"]
    assert train["flags"]["asr"]["encoder"] == "data/asr-smoke/models/encoder"
    assert train["flags"]["train"]["epochs"] == 8                     # the smoke's epochs
    assert train["flags"]["train"]["proj_dir"] == "output/asr-smoke"
    assert train["flags"]["model"]["conv_kernel"] == 5                # conv=1: the seed's kernel
    assert train["flags"]["model"]["n_embd"] == 64                    # n_embed: the seed's spelling
    assert train["flags"]["train"]["strategy"] == "auto"
    assert train["flags"]["train"]["accumulate_grad_batches"] == 2 and train["flags"]["train"]["wandb"] == ""
    assert train["batch"]["global_batch"] == 16                       # 8 x 2 x one CPU process
    assert evaluate["flags"]["asr"]["eval_data"] == ("data/asr-smoke/corpus/test-clean,"
                                                      "data/asr-smoke/corpus/test-other")
    assert predict["flags"]["asr"]["audio"] == "data/asr-smoke/corpus/test-other"
    assert not train["flags"]["train"]["compile"] and train["flags"]["asr"]["length_bucket"] == 0
    assert not evaluate["flags"]["train"]["compile"] and not predict["flags"]["train"]["compile"]
    train, evaluate, predict = printed_json(dry_runs["demo-state-tuning.sh compile=1"][1])
    assert train["flags"]["train"]["compile"] and train["flags"]["asr"]["length_bucket"] == 64
    assert train["flags"]["train"]["compile_mode"] == "reduce-overhead"
    assert evaluate["flags"]["train"]["compile"] and predict["flags"]["train"]["compile"]
    (merge,) = printed_json(dry_runs["demo-state-tuning.sh OP=merge"][1])
    assert merge["op"] == "merge" and merge["flags"]["asr"]["merge_out"] == "m.pth"
    for plan in (evaluate, predict, merge):
        assert plan["flags"]["train"]["proj_dir"] == "output/asr-smoke"
        assert "epochs" not in plan["flags"]["train"] and "conv_kernel" not in plan["flags"]["model"]
        assert plan["flags"]["train"]["load_model"] == "" and plan["flags"]["asr"]["encoder"] == ""
        assert plan["weights"].startswith("none yet")               # the dry run trained nothing
    # An RWKV-7 smoke run: its own tiny LLM file and its own folder.
    rwkv7 = printed_json(dry_runs["demo-state-tuning.sh smoke_arch=x070"][1])
    assert rwkv7[0]["flags"]["train"]["load_model"] == "data/asr-smoke/models/rwkv7-tiny.pth"
    assert {p["flags"]["train"]["proj_dir"] for p in rwkv7} == {"output/asr-smoke-x070"}


def test_the_offline_demo_dry_runs_every_train_py_call_and_prints_the_rest(dry_runs):
    out = dry_runs["demo-asr-offline.sh"][1]
    plans = printed_json(out)
    slam = [("asr", "train"), ("asr", "eval")]
    assert [(p["task"], p["op"]) for p in plans] == [*[("lm", "train")] * 3, *slam, *slam, *slam]
    # the LM ladder, each size compiled in a folder of its own
    assert [(p["flags"]["model"]["n_layer"], p["flags"]["model"]["n_embd"]) for p in plans[:3]] == [
        (6, 384), (12, 768), (24, 1024)]
    assert [p["flags"]["train"]["proj_dir"] for p in plans[:3]] == [
        f"output/asr-offline/lm/{size}" for size in ("6x384", "12x768", "24x1024")]
    assert all(p["flags"]["train"]["compile"] for p in plans[:3])
    trains = {Path(p["flags"]["train"]["proj_dir"]).name: p for p in plans[3::2]}
    assert not trains["slam-projector"]["flags"]["asr"]["train_state"]
    assert trains["slam-state-conv"]["flags"]["model"]["conv_kernel"] == 3
    assert trains["slam-state"]["flags"]["train"]["load_model"] == (
        "output/asr-offline/lm/6x384/rwkv-step000600.pth")
    for evaluate in plans[4::2]:
        assert "epochs" not in evaluate["flags"]["train"] and "conv_kernel" not in evaluate["flags"]["model"]
    assert "would run: python dataset2.py synth --out data/asr-offline/corpus" in out
    assert "would run: python -m conrwkv.asr.ctc_encoder" in out
    assert "would run: python dataset2.py lmtext --corpus data/asr-offline/corpus --out data/asr-offline/" \
           "lm-text --sources wordnet gcide devil jargon foldoc fortunes --copy_fraction 0" in out


# Stands in for python on PATH: each call's arguments go to $CALLS; "training" succeeds at once;
# the ablation table prints a line and exits with $ABLATION_STATUS, so a script's handling of the
# calls and their failures is tested without any real work.
FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$CALLS"
case " $* " in
  *" train.py "*) exit 0 ;;
  *" conrwkv.asr.ablation "*) echo "| configuration | test-clean WER |"; exit "$ABLATION_STATUS" ;;
  *" conrwkv.asr.grid "*) exit 0 ;;
  *"dataset2.py synth "*) exit 0 ;;
esac
echo "unexpected python call: $*" >&2; exit 99
"""


def run_with_fake_python(tmp_path: Path, demo: str, env: dict) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "CALLS": str(tmp_path / "calls"), **env}
    return subprocess.run(["sh", f"demo/{demo}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


def calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls").read_text().splitlines()


@pytest.mark.parametrize(("op", "predict_audio", "ops"), [
    ("all", "a.flac", ["train", "eval", "predict"]),
    ("all", "", ["train", "eval"]),                     # nothing to transcribe: predict is skipped
    ("predict", "a.flac", ["predict"]),
])
def test_state_tuning_runs_the_ops_of_OP(tmp_path, op, predict_audio, ops):
    out = run_with_fake_python(tmp_path, "demo-state-tuning.sh", {
        "OP": op, "predict_audio": predict_audio, "load_model": "llm.pth", "proj_dir": str(tmp_path / "run")})
    assert out.returncode == 0, out.stderr
    assert [call.split()[call.split().index("--op") + 1] for call in calls(tmp_path)] == ops


def test_state_tuning_refuses_an_unknown_OP(tmp_path):
    out = run_with_fake_python(tmp_path, "demo-state-tuning.sh", {"OP": "evaluate", "load_model": "llm.pth"})
    assert out.returncode == 2 and "OP must be train, eval, predict, merge or all, got evaluate" in out.stderr
    assert not (tmp_path / "calls").exists()


def run_slam_stage(tmp_path: Path, ablation_status: int) -> subprocess.CompletedProcess:
    data, runs = tmp_path / "data", tmp_path / "runs"
    (data / "corpus").mkdir(parents=True, exist_ok=True)
    (data / "corpus" / "meta.json").write_text("{}")
    (runs / "lm" / "6x384").mkdir(parents=True, exist_ok=True)
    (runs / "lm" / "6x384" / "rwkv-step000010.pth").write_bytes(b"")
    (runs / "encoder").mkdir(exist_ok=True)
    (runs / "encoder" / "config.json").write_text("{}")
    return run_with_fake_python(tmp_path, "demo-asr-offline.sh", {
        "STAGES": "slam", "DATA": str(data), "RUN_DIR": str(runs), "ABLATION_STATUS": str(ablation_status),
        "LM_STEPS": "10", "SLAM_LM": "6x384"})


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
    assert len(calls(tmp_path)) == 3 * 2 + 1             # train and eval of each run, the table


def test_the_lm_stage_trains_each_size_not_yet_finished(tmp_path):
    runs = tmp_path / "runs"
    (runs / "lm" / "12x768").mkdir(parents=True)
    (runs / "lm" / "12x768" / "rwkv-step000050.pth").write_bytes(b"")     # finished: kept
    (runs / "lm" / "2x64").mkdir(parents=True)
    (runs / "lm" / "2x64" / "rwkv-step000020.pth").write_bytes(b"")       # stopped part way
    out = run_with_fake_python(tmp_path, "demo-asr-offline.sh", {
        "STAGES": "lm", "RUN_DIR": str(runs), "LM_STEPS": "50", "LM_SIZES": "2x64 12x768 4x128"})
    assert out.returncode == 0, out.stderr
    assert f"lm: {runs}/lm/12x768/rwkv-step000050.pth exists, kept" in out.stdout
    trained = [call.split() for call in calls(tmp_path)]
    assert [(c[c.index("--n_layer") + 1], c[c.index("--n_embd") + 1], c[c.index("--proj_dir") + 1])
            for c in trained] == [("2", "64", f"{runs}/lm/2x64"), ("4", "128", f"{runs}/lm/4x128")]
    assert all("--compile" in c and "--max_steps" in c for c in trained)


def test_lm_arch_x070_trains_rwkv7_into_its_own_folders_and_the_grid_reads_them(tmp_path):
    runs = tmp_path / "runs"
    env = {"RUN_DIR": str(runs), "LM_SIZES": "2x64", "LM_ARCH": "x070", "LM_STEPS": "10"}
    out = run_with_fake_python(tmp_path, "demo-asr-offline.sh", {**env, "STAGES": "lm"})
    assert out.returncode == 0, out.stderr
    [call] = calls(tmp_path)
    assert "--arch x070" in call and f"--proj_dir {runs}/lm/2x64-x070" in call
    (runs / "lm" / "2x64-x070").mkdir(parents=True)
    (runs / "lm" / "2x64-x070" / "rwkv-step000010.pth").write_bytes(b"")
    data = tmp_path / "data"
    (data / "corpus").mkdir(parents=True)
    (data / "corpus" / "meta.json").write_text("{}")
    (runs / "encoder").mkdir(parents=True)
    (runs / "encoder" / "config.json").write_text("{}")
    out = run_with_fake_python(tmp_path, "demo-asr-offline.sh", {**env, "STAGES": "grid", "DATA": str(data)})
    assert out.returncode == 0, out.stderr
    assert f"--lm 2x64={runs}/lm/2x64-x070/rwkv-step000010.pth" in calls(tmp_path)[-1]


def test_lm_compile_0_trains_eagerly(tmp_path):
    out = run_with_fake_python(tmp_path, "demo-asr-offline.sh", {
        "STAGES": "lm", "RUN_DIR": str(tmp_path / "runs"), "LM_SIZES": "2x64", "LM_COMPILE": "0"})
    assert out.returncode == 0, out.stderr
    [call] = calls(tmp_path)
    assert "--compile" not in call.split() and "--n_embd 64" in call


def test_the_prepare_stage_takes_synth_flags_an_hours_target_and_no_pack(tmp_path):
    data = tmp_path / "data"
    (data / "lm-text").mkdir(parents=True)
    (data / "lm-text" / "train.idx").write_bytes(b"")              # the LM text exists: kept
    out = run_with_fake_python(tmp_path, "demo-asr-offline.sh", {
        "STAGES": "prepare", "DATA": str(data), "N_TRAIN": "", "PACK": "",
        "SYNTH_ARGS": "--voices all --hours 2 --tools /kit"})
    assert out.returncode == 0, out.stderr
    [call] = calls(tmp_path)                                         # synth only: no pack
    flags = call.split()
    assert flags[:2] == ["dataset2.py", "synth"] and "--train" not in flags
    assert " --voices all --hours 2 --tools /kit" in call and "--dev 300" in call


@pytest.mark.parametrize("env", [{"LM_SIZES": "6x384 12by768"}, {"LM_SIZES": "6x"},
                                 {"STAGES": "slam", "SLAM_LM": "x384"}])
def test_a_malformed_lm_size_is_refused(tmp_path, env):
    out = run_with_fake_python(tmp_path, "demo-asr-offline.sh", {
        "STAGES": "lm", "RUN_DIR": str(tmp_path / "runs"), "DATA": str(tmp_path / "data"), **env})
    assert out.returncode == 2
    assert "is not <layers>x<embedding> (e.g. 12x768)" in out.stderr


def test_the_grid_stage_passes_every_lm_size_and_the_slam_settings(tmp_path):
    data, runs = tmp_path / "data", tmp_path / "runs"
    (data / "corpus").mkdir(parents=True)
    (data / "corpus" / "meta.json").write_text("{}")
    (runs / "encoder").mkdir(parents=True)
    (runs / "encoder" / "config.json").write_text("{}")
    env = {"STAGES": "grid", "DATA": str(data), "RUN_DIR": str(runs), "LM_STEPS": "10",
           "LM_SIZES": "2x64 4x128", "GRID_ARMS": "state,oracle", "GRID_SEEDS": "0,1",
           "GRID_PARALLEL": "3"}
    (runs / "lm" / "2x64").mkdir(parents=True)
    (runs / "lm" / "2x64" / "rwkv-step000010.pth").write_bytes(b"")
    out = run_with_fake_python(tmp_path, "demo-asr-offline.sh", env)
    assert out.returncode == 1 and "needs the lm stage's 4x128 model first" in out.stderr
    (runs / "lm" / "4x128").mkdir(parents=True)
    (runs / "lm" / "4x128" / "rwkv-step000010.pth").write_bytes(b"")
    out = run_with_fake_python(tmp_path, "demo-asr-offline.sh", env)
    assert out.returncode == 0, out.stderr
    [call] = calls(tmp_path)
    assert call.startswith("-m conrwkv.asr.grid ")
    assert (f"--lm 2x64={runs}/lm/2x64/rwkv-step000010.pth --lm 4x128={runs}/lm/4x128/rwkv-step000010.pth"
            in call)
    assert "--arms state,oracle --seeds 0,1 --conv_kernels 3" in call and "--save_every 100" in call
    assert "--parallel 3" in call and f"--encoder {runs}/encoder " in call
