"""Gradient accumulation (--accumulate_grad_batches): N micro-batches of b train the same weights
as one batch of N x b (token-weighted, data/accumulation.py), a stop inside a window resumes
exactly, every step count counts optimizer steps, and the effective batch is stated."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import torch
from factories import markov_folder, markov_lm_configs
from speech_fixtures import make_librispeech

from conrwkv import cli
from conrwkv.asr import run as run_asr
from conrwkv.asr.tiny_models import make_tiny_encoder, make_tiny_llm
from conrwkv.config import AsrConfig, ModelConfig, TrainConfig
from conrwkv.io import safe_torch_load
from conrwkv.lm.module import LMModule
from conrwkv.lm.run import train_lm


@pytest.fixture(scope="module")
def markov(tmp_path_factory):
    # 96 chains: 6 micro-batches of 16 an epoch.
    return markov_folder(tmp_path_factory, order=1, seq_len=33, n_train=96, n_val=16, seed=5)


def weights(proj, step, name="rwkv"):
    return safe_torch_load(proj / f"{name}-step{step:06d}.pth")


def assert_close(a, b, atol):
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= atol, worst


def test_the_flag_must_be_at_least_one():
    with pytest.raises(ValueError, match="--accumulate_grad_batches must be at least 1, got 0"):
        TrainConfig(accumulate_grad_batches=0)


def test_each_batch_carries_the_target_count_of_its_window_also_after_a_resume(tmp_path):
    import numpy as np

    from conrwkv.data.accumulation import WINDOW_TARGETS, WindowedLoader
    from conrwkv.data.binidx import BinidxReader, write_binidx
    from conrwkv.data.resumable import ShardedBatchSampler
    from conrwkv.data.sampling import DocumentDataset

    rng = np.random.default_rng(0)
    write_binidx(tmp_path / "docs", [rng.integers(0, 2, size=n) for n in rng.integers(2, 40, size=30)], 2)
    data = DocumentDataset(BinidxReader(tmp_path / "docs"), ctx_len=16)

    def loader():
        sampler = ShardedBatchSampler(len(data), 4, shuffle=True, seed=1)
        return WindowedLoader(data, sampler, accumulate=3, targets_of=data.targets)

    batches = list(loader())                       # 7 batches: windows of 3, 3 and 1
    counts = [int(b["mask"].sum()) for b in batches]
    windows = [sum(counts[0:3])] * 3 + [sum(counts[3:6])] * 3 + [counts[6]]
    assert [b[WINDOW_TARGETS] for b in batches] == windows and len(set(counts)) > 1
    resumed = loader()
    resumed.load_state_dict({"epoch": 0, "batches": 3, "batches_per_epoch": 7})
    assert [b[WINDOW_TARGETS] for b in resumed] == windows[3:]


def test_lm_micro_batches_train_the_weights_of_one_big_batch(markov, tmp_path):
    big = markov_lm_configs(markov, tmp_path / "big", micro_bsz=32, max_steps=3)
    train_lm(*big[:1], {}, big[1])
    small = markov_lm_configs(markov, tmp_path / "small", micro_bsz=8, accumulate_grad_batches=4, max_steps=3)
    train_lm(*small[:1], {}, small[1])
    # The summation order (4 micro-batches against one batch) moves the weights by about 1e-6
    # after 3 Adam steps; a window that drops one of its 4 micro-batches moves them by 6e-3.
    assert_close(weights(tmp_path / "small", 3), weights(tmp_path / "big", 3), atol=1e-5)


def stop_inside_a_window(monkeypatch, micro_batches):
    """The next launch stops after `micro_batches` micro-batches (mid-window when not a multiple
    of the accumulation), as if killed there."""
    original, seen = LMModule.training_step, []

    def interrupted(self, batch, batch_idx):
        seen.append(batch_idx)
        if len(seen) >= micro_batches:
            self.trainer.should_stop = True
        return original(self, batch, batch_idx)

    monkeypatch.setattr(LMModule, "training_step", interrupted)
    return lambda: monkeypatch.setattr(LMModule, "training_step", original)


def test_a_stop_inside_an_accumulation_window_resumes_bit_identically(markov, tmp_path, monkeypatch):
    # 6 micro-batches an epoch in windows of 4: steps of 4 and 2 micro-batches, 5 steps cross
    # two epoch ends.
    model, train = markov_lm_configs(markov, tmp_path / "reference", accumulate_grad_batches=4, max_steps=5,
                              save_every=1)
    train_lm(model, {}, train)
    restore = stop_inside_a_window(monkeypatch, 7)        # step 2 done, 1 micro-batch into step 3
    model, train = markov_lm_configs(markov, tmp_path / "resumed", accumulate_grad_batches=4, max_steps=5,
                              save_every=1)
    train_lm(model, {}, train)
    restore()
    # Nothing was saved for the partial window: the relaunch continues from step 2.
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["step1.ckpt",
                                                                                        "step2.ckpt"]
    train_lm(model, {}, train)
    for step in range(1, 6):
        a, b = weights(tmp_path / "resumed", step), weights(tmp_path / "reference", step)
        assert all(torch.equal(a[k], b[k]) for k in a), step


def test_epochs_save_every_and_val_every_count_optimizer_steps(markov, tmp_path, monkeypatch):
    validated, micro_batches = [], []
    original_val, original_step = LMModule.on_validation_epoch_start, LMModule.training_step

    def on_val(self):
        validated.append(self.trainer.global_step)
        return original_val(self)

    def step(self, batch, batch_idx):
        micro_batches.append(batch_idx)
        return original_step(self, batch, batch_idx)

    monkeypatch.setattr(LMModule, "on_validation_epoch_start", on_val)
    monkeypatch.setattr(LMModule, "training_step", step)
    # 6 micro-batches an epoch in windows of 4: 2 optimizer steps an epoch (the second of 2).
    model, train = markov_lm_configs(markov, tmp_path, accumulate_grad_batches=4, epochs=2, save_every=1)
    train_lm(model, {}, train)
    assert len(micro_batches) == 12
    assert sorted(p.name for p in tmp_path.glob("rwkv-step*.pth")) == [
        f"rwkv-step00000{s}.pth" for s in (1, 2, 3, 4)]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["train"]["max_steps"] == 4
    assert run["batch"] == {"micro_bsz": 16, "accumulate_grad_batches": 4, "devices_per_node": 1,
                            "num_nodes": 1, "global_batch": 64, "tokens_per_optimizer_step": 64 * 32,
                            "optimizer_steps_per_epoch": 2}
    assert json.loads((tmp_path / "rwkv-step000004.json").read_text())["batch"] == run["batch"]
    # Windows of 3 fill an epoch exactly: validation after every optimizer step, then the final one.
    validated.clear()
    model, train = markov_lm_configs(markov, tmp_path / "val", accumulate_grad_batches=3, max_steps=4,
                                     val_every=1)
    train_lm(model, {}, train)
    assert validated == [1, 2, 3, 4, 4]


def test_the_dry_run_states_the_effective_batch(markov, capsys):
    argv = ["--task", "lm", "--dry_run", "--data_file", str(markov), "--ctx_len", "32", "--micro_bsz", "8",
            "--accumulate_grad_batches", "3", "--accelerator", "cpu", "--devices", "1"]
    assert cli.main(argv) == 0
    plan = json.loads(capsys.readouterr().out)
    # 96 documents / 8 = 12 micro-batches an epoch, 4 windows of 3.
    assert plan["batch"] == {"micro_bsz": 8, "accumulate_grad_batches": 3, "devices_per_node": 1,
                             "num_nodes": 1, "global_batch": 24, "tokens_per_optimizer_step": 24 * 32,
                             "optimizer_steps_per_epoch": 4}
    assert cli.main([*argv, "--accumulate_grad_batches", "0"]) == 2
    assert "--accumulate_grad_batches must be at least 1" in capsys.readouterr().err


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    root = tmp_path_factory.mktemp("asr")
    return dict(train=str(make_librispeech(root, "train-clean-100")),
                encoder=str(make_tiny_encoder(root / "encoder")),
                llm=str(make_tiny_llm(root / "llm.pth", n_layer=2, n_embd=32)))


def test_asr_micro_batches_train_the_weights_of_one_big_batch(speech, tmp_path):
    """5 utterances of different lengths and transcripts: micro-batches of 2, 2 and 1 in one
    window of 3 against one batch of 5; each optimizer step sees every utterance.

    The state's usual rate (1.0) and Adam's eps 1e-8 would turn the fp32 rounding of a summed
    gradient into weight differences near the rate (Adam's first update is about lr x g / |g|
    wherever g is near 0): moderate rates and eps compare the arithmetic, not that
    sensitivity. Mean-of-means weighting misses this tolerance by orders of magnitude."""
    asr = AsrConfig(encoder=speech["encoder"], projector_hidden=64, lr_state_init=1e-3,
                    lr_state_final=1e-4)
    base = dict(data_file=speech["train"], load_model=speech["llm"], max_steps=2, lr_init=1e-3,
                lr_final=1e-4, warmup_steps=0, adam_eps=1e-4, accelerator="cpu", devices="1", seed=0)
    big = TrainConfig(proj_dir=str(tmp_path / "big"), micro_bsz=5, **base)
    small = TrainConfig(proj_dir=str(tmp_path / "small"), micro_bsz=2, accumulate_grad_batches=3, **base)
    run_asr.train_asr(ModelConfig(), {}, big, asr)
    run_asr.train_asr(ModelConfig(), {}, small, asr)
    assert_close(weights(tmp_path / "small", 2, "asr"), weights(tmp_path / "big", 2, "asr"), atol=1e-6)
    run = json.loads((tmp_path / "small" / "run.json").read_text())
    assert run["batch"]["global_batch"] == 6 and run["batch"]["optimizer_steps_per_epoch"] == 1
    assert run["batch"]["mean_audio_seconds_per_optimizer_step"] > 0


def test_wandb_offline_run_holds_the_config_and_the_loss(markov, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    model, train = markov_lm_configs(markov, tmp_path / "run", max_steps=2, accumulate_grad_batches=2,
                              wandb="conrwkv-test")
    train_lm(model, {}, train)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    run_id = (tmp_path / "run" / "wandb-run-id").read_text().strip()
    assert len(runs) == 1 and runs[0].name.endswith(run_id)
    config, history = wandb_records(runs[0] / f"run-{run_id}.wandb")
    assert config["batch"]["global_batch"] == 32 and config["train"]["accumulate_grad_batches"] == 2
    assert config["model"]["n_embd"] == 32 and config["task"] == "lm"
    losses = [row["train/loss"] for row in history if "train/loss" in row]
    assert len(losses) >= 2 and all(0 < loss < 2 for loss in losses)
    assert any("val/loss" in row for row in history)
    # A resume continues the same wandb run.
    model, train = markov_lm_configs(markov, tmp_path / "run", max_steps=3, accumulate_grad_batches=2,
                              wandb="conrwkv-test")
    train_lm(model, {}, train)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    # offline-run-<time>-<id>; wandb adds -1 to the folder of a run resumed within the same second
    pattern = rf"offline-run-\d{{8}}_\d{{6}}-{re.escape(run_id)}(-\d+)?"
    assert len(runs) == 2 and all(re.fullmatch(pattern, run.name) for run in runs), [r.name for r in runs]


def test_wandb_missing_is_a_clear_error(tmp_path, monkeypatch):
    import importlib.util

    from conrwkv.train import tracking

    real = importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ValueError, match=r"--wandb needs the wandb package: pip install wandb"):
        tracking.wandb_logger("p", tmp_path, {})


def leveldb_log_records(path):
    """The records of a wandb transaction log: a 7-byte header (":W&B", magic, version), then
    LevelDB-log blocks of 32 KiB holding chunks (crc32, length, type: full, first, middle, last)."""
    data, block = Path(path).read_bytes(), 32768
    assert data[:4] == b":W&B"
    position, pending = 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:                 # a block's tail too short for a header
            position += block - position % block
            continue
        length, kind = struct.unpack("<HB", data[position + 4:position + 7])
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):                               # full, last
            yield pending + chunk
            pending = b""
        elif kind in (2, 3):                             # first, middle
            pending += chunk
        else:
            return


def wandb_records(path):
    """The config and the history rows of an offline wandb run's transaction log."""
    from wandb.proto import wandb_internal_pb2

    def key(item):
        return item.key or "/".join(item.nested_key)

    config, history = {}, []
    for data in leveldb_log_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            config.update({key(item): json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            config.update({key(item): json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            history.append({key(item): json.loads(item.value_json) for item in record.history.item})
    return config, history
