"""What a relaunch into an output folder may and may not do: changed settings are refused, a
damaged newest checkpoint is passed over, a diverged run stops before saving, a killed launch's
temporary files are cleaned up, two launches never share a folder, and the random states and
the data position continue exactly (in-process; test_kill_resume.py does it with SIGKILL)."""

from __future__ import annotations

import logging
import os
import struct

import numpy as np
import pytest
import torch
from factories import markov_folder, markov_lm_configs

from conrwkv.data.binidx import MAGIC
from conrwkv.data.resumable import ResumableLoader, ShardedBatchSampler
from conrwkv.io import safe_torch_load
from conrwkv.lm.module import LMModule
from conrwkv.lm.run import train_lm
from conrwkv.train.resume import ProjDirLock


@pytest.fixture(scope="module")
def markov(tmp_path_factory):
    # 96 chains in batches of 16: 6 steps an epoch.
    return markov_folder(tmp_path_factory, order=1, seq_len=33, n_train=96, n_val=16, seed=5)


def configs(markov, proj, **train):
    return markov_lm_configs(markov, proj, **{"max_steps": 10, "save_every": 2, **train})


def stop_after(monkeypatch, step):
    """Make the next training launch stop after `step` steps, as if it had been killed there."""
    original = LMModule.training_step

    def interrupted(self, batch, batch_idx):
        if self.trainer.global_step >= step - 1:
            self.trainer.should_stop = True
        return original(self, batch, batch_idx)

    monkeypatch.setattr(LMModule, "training_step", interrupted)
    return lambda: monkeypatch.setattr(LMModule, "training_step", original)


def final_weights(proj, step=10):
    return safe_torch_load(proj / f"rwkv-step{step:06d}.pth")


def assert_same(a, b):
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(markov, tmp_path_factory):
    proj = tmp_path_factory.mktemp("reference")
    model, train = configs(markov, proj)
    train_lm(model, {}, train)
    return final_weights(proj)


def test_a_resume_with_other_settings_is_refused_with_every_difference(markov, tmp_path, monkeypatch):
    restore = stop_after(monkeypatch, 4)
    model, train = configs(markov, tmp_path)
    train_lm(model, {}, train)
    restore()
    other_model, other_train = configs(markov, tmp_path, lr_init=1e-3, seed=9)
    other_model.n_embd = 64
    with pytest.raises(ValueError) as err:
        train_lm(other_model, {}, other_train)
    message = str(err.value)
    for expected in ("train.lr_init: 0.003 then, 0.001 now", "train.seed: 0 then, 9 now",
                     "model.n_embd: 32 then, 64 now", "choose a new --proj_dir"):
        assert expected in message
    # What a resume may change: more steps, other saving and logging intervals.
    model, train = configs(markov, tmp_path, max_steps=12, save_every=3, log_every=5)
    train_lm(model, {}, train)
    assert (tmp_path / "rwkv-step000012.pth").is_file()


def test_settings_added_after_a_run_began_do_not_stop_its_resume_at_their_default(markov, tmp_path,
                                                                                   monkeypatch):
    import json

    restore = stop_after(monkeypatch, 4)
    model, train = configs(markov, tmp_path)
    train_lm(model, {}, train)
    restore()
    run = json.loads((tmp_path / "run.json").read_text())
    del run["train"]["grad_clip"], run["model"]["state_tuning"]   # as if written before they existed
    (tmp_path / "run.json").write_text(json.dumps(run))
    model, other = configs(markov, tmp_path, grad_clip=0.5)
    with pytest.raises(ValueError, match="train.grad_clip: None then, 0.5 now"):
        train_lm(model, {}, other)                      # not the default: a difference
    model, train = configs(markov, tmp_path)
    train_lm(model, {}, train)                          # at their defaults: the run goes on
    assert (tmp_path / "rwkv-step000010.pth").is_file()


