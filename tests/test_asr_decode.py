"""Decoding in RNN mode: greedy equals step-by-step argmax of teacher-forced logits, beam search
equals a slow reference that re-runs every prefix, beam 1 equals greedy, batched equals single,
and the length limit derived from the audio holds."""

import pytest
import torch
from asr_factories import random_audio, tiny_speech_rwkv

from conrwkv.asr import beam_search, decode, greedy_decode, max_new_tokens
from conrwkv.asr.decode import run_prefixes
from conrwkv.config import AsrConfig

pytest.importorskip("transformers")


# tiny models: one torch thread for the whole module (asr_factories.one_torch_thread)
pytestmark = pytest.mark.usefixtures("single_torch_thread")

SECONDS = [1.0, 1.7, 0.6, 1.3, 0.9]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    model = tiny_speech_rwkv(tmp_path_factory.mktemp("decode"))
    with torch.no_grad():
        # A random model almost never ends; an end-token row close to a frequent token's row
        # makes some utterances end early and others run into the length limit.
        model.llm.head.weight[0] = model.llm.head.weight[14] * 1.05
        # Exact ties (frequent in bf16 logits): the lower id must win, as argmax decides.
        model.llm.head.weight[[90, 91, 92]] = model.llm.head.weight[[51, 55, 83]]
        for block in model.llm.blocks:
            block.att.time_state.normal_(0.0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def audio():
    return random_audio(SECONDS, seed=11)


def teacher_forced_logits(model, one_audio, tokens):
    """Log-probabilities after [speech][#] and after each of `tokens`: one full parallel run."""
    with torch.no_grad():
        (prefix,) = model.prefixes([one_audio])
        row = torch.cat([prefix, model.llm.emb(torch.tensor(tokens, dtype=torch.long))])
        logits, _ = model.llm(row[None])
    return torch.log_softmax(logits[0, prefix.shape[0] - 1:].float(), dim=-1)


def test_max_new_tokens_formula():
    assert max_new_tokens(16000, 8.0) == 18
    assert max_new_tokens(8000, 8.0) == 14
    assert max_new_tokens(123, 0.0) == 10


def test_greedy_is_argmax_of_teacher_forced_logits(model, audio):
    hypotheses = greedy_decode(model, audio)
    limits = [max_new_tokens(len(a), 8.0) for a in audio]
    ended = [len(h) < limit for h, limit in zip(hypotheses, limits)]
    assert any(ended) and not all(ended)               # both ways of stopping are exercised
    for one_audio, tokens, limit, stopped in zip(audio, hypotheses, limits, ended):
        assert len(tokens) <= limit and 0 not in tokens
        log_probs = teacher_forced_logits(model, one_audio, tokens)
        argmax = log_probs.argmax(-1).tolist()
        assert argmax[:len(tokens)] == tokens
        assert (argmax[len(tokens)] == 0) == stopped


def reference_beam_search(model, one_audio, beam, limit, length_penalty=1.0):
    """The same search written the slow way: every hypothesis re-run from the start each step."""
    live, finished = [(0.0, [])], []
    for step in range(limit):
        candidates = []
        for score, tokens in live:
            log_probs = teacher_forced_logits(model, one_audio, tokens)[-1]
            candidates += [(score + lp, tokens, token) for token, lp in enumerate(log_probs.tolist())]
        candidates.sort(key=lambda c: -c[0])
        next_live = []
        for rank, (score, tokens, token) in enumerate(candidates[:2 * beam]):
            if token == 0:
                if rank < beam:
                    finished.append((score / (len(tokens) + 1) ** length_penalty, tokens))
            elif len(next_live) < beam:
                next_live.append((score, tokens + [token]))
        if len(finished) >= beam:
            break
        if step + 1 == limit:
            finished += [(s / len(t) ** length_penalty, t) for s, t in next_live]
        live = next_live
    return max(finished, key=lambda f: f[0])[1]


@pytest.mark.parametrize("beam", [2, 3])
def test_beam_search_equals_slow_reference(model, audio, beam):
    limit = 8
    hypotheses = beam_search(model, audio[:3], beam=beam, max_tokens=limit)
    for one_audio, tokens in zip(audio[:3], hypotheses):
        assert tokens == reference_beam_search(model, one_audio, beam, limit)


def test_beam_one_equals_greedy(model, audio):
    assert beam_search(model, audio, beam=1) == greedy_decode(model, audio)


@pytest.mark.parametrize("beam", [1, 3])
def test_batched_equals_single(model, audio, beam):
    batched = beam_search(model, audio, beam=beam) if beam > 1 else greedy_decode(model, audio)
    for one_audio, tokens in zip(audio, batched):
        alone = beam_search(model, [one_audio], beam=beam) if beam > 1 else greedy_decode(model, [one_audio])
        assert alone == [tokens]


def test_prefixes_of_different_lengths_give_their_own_states(model, audio):
    with torch.no_grad():
        prefixes = model.prefixes(audio[:3])
        assert len({p.shape[0] for p in prefixes}) == 3
        logits, state = run_prefixes(model.llm, prefixes)
        for i, prefix in enumerate(prefixes):
            alone, alone_state = model.llm(prefix[None])
            assert torch.allclose(logits[i], alone[0, -1].float(), atol=1e-5)
            assert torch.allclose(state[1].wkv[i], alone_state[1].wkv[0], atol=1e-5)


def test_length_limits(model, audio):
    for tokens in greedy_decode(model, audio, max_tokens=3) + beam_search(model, audio, beam=2, max_tokens=3):
        assert len(tokens) <= 3
    assert greedy_decode(model, audio[:2], max_tokens=0) == [[], []]
    assert beam_search(model, audio[:2], beam=2, max_tokens=0) == [[], []]
    limits = [max_new_tokens(len(a), 2.0) for a in audio]
    for tokens, limit in zip(greedy_decode(model, audio, max_tokens_per_second=2.0), limits):
        assert len(tokens) <= limit
    with pytest.raises(ValueError, match="beam must be >= 1"):
        beam_search(model, audio, beam=0)


def test_decode_follows_the_config_and_restores_training_mode(model, audio):
    model.train()
    try:
        assert decode(model, audio, AsrConfig(beam=1)) == greedy_decode(model, audio)
        assert decode(model, audio, AsrConfig(beam=2)) == beam_search(model, audio, beam=2)
        assert model.training and not model.encoder.model.training
    finally:
        model.eval()


@pytest.mark.parametrize("beam", [1, 3])
def test_decoding_is_linear_in_the_output_length(model, audio, beam, monkeypatch):
    """The prefix runs once; after it every step feeds exactly one position per live row."""
    calls = []
    forward_hidden = model.llm.forward_hidden

    def counting(inputs, state=None):
        calls.append((inputs.shape[0], inputs.shape[1], state is None))
        return forward_hidden(inputs, state)

    monkeypatch.setattr(model.llm, "forward_hidden", counting)
    (prefix,) = model.prefixes(audio[:1])
    calls.clear()
    (tokens,) = beam_search(model, audio[:1], beam=beam, max_tokens=12)
    prefix_calls = [c for c in calls if c[2]]
    assert prefix_calls == [(1, prefix.shape[0], True)]
    steps = [c for c in calls if not c[2]]
    assert all(t == 1 and rows <= beam for rows, t, _ in steps)
    assert len(steps) <= 11 and (beam > 1 or len(steps) == len(tokens) - (len(tokens) == 12))
