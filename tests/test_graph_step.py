"""RNNStepper (conrwkv.model.graph_step): RNN-mode decoding from fixed buffers, replayed from a
CUDA graph on a GPU.

CPU tests run the same buffer logic without a graph against the model's own forward: the initial
state equals state=None, steps carry the state, greedy generation picks each step's argmax, a
loaded state (after a prefill) continues exactly. GPU tests (marked `cuda`) check that the graph
replay gives the eager step's logits and tokens.
"""

import pytest
import torch
from factories import randomize_, tiny_config

from conrwkv.model import RWKV6, RNNStepper, initial_state


def tiny_model(**overrides):
    return randomize_(RWKV6(tiny_config(**overrides)), seed=1).eval()


@pytest.mark.parametrize("options", [{}, {"conv_kernel": 3, "state_tuning": True}],
                         ids=["plain", "conv-state"])
def test_initial_state_equals_none(options):
    model = tiny_model(**options)
    ids = torch.randint(0, 97, (3, 5))
    with torch.no_grad():
        expected, _ = model(ids)
        got, _ = model(ids, initial_state(model, 3))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options", [{}, {"conv_kernel": 3, "state_tuning": True}],
                         ids=["plain", "conv-state"])
def test_steps_match_forward(options):
    model = tiny_model(**options)
    ids = torch.randint(0, 97, (2, 6))
    with torch.no_grad():
        expected, expected_state = model(ids)
    stepper = RNNStepper(model, batch_size=2)
    assert stepper.graph is None                       # CPU: no graph
    for t in range(6):
        logits = stepper.step(ids[:, t]).clone()
        torch.testing.assert_close(logits, expected[:, t].float(), rtol=1e-4, atol=1e-4)
    state = stepper.current_state()
    for ours, ref in zip(state, expected_state):
        torch.testing.assert_close(ours.wkv, ref.wkv, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ours.att_shift, ref.att_shift)


def test_greedy_and_reset_from_prefill():
    model = tiny_model()
    prompt = torch.randint(0, 97, (2, 4))
    with torch.no_grad():
        logits, state = model(prompt)
    first = logits[:, -1].argmax(-1)
    stepper = RNNStepper(model, batch_size=2)
    stepper.reset(state)
    generated = stepper.greedy(first, 5)
    # The reference: feed the whole sequence so far through the model each time.
    seq = torch.cat([prompt, first[:, None]], dim=1)
    with torch.no_grad():
        for i in range(5):
            nxt = model(seq)[0][:, -1].argmax(-1)
            assert torch.equal(generated[:, i], nxt)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
    # reset() brings back the initial state: the first step then equals a fresh forward.
    stepper.reset()
    with torch.no_grad():
        torch.testing.assert_close(stepper.step(prompt[:, 0]), model(prompt[:, :1])[0][:, -1].float(),
                                   rtol=1e-4, atol=1e-4)


def test_errors():
    model = tiny_model()
    stepper = RNNStepper(model, batch_size=2)
    with pytest.raises(ValueError, match="shape"):
        stepper.step(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="batch size"):
        stepper.reset(initial_state(model, 3))
    with pytest.raises(ValueError, match="CUDA"):
        RNNStepper(model, batch_size=1, use_graph=True)


def test_compile_blocks_matches_eager():
    model = tiny_model()
    ids = torch.randint(0, 97, (2, 7))
    expected = model(ids)[0]
    torch._dynamo.reset()
    model.compile_blocks(backend="eager")
    assert all(getattr(block, "_compiled_call_impl", None) is not None for block in model.blocks)
    torch.testing.assert_close(model(ids)[0], expected)


@pytest.mark.cuda
@pytest.mark.parametrize("batch", [1, 5])
def test_graph_replay_equals_eager_cuda(batch):
    torch.manual_seed(0)
    model = randomize_(RWKV6(tiny_config(head_size=64, n_embd=128)), seed=2).cuda().bfloat16().eval()
    prompt = torch.randint(0, 97, (batch, 9), device="cuda")
    with torch.no_grad():
        logits, state = model(prompt)
    first = logits[:, -1].argmax(-1)
    eager = RNNStepper(model, batch, use_graph=False)
    graph = RNNStepper(model, batch)
    assert graph.graph is not None
    for stepper in (eager, graph):
        stepper.reset(state)
    # Same kernels on the same inputs: equal up to the order of any atomics (none are expected).
    torch.testing.assert_close(graph.step(first).clone(), eager.step(first).clone(), rtol=1e-3, atol=1e-3)
    assert torch.equal(graph.greedy(first, 12), eager.greedy(first, 12))


def test_greedy_decode_on_a_stepper_equals_the_eager_loop(tmp_path):
    """The fixed-batch stepper loop of greedy_decode (finished rows keep stepping, ignored) gives
    the hypotheses of the loop that drops finished rows, with early ends and length limits."""
    from asr_factories import random_audio, tiny_speech_rwkv

    from conrwkv.asr import greedy_decode

    model = tiny_speech_rwkv(tmp_path).eval()
    with torch.no_grad():
        model.llm.head.weight[0] = model.llm.head.weight[14] * 1.05     # some utterances end early
        for block in model.llm.blocks:
            block.att.time_state.normal_(0.0, 0.5)
    audio = random_audio([1.0, 1.7, 0.6, 1.3, 0.9], seed=11)
    eager = greedy_decode(model, audio, stepper=False)
    assert len({len(h) for h in eager}) > 1                    # the rows end at different steps
    assert greedy_decode(model, audio, stepper=True) == eager
    assert greedy_decode(model, audio, max_tokens=3, stepper=True) == greedy_decode(
        model, audio, max_tokens=3, stepper=False)
    assert greedy_decode(model, audio[:2], max_tokens=0, stepper=True) == [[], []]
