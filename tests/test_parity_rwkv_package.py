"""Parity with the outside world: the `rwkv` PyPI package runs the same official-format files.

Random official checkpoints (RWKV-6 and RWKV-5.2, with and without a trained time_state) are
written by the test, loaded by `rwkv.model.RWKV(path, strategy="cpu fp32")` and by
`RWKV.from_checkpoint`, and must give the same logits in sequence and RNN mode and the same
recurrent state after the prompt.
"""

import pytest
import torch
from factories import random_checkpoint

from conrwkv.model import RWKV

rwkv_model = pytest.importorskip("rwkv.model")


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture(params=[("x060", False), ("x060", True), ("x052", False), ("x052", True)],
                ids=["x060", "x060-time_state", "x052", "x052-time_state"])
def pair(request, tmp_path):
    arch, state_tuning = request.param
    path, _ = random_checkpoint(tmp_path / "model.pth", seed=3, arch=arch, state_tuning=state_tuning)
    ours = RWKV.from_checkpoint(path).eval()
    assert ours.config.arch == arch and ours.config.state_tuning == state_tuning
    reference = rwkv_model.RWKV(str(path), strategy="cpu fp32", verbose=False)
    return ours, reference


def test_sequence_mode_logits_and_states(pair):
    ours, reference = pair
    prompts = torch.randint(1, 97, (2, 19))
    with torch.no_grad():
        logits, state = ours(prompts)
    for b in range(2):
        ref_logits, ref_state = reference.forward(prompts[b].tolist(), None, full_output=True)
        assert rel(logits[b], ref_logits) < 1e-4
        for i, layer in enumerate(state):
            assert rel(layer.att_shift[b], ref_state[3 * i]) < 1e-4
            assert rel(layer.wkv[b], ref_state[3 * i + 1]) < 1e-4
            assert rel(layer.ffn_shift[b], ref_state[3 * i + 2]) < 1e-4


def test_rnn_mode_logits_token_by_token(pair):
    ours, reference = pair
    tokens = torch.randint(1, 97, (1, 12))
    state, ref_state = None, None
    with torch.no_grad():
        for t in range(tokens.shape[1]):
            logits, state = ours(tokens[:, t:t + 1], state)
            ref_logits, ref_state = reference.forward([int(tokens[0, t])], ref_state)
            assert rel(logits[0, 0], ref_logits) < 1e-4, f"step {t}"
    for i, layer in enumerate(state):
        assert rel(layer.wkv[0], ref_state[3 * i + 1]) < 1e-4
