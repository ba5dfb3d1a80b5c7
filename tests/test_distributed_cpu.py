"""Distributed training on the CPU: two processes (DDP over gloo) read disjoint data, write each
checkpoint once, and leave files that load. The multi-GPU run itself needs GPUs (issue 8)."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conrwkv.config import TrainConfig
from conrwkv.data.markov import MarkovDataParams, write_markov_dataset
from conrwkv.model import RWKV6
from conrwkv.train.lm_data import LMDataModule

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def markov_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "k1"
    write_markov_dataset(out, MarkovDataParams(order=1, seq_len=33, n_train=203, n_val=21, seed=4),
                         progress=False)
    return out


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
    RWKV6.from_checkpoint(tmp_path / "run" / "rwkv-step000006.pth")    # a plain official .pth
