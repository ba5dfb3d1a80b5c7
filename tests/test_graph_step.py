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

from conrwkv.model import RWKV, RNNStepper, initial_state


def tiny_model(**overrides):
    return randomize_(RWKV(tiny_config(**overrides)), seed=1).eval()


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
    model = randomize_(RWKV(tiny_config(head_size=64, n_embd=128)), seed=2).cuda().bfloat16().eval()
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


def test_a_stepper_cache_reuses_one_stepper_per_batch_size(tmp_path, monkeypatch):
    """Greedy decoding from a StepperCache builds one stepper per batch size (on a GPU: one graph
    capture), gives the hypotheses of the uncached path, follows weights changed in place, and
    builds a new stepper when a tensor's storage is replaced (a graph would read the old memory)."""
    from asr_factories import random_audio, tiny_speech_rwkv

    from conrwkv.asr import greedy_decode
    from conrwkv.model import StepperCache

    built = []
    original_init = RNNStepper.__init__

    def counting_init(self, model, batch_size, *args, **kwargs):
        built.append(batch_size)
        original_init(self, model, batch_size, *args, **kwargs)

    monkeypatch.setattr(RNNStepper, "__init__", counting_init)
    model = tiny_speech_rwkv(tmp_path).eval()
    with torch.no_grad():
        for block in model.llm.blocks:
            block.att.time_state.normal_(0.0, 0.5)
    batches = [random_audio([1.0, 0.7], seed=1), random_audio([0.9, 1.2], seed=2),
               random_audio([0.8, 0.6, 1.1], seed=3)]
    uncached = [greedy_decode(model, audio, stepper=True) for audio in batches]
    assert built == [2, 2, 3]
    built.clear()
    cache = StepperCache()
    assert [greedy_decode(model, audio, stepper=True, steppers=cache) for audio in batches] == uncached
    assert built == [2, 3]                                      # the second batch of 2 reused it
    first = cache.get(model.llm, 2)
    assert cache.get(model.llm, 2) is first and cache.get(model.llm, 3) is not first

    with torch.no_grad():                                       # trained further, in place
        for block in model.llm.blocks:
            block.att.time_state.mul_(-1.0)
    expected = greedy_decode(model, batches[0], stepper=False)
    assert greedy_decode(model, batches[0], stepper=True, steppers=cache) == expected
    assert cache.get(model.llm, 2) is first

    block = model.llm.blocks[0].att
    block.time_state.data = block.time_state.data.clone()       # same values, new storage
    built.clear()
    assert greedy_decode(model, batches[0], stepper=True, steppers=cache) == expected
    assert built == [2] and cache.get(model.llm, 2) is not first


@pytest.mark.cuda
def test_a_cached_graph_reads_weights_changed_in_place_and_is_recaptured_for_new_storage_cuda():
    """On a GPU the cached stepper replays one captured graph: a weight changed in place is read
    by the next replay; a weight given new storage makes the cache capture a new graph."""
    from conrwkv.model import StepperCache

    model = randomize_(RWKV(tiny_config(head_size=64, n_embd=128)), seed=3).cuda().eval()
    prompt = torch.randint(0, 97, (2, 6), device="cuda")
    cache = StepperCache()

    def step_from_prompt(stepper):
        with torch.no_grad():
            logits, state = model(prompt)
        stepper.reset(state)
        return stepper.step(logits[:, -1].argmax(-1)).clone()

    def eager():
        return step_from_prompt(RNNStepper(model, 2, use_graph=False))

    first = cache.get(model, 2)
    assert first.graph is not None
    before = step_from_prompt(first)
    torch.testing.assert_close(before, eager(), rtol=1e-3, atol=1e-3)
    with torch.no_grad():
        model.head.weight.mul_(0.5)
        model.blocks[0].att.output.weight.mul_(-1.0)
    assert cache.get(model, 2) is first
    after = step_from_prompt(first)
    torch.testing.assert_close(after, eager(), rtol=1e-3, atol=1e-3)
    assert (after - before).abs().max() > 1e-2
    model.head.weight.data = model.head.weight.data * 2.0
    second = cache.get(model, 2)
    assert second is not first and second.graph is not None
    torch.testing.assert_close(step_from_prompt(second), eager(), rtol=1e-3, atol=1e-3)
