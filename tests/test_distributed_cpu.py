"""Distributed training on the CPU: two processes (DDP over gloo) read disjoint data, write each
checkpoint once, and leave files that load. The multi-GPU run itself needs GPUs (issue 8)."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from factories import markov_folder

from conrwkv.config import TrainConfig
from conrwkv.lm.data import LMDataModule
from conrwkv.model import RWKV

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def markov_dir(tmp_path_factory):
    return markov_folder(tmp_path_factory, order=1, seq_len=33, n_train=203, n_val=21, seed=4)


def shard_indices(markov_dir, replicas, rank, epoch=0, split="train"):
    data = LMDataModule(TrainConfig(data_file=str(markov_dir), ctx_len=32, micro_bsz=4, seed=3), 2)
    data.setup()
    data.trainer = SimpleNamespace(world_size=replicas, global_rank=rank)
    loader = data.train_dataloader() if split == "train" else data.val_dataloader()
    (loader.batch_sampler if split == "train" else loader.sampler).set_epoch(epoch)
    return [int(i) for batch in loader for i in batch["index"]]


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_ranks_read_disjoint_documents_that_cover_the_data(markov_dir, replicas):
    shards = [shard_indices(markov_dir, replicas, r) for r in range(replicas)]
    seen = [i for shard in shards for i in shard]
    assert len(seen) == len(set(seen))                          # no document on two ranks
    assert len({len(s) for s in shards}) == 1                   # the same number of steps
    per_rank = 203 // replicas // 4 * 4                          # whole batches of 4
    assert len(seen) == per_rank * replicas
    assert shard_indices(markov_dir, replicas, 0, epoch=1) != shards[0]   # reshuffled per epoch


def test_validation_shards_cover_every_document(markov_dir):
    shards = [shard_indices(markov_dir, 2, r, split="val") for r in range(2)]
    assert set(shards[0]) | set(shards[1]) == set(range(21))


def run(cmd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_ddp_with_two_cpu_processes_trains_and_checkpoints_once(markov_dir, tmp_path):
    out = run([sys.executable, "train.py", "--task", "lm", "--data_file", str(markov_dir),
               "--vocab_size", "2", "--n_layer", "1", "--n_embd", "32", "--head_size", "16",
               "--ctx_len", "32", "--micro_bsz", "4", "--max_steps", "6", "--save_every", "3",
               "--strategy", "ddp", "--devices", "2", "--accelerator", "cpu",
               "--proj_dir", str(tmp_path / "run")])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "distributed_backend=gloo" in out.stderr and "All distributed processes registered" in out.stderr
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert [n for n in names if n.endswith(".pth")] == ["rwkv-step000003.pth", "rwkv-step000006.pth"]
    resumable = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert resumable == ["step3.ckpt", "step6.ckpt"]
    assert len(list((tmp_path / "run" / "logs").iterdir())) == 1      # logged by rank 0 only
    RWKV.from_checkpoint(tmp_path / "run" / "rwkv-step000006.pth")    # a plain official .pth


def test_ddp_asr_with_a_rank_whose_batch_is_all_bad_audio_does_not_hang(tmp_path):
    """A rank whose every file of a batch fails to decode still takes part in the step (a zero
    loss in the graph); returning None there left the other rank waiting in the all-reduce."""
    from speech_fixtures import make_librispeech

    from conrwkv.asr.tiny_models import make_tiny_encoder, make_tiny_llm
    from conrwkv.data.speech import LengthBucketBatchSampler, load_corpus

    corpus = make_librispeech(tmp_path, "train-clean-100")
    bad = {"19-198-0001", "26-495-0001"}
    for name in bad:
        path = next(corpus.rglob(f"{name}.flac"))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    utterances = load_corpus(corpus)
    ids = [u.id for u in utterances]
    durations = [u.duration for u in utterances]
    samplers = [LengthBucketBatchSampler(durations, 2, seed=0, num_replicas=2, rank=r) for r in range(2)]
    lopsided = []
    for epoch in range(4):
        for sampler in samplers:
            sampler.set_epoch(epoch)
        for a, b in zip(*samplers):
            all_bad = [all(ids[i] in bad for i in batch) for batch in (a, b)]
            lopsided.append(all_bad[0] != all_bad[1])
    assert any(lopsided[:8])                                      # the case happens in 8 steps
    out = run([sys.executable, "train.py", "--task", "asr", "--data_file", str(corpus),
               "--load_model", str(make_tiny_llm(tmp_path / "llm.pth", n_layer=1, n_embd=32)),
               "--encoder", str(make_tiny_encoder(tmp_path / "encoder")), "--projector_hidden", "32",
               "--skip_bad_audio", "--micro_bsz", "2", "--max_steps", "8", "--seed", "0",
               "--strategy", "ddp", "--devices", "2", "--accelerator", "cpu",
               "--proj_dir", str(tmp_path / "run")])
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "run" / "asr-step000008.pth").is_file()