def test_a_folder_from_an_older_version_is_refused(markov, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step4.ckpt").write_bytes(b"old")
    model, train = configs(markov, tmp_path)
    with pytest.raises(ValueError, match="older version of this project"):
        train_lm(model, {}, train)


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(markov, tmp_path, monkeypatch,
                                                                       reference, caplog):
    restore = stop_after(monkeypatch, 6)
    model, train = configs(markov, tmp_path)
    train_lm(model, {}, train)
    restore()
    newest = tmp_path / "checkpoints" / "step6.ckpt"
    newest.write_bytes(newest.read_bytes()[:5000])                 # truncated
    with caplog.at_level(logging.WARNING):
        train_lm(model, {}, train)
    assert "step6.ckpt is not a readable checkpoint" in caplog.text
    assert "resuming from" in caplog.text and "step4.ckpt instead" in caplog.text
    assert_same(final_weights(tmp_path), reference)
    # The damaged file is kept for inspection, and step 6 was saved again.
    assert (tmp_path / "checkpoints" / "step6.ckpt.damaged").is_file()
    assert safe_torch_load(tmp_path / "rwkv-step000006.pth")
    torch.load(newest, weights_only=True)


def test_a_non_finite_loss_stops_the_run_before_it_saves(markov, tmp_path, monkeypatch):
    original = LMModule.training_step

    def diverging(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.trainer.global_step >= 4 else loss

    monkeypatch.setattr(LMModule, "training_step", diverging)
    model, train = configs(markov, tmp_path, log_every=3)
    with pytest.raises(ValueError, match="NaN or infinite at step 5"):
        train_lm(model, {}, train)
    saved = sorted(p.name for p in tmp_path.glob("rwkv-step*.pth"))
    assert saved == ["rwkv-step000002.pth", "rwkv-step000004.pth"]
    assert all(torch.isfinite(t).all() for t in final_weights(tmp_path, 4).values())
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step2.ckpt", "step4.ckpt"]


def test_temporary_files_of_a_killed_launch_are_removed_and_folders_are_not_shared(markov, tmp_path):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "checkpoints").mkdir()
    leftovers = [tmp_path / ".rwkv-step000002.pth.x1y2.tmp", tmp_path / "checkpoints" / ".step2.ckpt.ab.tmp"]
    for path in leftovers:
        path.write_bytes(b"partial")
    (tmp_path / "checkpoints" / ".step4.ckpt.tmp").mkdir()         # a DeepSpeed staging folder
    (tmp_path / "notes.tmp").write_text("the user's, not ours")
    model, train = configs(markov, tmp_path)
    lock = ProjDirLock(tmp_path)
    lock.acquire()
    try:
        with pytest.raises(ValueError, match=f"in use by another training launch \\(pid {os.getpid()}\\)"):
            train_lm(model, {}, train)
    finally:
        lock.release()
    assert all(p.exists() for p in leftovers)                        # untouched while locked
    train_lm(model, {}, train)
    assert not any(p.exists() for p in leftovers)
    assert not (tmp_path / "checkpoints" / ".step4.ckpt.tmp").exists()
    assert (tmp_path / "notes.tmp").read_text() == "the user's, not ours"


def test_random_states_continue_across_a_resume(markov, tmp_path, monkeypatch):
    """A training step that draws random numbers (dropout would) gives the same weights after a
    stop and a resume as without one."""
    original = LMModule.training_step

    def noisy(self, batch, batch_idx):
        scale = 1 + torch.rand(()) + float(np.random.rand())
        return original(self, batch, batch_idx) * scale

    monkeypatch.setattr(LMModule, "training_step", noisy)
    model, train = configs(markov, tmp_path / "uninterrupted")
    train_lm(model, {}, train)
    restore = stop_after(monkeypatch, 3)                             # wraps the noisy step
    model, train = configs(markov, tmp_path / "resumed")
    train_lm(model, {}, train)
    restore()
    train_lm(model, {}, train)
    assert_same(final_weights(tmp_path / "resumed"), final_weights(tmp_path / "uninterrupted"))


@pytest.mark.parametrize("stop", [3, 6, 7])
def test_a_stop_mid_epoch_or_at_its_end_resumes_the_data_exactly(markov, tmp_path, monkeypatch,
                                                                  reference, stop):
    restore = stop_after(monkeypatch, stop)
    model, train = configs(markov, tmp_path, save_every=1)
    train_lm(model, {}, train)
    restore()
    train_lm(model, {}, train)
    assert_same(final_weights(tmp_path), reference)


def write_int8_binidx(prefix, tokens):
    """One document of int8 tokens (a dtype the layout allows, write_binidx never picks)."""
    (prefix.parent / f"{prefix.name}.bin").write_bytes(tokens.tobytes())
    header = struct.pack("<9sQBQQ", MAGIC, 1, 2, 1, 2)          # dtype code 2: int8
    index = (np.array([len(tokens)], np.int32).tobytes() + np.zeros(1, np.int64).tobytes()
             + np.arange(2, dtype=np.int64).tobytes())
    (prefix.parent / f"{prefix.name}.idx").write_bytes(header + index)


def test_data_that_cannot_be_trained_on_correctly_is_refused_before_training(markov, tmp_path):
    model, _ = configs(markov, tmp_path)
    with pytest.raises(ValueError, match="--data_type windows on the datanew.py folder"):
        train_lm(model, {}, configs(markov, tmp_path, data_type="windows")[1])
    with pytest.raises(ValueError, match="--ctx_len 64 is longer than every document .* set --ctx_len 32"):
        train_lm(model, {}, configs(markov, tmp_path, ctx_len=64)[1])
    write_int8_binidx(tmp_path / "neg", np.array([0, 1, -1, 1] * 50, dtype=np.int8))
    with pytest.raises(ValueError, match="neg.bin holds the negative token id -1"):
        train_lm(model, {}, configs(markov, tmp_path, data_file=str(tmp_path / "neg"),
                                    data_type="windows")[1])
    assert not list(tmp_path.glob("rwkv-step*"))


def test_sharded_batches_never_repeat_and_resume_at_a_batch():
    samplers = [ShardedBatchSampler(103, 4, shuffle=False, num_replicas=3, rank=r) for r in range(3)]
    shards = [[i for b in s for i in b] for s in samplers]
    seen = [i for shard in shards for i in shard]
    assert len(seen) == len(set(seen)) == 96                         # 103 // 12 * 12: no repeats
    assert {len(s) for s in samplers} == {8}
    shuffled = ShardedBatchSampler(50, 5, shuffle=True, seed=1)
    shuffled.set_epoch(2)
    epoch2 = list(shuffled)
    shuffled.resume_at(2, 4)
    assert list(shuffled) == epoch2[4:]
    assert list(shuffled) == epoch2                                  # a resume applies once
    shuffled.resume_at(1, 4)
    assert list(shuffled) == epoch2                                  # and only to its own epoch


def test_the_loader_counts_batches_handed_out_not_prefetched():
    data = [{"x": torch.tensor(i)} for i in range(40)]
    loader = ResumableLoader(data, ShardedBatchSampler(40, 4, shuffle=True, seed=0), num_workers=1,
                             prefetch_factor=4)
    iterator = iter(loader)
    first = [next(iterator)["x"].tolist() for _ in range(3)]
    state = loader.state_dict()
    assert state == {"epoch": 0, "batches": 3, "batches_per_epoch": 10}
    rest = [b["x"].tolist() for b in iterator]
    again = ResumableLoader(data, ShardedBatchSampler(40, 4, shuffle=True, seed=0))
    again.load_state_dict(state)
    assert [b["x"].tolist() for b in again] == rest and len(first + rest) == 10
    with pytest.raises(ValueError, match="had 10 batches per process, the data now gives 5"):
        ResumableLoader(data, ShardedBatchSampler(40, 8, shuffle=True)).load_state_dict(state)


@pytest.mark.parametrize("shards", [["mp_rank_00_model_states.pt"],                     # ZeRO 1, 2
                                    ["zero_pp_rank_0_mp_rank_00_model_states.pt",        # ZeRO 3
                                     "zero_pp_rank_1_mp_rank_00_model_states.pt"]])
def test_deepspeed_checkpoint_folders_of_every_stage_are_resumable_and_empty_ones_are_not(tmp_path, shards):
    from conrwkv.train.checkpoint import check_resume_checkpoint

    folder = tmp_path / "step10.ckpt"
    (folder / "checkpoint").mkdir(parents=True)
    with pytest.raises(ValueError, match="step10.ckpt has no complete"):
        check_resume_checkpoint(folder)
    for name in shards:
        (folder / "checkpoint" / name).write_bytes(b"")
    with pytest.raises(ValueError, match="step10.ckpt has no complete"):
        check_resume_checkpoint(folder)                 # a shard cut off at zero bytes
    for name in shards:
        (folder / "checkpoint" / name).write_bytes(b"x" * 8)
    check_resume_checkpoint(folder)
