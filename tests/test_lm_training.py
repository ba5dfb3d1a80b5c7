"""LM training end to end on CPU: loss falls, checkpoints, resume, the demo's configuration."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from factories import markov_folder

from conrwkv.config import ModelConfig, TrainConfig
from conrwkv.lm.module import LMModule
from conrwkv.lm.run import eval_lm, train_lm
from conrwkv.model import RWKV
from conrwkv.train.schedule import lr_factor
from conrwkv.train.step_files import resume_checkpoints

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def markov_dir(tmp_path_factory):
    return markov_folder(tmp_path_factory, order=1, seq_len=65, n_train=600, n_val=64, seed=1)


def configs(markov_dir, proj_dir, **train):
    model = ModelConfig(vocab_size=2, n_layer=1, n_embd=32, head_size=16, conv_kernel=2)
    base = dict(proj_dir=str(proj_dir), data_file=str(markov_dir), ctx_len=64, micro_bsz=16,
                max_steps=40, lr_init=3e-3, lr_final=3e-4, warmup_steps=5, accelerator="cpu",
                devices="1", seed=0)
    base.update(train)
    return model, TrainConfig(**base)


def test_training_lowers_the_loss_and_writes_weights_and_plot(markov_dir, tmp_path):
    model_cfg, train_cfg = configs(markov_dir, tmp_path / "run")
    result = train_lm(model_cfg, {}, train_cfg)
    icl = result["icl"]
    assert icl["loss"] < 0.60 < 0.693                      # uniform guessing costs ln 2
    assert icl["gap"] == pytest.approx(icl["loss"] - icl["bayes"])
    assert abs(result["val/gap"]) < 0.2
    weights = tmp_path / "run" / "rwkv-step000040.pth"
    assert weights.is_file() and (tmp_path / "run" / "rwkv-step000040-icl.png").stat().st_size > 0
    assert json.loads((tmp_path / "run" / "rwkv-step000040.json").read_text())["step"] == 40
    # the run's cost is in its log: seconds per step from the second logging interval on
    metrics = (tmp_path / "run" / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    column = metrics[0].split(",").index("time/step_seconds")
    seconds = [float(r.split(",")[column]) for r in metrics[1:] if r.split(",")[column]]
    assert len(seconds) == 3 and all(0 < s < 60 for s in seconds)
    loaded = RWKV.from_checkpoint(weights)                 # an official-format file
    assert loaded.config.conv_kernel == 2 and loaded.config.vocab_size == 2
    # --op eval reproduces the same numbers from the saved weights
    again = eval_lm(model_cfg, {}, train_cfg)["icl"]
    assert again["loss"] == pytest.approx(icl["loss"], abs=1e-5)


def test_resume_continues_step_count_and_lr_schedule(markov_dir, tmp_path, monkeypatch):
    model_cfg, train_cfg = configs(markov_dir, tmp_path / "run", max_steps=12, save_every=4)
    original = LMModule.training_step

    def interrupted(self, batch, batch_idx):
        if self.trainer.global_step >= 6:
            self.trainer.should_stop = True                 # as if the job were killed at step 6
        return original(self, batch, batch_idx)

    monkeypatch.setattr(LMModule, "training_step", interrupted)
    train_lm(model_cfg, {}, train_cfg)
    monkeypatch.setattr(LMModule, "training_step", original)
    assert resume_checkpoints(tmp_path / "run")[0].name == "step7.ckpt"
    files = sorted(p.name for p in (tmp_path / "run").glob("rwkv-step*.pth"))
    assert files == ["rwkv-step000004.pth", "rwkv-step000007.pth"]

    train_lm(model_cfg, {}, train_cfg)                     # relaunch: resumes from step 7
    files = sorted(p.name for p in (tmp_path / "run").glob("rwkv-step*.pth"))
    assert files == ["rwkv-step000004.pth", "rwkv-step000007.pth", "rwkv-step000008.pth",
                     "rwkv-step000012.pth"]
    resumed_log = sorted((tmp_path / "run" / "logs").glob("version_*"))[-1] / "metrics.csv"
    rows = [line.split(",") for line in resumed_log.read_text().splitlines()]
    header, rows = rows[0], rows[1:]
    step_col, lr_col = header.index("step"), header.index("lr-Adam/model")
    lrs = {int(r[step_col]): float(r[lr_col]) for r in rows if r[lr_col]}
    assert min(lrs) >= 7                                   # the count went on, not from 0
    for step, lr in lrs.items():
        assert lr == pytest.approx(3e-3 * lr_factor(step, 12, 5, 0.1, "exp"), rel=1e-6)


def test_schedule_shapes():
    assert lr_factor(0, 100, 10, 0.1) == pytest.approx(0.01)
    assert lr_factor(5, 100, 10, 0.1) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(10, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(55, 100, 10, 0.1) == pytest.approx(0.1**0.5)
    assert lr_factor(55, 100, 10, 0.1, "cos") == pytest.approx(0.55)
    assert lr_factor(80, 100, 10, 0.1, "const") == 1.0


def run(cmd, **kw):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, **kw)


def test_bad_flags_give_clear_errors(tmp_path):
    out = run([sys.executable, "train.py", "--task", "lm", "--op", "predict"])
    assert out.returncode == 2 and "argument --op: invalid choice: 'predict'" in out.stderr
    out = run([sys.executable, "train.py", "--task", "lm", "--beam", "4"])
    assert out.returncode == 2 and "unrecognized arguments: --beam" in out.stderr
    out = run([sys.executable, "train.py", "--task", "lm", "--data_file", str(tmp_path / "none"),
               "--accelerator", "cpu"])
    assert out.returncode == 2 and "none.idx does not exist" in out.stderr
    out = run([sys.executable, "datanew.py", "--order", "9", "--seq-len", "5"])
    assert out.returncode == 2 and "--seq-len (5) must exceed --order (9)" in out.stderr


def test_vocab_too_small_for_the_data_is_refused(markov_dir, tmp_path):
    _, train_cfg = configs(markov_dir, tmp_path / "r")
    model_cfg = ModelConfig(vocab_size=1, n_layer=1, n_embd=32, head_size=16)
    with pytest.raises(ValueError, match="holds token id 1, but the model's vocab_size is 1"):
        train_lm(model_cfg, {}, train_cfg)


def test_icl_sweep_runs_a_tiny_grid_and_resumes(tmp_path):
    from conrwkv.lm import sweep as icl_sweep

    args = ["--orders", "1", "--kernels", "0", "2", "--depths", "1", "--steps", "4",
            "--n-train", "64", "--n-val", "16", "--seq-len", "33", "--n-embd", "32",
            "--micro-bsz", "8", "--parallel", "2", "--accelerator", "cpu", "--engine", "process",
            "--out", str(tmp_path)]
    assert icl_sweep.main(args) == 0
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    assert sweep["complete"] and {(r["kernel"], r["depth"]) for r in sweep["runs"]} == {(0, 1), (2, 1)}
    table = (tmp_path / "sweep.md").read_text()
    assert "| 1 | 1 |" in table and "conv 2" in table
    assert (tmp_path / "sweep.png").stat().st_size > 0
    before = (tmp_path / "runs" / "k1-conv0-L1-s0" / "train.log").stat().st_mtime
    assert icl_sweep.main(args) == 0                       # finished runs are not repeated
    assert (tmp_path / "runs" / "k1-conv0-L1-s0" / "train.log").stat().st_mtime == before


def test_compile_flag_compiles_the_model_and_trains_like_eager(markov_dir, tmp_path, monkeypatch):
    compiled = []
    original = RWKV.compile_model

    def recording(model, **options):
        compiled.append(len(model.blocks))
        original(model, backend="aot_eager", **options)     # dynamo + autograd, no slow CPU codegen

    monkeypatch.setattr(RWKV, "compile_model", recording)
    # Compiled code is cached per function: what other tests compiled (another backend, other
    # shapes) would otherwise be guarded against and recompiled around, which is slow.
    torch._dynamo.reset()
    weights = {}
    for name, flag in (("eager", False), ("compiled", True)):
        model_cfg, train_cfg = configs(markov_dir, tmp_path / name, max_steps=4, compile=flag)
        train_lm(model_cfg, {}, train_cfg)
        weights[name] = RWKV.from_checkpoint(tmp_path / name / "rwkv-step000004.pth").state_dict()
    assert compiled == [1]
    assert weights["compiled"].keys() == weights["eager"].keys()      # no "_orig_mod." prefixes
    for key, value in weights["eager"].items():
        assert torch.allclose(weights["compiled"][key], value, atol=1e-4), key


def test_each_command_offers_only_the_flags_it_reads():
    """A flag a command does not read is an unrecognized argument, not silently ignored."""
    for argv, flag in ((["--task", "asr", "--head_size", "32"], "--head_size"),
                       (["--task", "asr", "--no-state_tuning"], "--no-state_tuning"),
                       (["--task", "asr", "--data_type", "windows"], "--data_type"),
                       (["--task", "asr", "--op", "eval", "--lr_init", "1"], "--lr_init"),
                       (["--task", "asr", "--op", "eval", "--conv_kernel", "3"], "--conv_kernel"),
                       (["--task", "lm", "--op", "eval", "--max_steps", "9"], "--max_steps"),
                       (["--task", "lm", "--beam", "4"], "--beam")):
        out = run([sys.executable, "train.py", *argv, "--dry_run"])
        assert out.returncode == 2 and f"unrecognized arguments: {flag}" in out.stderr, argv


def test_dry_run_prints_the_shape_read_off_the_checkpoint(tmp_path):
    from factories import random_checkpoint

    path, _ = random_checkpoint(tmp_path / "m.pth", vocab_size=97, n_embd=64)
    out = run([sys.executable, "train.py", "--task", "lm", "--load_model", str(path),
               "--conv_kernel", "3", "--data_file", str(tmp_path / "none"), "--accelerator", "cpu",
               "--dry_run"])
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["model"]["from"] == str(path)
    assert (plan["model"]["n_embd"], plan["model"]["vocab_size"], plan["model"]["conv_kernel"]) == (64, 97, 3)
    assert plan["hardware"] == {"accelerator": "cpu", "devices": "auto", "num_nodes": 1, "processes": 1,
                                "precision": "32-true", "strategy": "auto"}
    out = run([sys.executable, "train.py", "--task", "lm", "--load_model", str(path), "--n_embd", "128",
               "--dry_run"])
    assert out.returncode == 2 and "its keys give n_embd = 64, not 128" in out.stderr


def test_the_sweep_passes_the_token_shift_ablation_to_every_run(tmp_path):
    from conrwkv import cli
    from conrwkv.config import ModelConfig
    from conrwkv.lm import sweep as icl_sweep
    from conrwkv.train.flags import take

    for extra, expected in (([], True), (["--no-token-shift"], False)):
        args = icl_sweep.parse_args(["--out", str(tmp_path), *extra])
        command = icl_sweep.train_command(args, tmp_path / "k1", tmp_path / "run", kernel=2, depth=1,
                                          seed=0)
        assert ("--no-token_shift" in command) == (not expected)
        parsed = cli.build_parser("lm", "train").parse_args(command[3:])
        assert take(ModelConfig, parsed)[0].token_shift is expected


def test_the_sweep_figures_name_the_architecture_and_the_ablation(tmp_path):
    from conrwkv.lm import sweep as icl_sweep

    label = lambda *flags: icl_sweep.sweep_label(icl_sweep.parse_args(["--out", str(tmp_path), *flags]))  # noqa: E731
    assert label() == "RWKV-6"
    assert label("--arch", "x070", "--no-token-shift") == "RWKV-7, no token shift"
    assert label("--arch", "x052") == "RWKV-5.2"
