"""The ensemble engine of the ICL sweep (lm/ensemble.py): members train to the weights train.py
gives each run alone, a SIGKILL and resume changes no bit, and what it cannot compute is refused."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conrwkv.io import safe_torch_load
from conrwkv.lm import sweep as icl_sweep
from conrwkv.lm.ensemble import GroupSpec, GroupTrainer, check_spec, clip_per_member

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--orders", "1", "2", "--kernels", "2", "--depths", "1", "--steps", "6", "--n-train", "64",
        "--n-val", "16", "--seq-len", "33", "--n-embd", "32", "--micro-bsz", "8", "--accelerator", "cpu",
        "--eval-every", "2"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def weights(run_dir: Path) -> dict:
    (path,) = sorted(run_dir.glob("rwkv-step*.pth"))
    return safe_torch_load(path)


def test_members_train_to_the_weights_train_py_gives_each_run(tmp_path):
    for engine in ("process", "ensemble"):
        assert icl_sweep.main([*TINY, "--seeds", "0", "1", "--parallel", "2", "--engine", engine,
                               "--out", str(tmp_path / engine)]) == 0
    runs = sorted(p.name for p in (tmp_path / "process" / "runs").iterdir())
    assert runs == ["k1-conv2-L1-s0", "k1-conv2-L1-s1", "k2-conv2-L1-s0", "k2-conv2-L1-s1"]
    for name in runs:
        alone, batched = (weights(tmp_path / engine / "runs" / name) for engine in ("process", "ensemble"))
        assert alone.keys() == batched.keys()
        for key in alone:      # the same arithmetic up to float rounding (Adam is elementwise)
            torch.testing.assert_close(batched[key], alone[key], atol=2e-6, rtol=1e-5, msg=f"{name} {key}")
    # the two seeds of one cell differ (a seed that changed nothing would make the spread 0)
    seed0, seed1 = (weights(tmp_path / "ensemble" / "runs" / f"k1-conv2-L1-s{s}") for s in (0, 1))
    assert not torch.equal(seed0["emb.weight"], seed1["emb.weight"])
    sweep = json.loads((tmp_path / "ensemble" / "sweep.json").read_text())
    curve = sweep["runs"][0]["curve"]
    assert [p["step"] for p in curve] == [2, 4, 6] and all("gap" in p for p in curve)
    assert (tmp_path / "ensemble" / "curves.png").stat().st_size > 0
    table = (tmp_path / "ensemble" / "sweep.md").read_text()
    assert " ± " in table and "| seeds |" in table
    logs = sorted((tmp_path / "ensemble" / "groups").rglob("train-*.log"))
    assert icl_sweep.main([*TINY, "--seeds", "0", "1", "--out", str(tmp_path / "ensemble")]) == 0
    assert sorted((tmp_path / "ensemble" / "groups").rglob("train-*.log")) == logs   # nothing repeated
    assert len(json.loads((tmp_path / "ensemble" / "sweep.json").read_text())["runs"]) == 4


def _group(tmp_path: Path) -> GroupSpec:
    args = icl_sweep.parse_args([*TINY, "--seeds", "0", "1", "--out", str(tmp_path)])
    data = {}
    for order in args.orders:
        params = icl_sweep.MarkovDataParams(order=order, beta=1.0, seq_len=33, n_train=64, n_val=16, seed=0)
        data[order] = params.default_folder(tmp_path / "data")
        icl_sweep.write_markov_dataset(data[order], params)
    spec = icl_sweep.group_spec(args, data, kernel=2, depth=1, runs=[(1, 0), (2, 1)])
    return dataclasses.replace(spec, train=dataclasses.replace(spec.train, save_every=2))


def _retarget(spec: GroupSpec, root: Path) -> GroupSpec:
    """The same group with its folders under `root`."""
    members = tuple(dataclasses.replace(m, proj_dir=str(root / Path(m.proj_dir).name)) for m in spec.members)
    return dataclasses.replace(spec, members=members, folder=str(root / "group"))


def test_a_killed_group_resumes_to_bit_identical_weights(tmp_path):
    spec = _group(tmp_path)
    reference = _retarget(spec, tmp_path / "straight")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        GroupTrainer(reference).run(progress=False)
    finally:
        torch.set_num_threads(threads)

    killed = _retarget(spec, tmp_path / "killed")
    Path(killed.folder).mkdir(parents=True)
    spec_file = Path(killed.folder) / "spec.json"
    spec_file.write_text(json.dumps(killed.to_json()))
    command = [sys.executable, "-m", "conrwkv.lm.ensemble", "--spec", str(spec_file), "--no-progress"]
    for checkpoint in ("step2.ckpt", "step4.ckpt"):     # two kills, each right after a save
        proc = subprocess.Popen(command, cwd=ROOT, env=ONE_THREAD, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while not (Path(killed.folder) / "checkpoints" / checkpoint).exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    out = subprocess.run(command, cwd=ROOT, env=ONE_THREAD, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resuming" in out.stderr
    for a, b in zip(reference.members, killed.members):
        straight, resumed = weights(Path(a.proj_dir)), weights(Path(b.proj_dir))
        for key in straight:
            assert torch.equal(straight[key], resumed[key]), key
        records = [json.loads(next(Path(m.proj_dir).glob("rwkv-step*[0-9].json")).read_text())
                   for m in (a, b)]
        assert records[0]["curve"] == records[1]["curve"]

    # the group's folder remembers its settings: another learning rate is refused by name
    changed = dataclasses.replace(killed, train=dataclasses.replace(killed.train, lr_init=1e-2))
    spec_file.write_text(json.dumps(changed.to_json()))
    out = subprocess.run(command, cwd=ROOT, env=ONE_THREAD, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "other settings" in out.stderr and "lr_init" in out.stderr
    assert "Traceback" not in out.stderr


def test_what_the_batched_step_cannot_compute_is_refused_by_name(tmp_path):
    spec = _group(tmp_path)
    for change, words in ((dict(accumulate_grad_batches=2), "accumulate_grad_batches 2"),
                          (dict(weight_decay=0.1), "weight_decay 0.1"),
                          (dict(epochs=3), "epochs 3"),
                          (dict(head_tokens="data"), "head_tokens 'data'")):
        with pytest.raises(ValueError, match=words):
            check_spec(dataclasses.replace(spec, train=dataclasses.replace(spec.train, **change)))
    with pytest.raises(ValueError, match="wkv_backend"):
        check_spec(dataclasses.replace(spec, model=dataclasses.replace(spec.model, wkv_backend="cuda")))
    with pytest.raises(ValueError, match="bf16-mixed off a GPU"):
        check_spec(dataclasses.replace(spec, precision="bf16-mixed"))
    twice = spec.members[0]
    with pytest.raises(ValueError, match="share a proj_dir"):
        check_spec(dataclasses.replace(spec, members=(twice, twice)))


def test_the_clip_is_each_members_own():
    torch.manual_seed(0)
    grads = [torch.randn(3, 4, 5), 0.1 * torch.randn(3, 7)]
    grads[0][1] *= 1e-3                                   # member 1's norm is below the clip
    alone = []
    for m in range(3):
        params = [torch.nn.Parameter(torch.zeros_like(g[m])) for g in grads]
        for p, g in zip(params, grads):
            p.grad = g[m].clone()
        alone.append((torch.nn.utils.clip_grad_norm_(params, 1.0), [p.grad for p in params]))
    norms = clip_per_member(grads, max_norm=1.0)
    for m, (norm, clipped) in enumerate(alone):
        torch.testing.assert_close(norms[m], norm)
        for g, expected in zip(grads, clipped):
            torch.testing.assert_close(g[m], expected)
    assert norms[1] < 1.0 < norms[0]


def test_the_table_gives_the_mean_and_spread_over_seeds():
    reference = {"bayes": 0.5, "lower_order": {"order_0": 0.6}}
    rows = [{"depth": 1, "order": 1, "kernel": 2, "seed": s, "gap": g, **reference}
            for s, g in ((0, 0.01), (1, 0.03), (2, 0.02))]
    table = icl_sweep.make_table(rows, [0, 2])
    assert "| 1 | 1 |  | +0.0200 ± 0.0100 | 3 | 0.5000 | +0.1000 |" in table


def test_a_terminated_sweep_stops_its_training_processes(tmp_path):
    """Left running, they would hold their groups' locks and fail the next sweep's launches."""
    args = [arg if arg != "6" else "100000" for arg in TINY]      # --steps: far more than it gets to
    sweep = subprocess.Popen([sys.executable, "-m", "conrwkv.lm.sweep", *args, "--out", str(tmp_path)],
                             cwd=ROOT, env=ONE_THREAD, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    group_logs = tmp_path / "groups"
    deadline = time.time() + 120
    while not any(group_logs.rglob("checkpoints")) and not list(group_logs.rglob("train-*.log")):
        assert sweep.poll() is None and time.time() < deadline
        time.sleep(0.1)
    time.sleep(2)                       # the group process is training now
    children = subprocess.run(["pgrep", "-P", str(sweep.pid)], capture_output=True, text=True).stdout.split()
    assert children
    sweep.send_signal(signal.SIGTERM)
    assert sweep.wait(timeout=60) == 128 + signal.SIGTERM
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_adam_state_put_back_in_place_is_the_saved_one_or_a_fresh_one():
    """What the CUDA-graph step relies on after its warm-up steps (ensemble._CapturedStep)."""
    from conrwkv.lm.ensemble import _load_optimizer_in_place

    params = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5))]
    optimizer = torch.optim.Adam(params, lr=0.1)

    def train(steps):
        for _ in range(steps):
            optimizer.zero_grad()
            sum((p ** 2).sum() for p in params).backward()
            optimizer.step()

    fresh = copy.deepcopy(optimizer.state_dict())          # no state yet
    train(2)
    tensors = [optimizer.state[p]["exp_avg"] for p in params]
    _load_optimizer_in_place(optimizer, fresh)
    for p, tensor in zip(params, tensors):
        assert optimizer.state[p]["exp_avg"] is tensor                     # the same tensors
        assert all(not v.any() for v in optimizer.state[p].values() if isinstance(v, torch.Tensor))
    saved = copy.deepcopy(optimizer.state_dict())
    train(3)
    _load_optimizer_in_place(optimizer, saved)
    for i, p in enumerate(params):
        for key, value in saved["state"][i].items():
            assert torch.equal(optimizer.state[p][key], value), key


@pytest.mark.cuda
def test_the_captured_step_trains_as_the_eager_one(tmp_path):
    spec = dataclasses.replace(_group(tmp_path), device="cuda", precision="32-true", eval_every=0)
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, save_every=0))
    finals = {}
    for graphs in (False, True):
        run = dataclasses.replace(_retarget(spec, tmp_path / f"graphs-{graphs}"), cuda_graphs=graphs)
        trainer = GroupTrainer(run)
        losses = [trainer.train_step() for _ in range(6)]
        finals[graphs] = ({n: p.detach().clone() for n, p in trainer.ensemble.params.items()},
                          torch.stack(losses))
    (eager, eager_losses), (captured, captured_losses) = finals[False], finals[True]
    torch.testing.assert_close(captured_losses, eager_losses, atol=1e-5, rtol=1e-4)
    for name in eager:
        torch.testing.assert_close(captured[name], eager[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("extra", [["--arch", "x070"], ["--no-token-shift"]], ids=["x070", "no-shift"])
def test_rwkv7_and_the_shift_ablation_train_as_train_py_would(tmp_path, extra):
    small = [*TINY[:TINY.index("--orders")], "--orders", "2", *TINY[TINY.index("--kernels"):]]
    small[small.index("--steps") + 1] = "3"
    for engine in ("process", "ensemble"):
        assert icl_sweep.main([*small, *extra, "--engine", engine, "--out", str(tmp_path / engine)]) == 0
    alone, batched = (weights(tmp_path / engine / "runs" / "k2-conv2-L1-s0")
                      for engine in ("process", "ensemble"))
    for key in alone:
        torch.testing.assert_close(batched[key], alone[key], atol=2e-6, rtol=1e-5, msg=key)
    (spec,) = [json.loads(p.read_text()) for p in (tmp_path / "ensemble" / "groups").rglob("spec.json")]
    model = spec["model"]
    assert (model["arch"], model["token_shift"]) == (("x070", True) if "--arch" in extra else ("x060", False))
