"""Parity of x070 with the outside world: the `rwkv` package's RWKV_x070 runs the same files.

Random official-format RWKV-7 checkpoints (odd sizes, every norm and LoRA non-trivial, with and
without a trained time_state) are written by the test and loaded by `RWKV.from_checkpoint` and
by `rwkv.model.RWKV_x070(path without .pth, "cpu fp32")`. The package defines RWKV_x070 only
when RWKV_V7_ON=1 is set before `rwkv.model` is imported, and that switch also changes how the
module builds its RWKV-4/5/6 class, which test_parity_rwkv_package.py imports without it: so the
package runs in a subprocess, which writes its logits and states to a file.
"""

import os
import subprocess
import sys

import pytest
import torch
from factories import random_checkpoint

from conrwkv.model import RWKV

pytest.importorskip("rwkv")
pytestmark = pytest.mark.usefixtures("single_torch_thread")

# Run by the subprocess: argv = checkpoint path without .pth, prompt file, output file.
PACKAGE_RUN = r"""
import os, sys
os.environ["RWKV_V7_ON"] = "1"
import torch
torch.set_num_threads(1)
from rwkv.model import RWKV_x070

path, prompt_file, out_file = sys.argv[1:]
prompt, time_state = torch.load(prompt_file)
model = RWKV_x070(path, "cpu fp32")

def start():
    state = model.generate_zero_state()
    if time_state is not None:       # the package keeps each layer's WKV state [H, value, key]
        for i in range(model.n_layer):
            state[3 * i + 1] = time_state[i].float().clone()
    return state

seq_logits, seq_state = model.forward(prompt, start(), full_output=True)
state, rnn_logits = start(), []
for token in prompt:
    logits, state = model.forward([token], state)
    rnn_logits.append(logits.clone())
torch.save({"seq_logits": seq_logits, "seq_state": [t.clone() for t in seq_state],
            "rnn_logits": torch.stack(rnn_logits), "rnn_state": state}, out_file)
"""


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def run_package(tmp_path, checkpoint, prompt, time_state):
    torch.save((prompt, time_state), tmp_path / "prompt.pt")
    env = {k: v for k, v in os.environ.items() if k not in ("RWKV_CUDA_ON", "RWKV_JIT_ON")}
    done = subprocess.run([sys.executable, "-c", PACKAGE_RUN, str(checkpoint.with_suffix("")),
                           str(tmp_path / "prompt.pt"), str(tmp_path / "package.pt")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(tmp_path / "package.pt")


@pytest.mark.parametrize("state_tuning", [False, True], ids=["plain", "time_state"])
@pytest.mark.parametrize("n_embd,head_size", [(96, 32), (80, 16)])
def test_logits_and_states_match_the_package(tmp_path, state_tuning, n_embd, head_size):
    path, _ = random_checkpoint(tmp_path / "model.pth", seed=5, arch="x070", n_layer=3,
                                n_embd=n_embd, head_size=head_size, state_tuning=state_tuning,
                                w_rank=24, a_rank=16, v_rank=8, g_rank=40)
    ours = RWKV.from_checkpoint(path).eval()
    cfg = ours.config
    assert (cfg.arch, cfg.head_size, cfg.state_tuning) == ("x070", head_size, state_tuning)
    assert (cfg.w_rank, cfg.a_rank, cfg.v_rank, cfg.g_rank, cfg.dim_ffn) == (24, 16, 8, 40, 4 * n_embd)
    prompt = torch.randint(0, 97, (13,))
    time_state = ([b.att.time_state.detach().clone() for b in ours.blocks] if state_tuning else None)
    package = run_package(tmp_path, path, prompt.tolist(), time_state)

    with torch.no_grad():
        logits, state = ours(prompt[None])
        assert rel(logits[0], package["seq_logits"]) < 1e-4
        for i, layer in enumerate(state):
            assert rel(layer.att_shift[0], package["seq_state"][3 * i]) < 1e-4
            assert rel(layer.wkv[0].transpose(-1, -2), package["seq_state"][3 * i + 1]) < 1e-4
            assert rel(layer.ffn_shift[0], package["seq_state"][3 * i + 2]) < 1e-4

        step_state, steps = None, []
        for t in range(prompt.shape[0]):
            step_logits, step_state = ours(prompt[None, t:t + 1], step_state)
            steps.append(step_logits[0, 0])
        for t, (mine, theirs) in enumerate(zip(steps, package["rnn_logits"])):
            assert rel(mine, theirs) < 1e-4, f"step {t}"
        for i, layer in enumerate(step_state):
            assert rel(layer.wkv[0].transpose(-1, -2), package["rnn_state"][3 * i + 1]) < 1e-4
