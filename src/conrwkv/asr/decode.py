"""Batched greedy and beam-search decoding for SpeechRWKV in RNN mode (RWKV-ASR; SLAM-ASR,
Ma et al. 2024, decodes with beam 4).

    hypotheses = greedy_decode(model, audio)            # list of token-id lists, end token removed
    hypotheses = beam_search(model, audio, beam=4)

RWKV-ASR re-ran the whole prefix at every step, quadratic in the output length. An RNN carries
its state, so after the prefix each new token costs one step: linear in the output length.

Prefixes [speech][separator] differ in length across a batch. Right padding would push pad
steps through the recurrence and left padding would run them before the trained initial state
takes effect, so neither is exact. Instead each prefix runs at its own length: prefixes of equal
length share one batched call, and the resulting states are stacked into one batch in the
original order. From then on every row advances one token per step, and rows whose utterance has
finished are dropped from the state (`RWKVState.select`), so a batch gives the same hypotheses
as decoding each utterance alone. On a GPU, greedy decoding instead keeps the batch fixed and
replays each token step from a CUDA graph (conrwkv.model.RNNStepper): finished rows keep stepping
and are ignored, which gives the same hypotheses without a few hundred launches from Python per
token. Given a StepperCache (the eval loop owns one), the stepper, and so the graph captured for
a batch size, is reused by every later batch of that size.

An utterance may generate at most `max_tokens_per_second * seconds + 10` tokens, the end token
included; decoding stops at token 0 (end of text), which is not returned.

`targets` (the transcripts' token ids) are read only by a model with the oracle prefix
(oracle.py), whose prefix they are; the limits still come from the audio.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from torch import Tensor

from ..config import AsrConfig
from ..data.speech.audio import SAMPLE_RATE
from ..model import RWKV, LayerState, RNNStepper, RWKVState, StepperCache
from .speech_rwkv import SpeechRWKV


def max_new_tokens(num_samples: int, tokens_per_second: float) -> int:
    """The generation limit for `num_samples` of 16 kHz audio: tokens_per_second * seconds + 10."""
    return int(tokens_per_second * num_samples / SAMPLE_RATE) + 10


def stack_states(states: list[RWKVState]) -> RWKVState:
    """Concatenate the batches of several states (same model) into one, in the given order."""
    def cat(tensors):
        return None if tensors[0] is None else torch.cat(tensors)

    return RWKVState(LayerState(*(cat([getattr(layer, f) for layer in layers])
                                  for f in ("att_shift", "wkv", "ffn_shift", "conv")))
                     for layers in zip(*states))


def run_prefixes(llm: RWKV, prefixes: list[Tensor]) -> tuple[Tensor, RWKVState]:
    """Run each [T_i, C] prefix from the initial state at its own length.

    Returns the fp32 logits at each prefix's last position [B, V] and the states after them,
    in the order of `prefixes`."""
    by_length: dict[int, list[int]] = {}
    for i, prefix in enumerate(prefixes):
        by_length.setdefault(prefix.shape[0], []).append(i)
    order, logits, states = [], [], []
    for rows in by_length.values():
        hidden, state = llm.forward_hidden(torch.stack([prefixes[i] for i in rows]))
        logits.append(llm.head(hidden[:, -1]).float())
        states.append(state)
        order.extend(rows)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[_index(order, 'cpu')] = torch.arange(len(order))
    inverse = inverse.to(logits[0].device)
    return torch.cat(logits).index_select(0, inverse), stack_states(states).select(inverse)


def _limits(audio: list[np.ndarray], tokens_per_second: float, max_tokens: int | None) -> list[int]:
    if max_tokens is not None:
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        return [max_tokens] * len(audio)
    if tokens_per_second < 0:
        raise ValueError(f"max_tokens_per_second must be >= 0, got {tokens_per_second}")
    return [max_new_tokens(len(a), tokens_per_second) for a in audio]


def _index(rows: list[int], device: torch.device) -> Tensor:
    return torch.tensor(rows, dtype=torch.long, device=device)


@contextlib.contextmanager
def _inference(model: SpeechRWKV):
    """Eval mode (no dropout in a trainable encoder) and no autograd; the mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _step(llm: RWKV, tokens: list[int], state: RWKVState) -> tuple[Tensor, RWKVState]:
    """Feed one token per row; return the fp32 next-token logits [R, V] and the new state."""
    ids = torch.tensor(tokens, dtype=torch.long, device=llm.emb.weight.device)[:, None]
    logits, state = llm(ids, state)
    return logits[:, -1].float(), state


def _best_candidates(candidates: Tensor, k: int) -> tuple[list[list[float]], list[list[int]]]:
    """The k best (score, index) pairs of each row, ties broken towards the lower index.

    topk leaves the order of equal scores open, and bf16 logits tie often; argmax takes the first
    of equal maxima, so this order is what makes beam 1 agree with greedy decoding."""
    threshold = candidates.topk(k, dim=1).values[:, -1:]
    rows, columns = (candidates >= threshold).nonzero(as_tuple=True)    # row-major: index order
    values = candidates[rows, columns].tolist()
    best: list[list[tuple[float, int]]] = [[] for _ in range(candidates.shape[0])]
    for row, column, value in zip(rows.tolist(), columns.tolist(), values):
        best[row].append((value, column))
    for row in best:
        row.sort(key=lambda pair: -pair[0])                            # stable: equal keep index order
        del row[k:]
    return [[v for v, _ in row] for row in best], [[c for _, c in row] for row in best]


def greedy_decode(model: SpeechRWKV, audio: list[np.ndarray], max_tokens_per_second: float = 8.0,
                  max_tokens: int | None = None, stepper: bool | None = None,
                  steppers: StepperCache | None = None,
                  targets: list[list[int]] | None = None) -> list[list[int]]:
    """Argmax decoding. `max_tokens` overrides the limit derived from the audio length.

    `stepper` (default: on for a model on a CUDA device) runs the token steps through an
    RNNStepper at a fixed batch size: one CUDA-graph replay per token instead of a few hundred
    kernel launches from Python, which bound the eager loop. Finished rows then keep stepping and
    are ignored, rather than being dropped; the hypotheses are the same. `steppers` supplies
    that RNNStepper from a cache (one capture per batch size); without it one is built here."""
    limits = _limits(audio, max_tokens_per_second, max_tokens)
    outputs: list[list[int]] = [[] for _ in audio]
    with _inference(model):
        logits, state = run_prefixes(model.llm, model.prefixes(audio, targets))
        active = [i for i in range(len(audio)) if limits[i] > 0]     # utterance of each state row
        if len(active) < len(audio):
            state = state.select(_index(active, logits.device))
            logits = logits[active]
        if stepper is None:
            stepper = logits.device.type == "cuda"
        if stepper and active:
            runner = (RNNStepper(model.llm, len(active)) if steppers is None
                      else steppers.get(model.llm, len(active)))
            _greedy_fixed_batch(runner, model.eot_id, logits, state, active, limits, outputs)
            return outputs
        while active:
            best = logits.argmax(-1).tolist()
            keep = _emit(best, range(len(active)), active, model.eot_id, limits, outputs)
            if not keep:
                break
            if len(keep) < len(active):
                state = state.select(_index(keep, logits.device))
            active = [active[row] for row in keep]
            logits, state = _step(model.llm, [best[row] for row in keep], state)
    return outputs


def _greedy_fixed_batch(runner: RNNStepper, eot_id: int, logits: Tensor, state: RWKVState,
                        active: list[int], limits: list[int], outputs: list[list[int]]) -> None:
    """greedy_decode's loop on an RNNStepper: row r of the batch decodes utterance active[r]."""
    runner.reset(state)
    live = list(range(len(active)))
    while live:
        best = logits.argmax(-1).tolist()
        live = _emit(best, live, active, eot_id, limits, outputs)
        if live:
            logits = runner.step(torch.tensor(best, dtype=torch.long, device=logits.device))


def _emit(best: list[int], rows, active: list[int], eot_id: int, limits: list[int],
          outputs: list[list[int]]) -> list[int]:
    """Append each row's argmax token to its utterance (row r decodes utterance active[r]);
    return the rows that go on: not ended by the end token and still under their limit."""
    going = []
    for row in rows:
        utt = active[row]
        if best[row] == eot_id:
            continue
        outputs[utt].append(best[row])
        if len(outputs[utt]) < limits[utt]:
            going.append(row)
    return going


def beam_search(model: SpeechRWKV, audio: list[np.ndarray], beam: int = 4,
                max_tokens_per_second: float = 8.0, max_tokens: int | None = None,
                length_penalty: float = 1.0, targets: list[list[int]] | None = None) -> list[list[int]]:
    """Beam search with `beam` hypotheses per utterance, all utterances in one batch.

    A hypothesis ends with the end token (if that candidate ranks among the top `beam` of its
    step) or at the length limit. An utterance stops once it has `beam` ended hypotheses; the
    result is the ended one with the best score sum(log p) / length ** length_penalty, length
    counting the end token. With beam = 1 this is exactly greedy decoding."""
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    limits = _limits(audio, max_tokens_per_second, max_tokens)
    W = beam
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in audio]
    with _inference(model):
        logits, state = run_prefixes(model.llm, model.prefixes(audio, targets))
        V = logits.shape[-1]
        device = logits.device
        active = [i for i in range(len(audio)) if limits[i] > 0]
        for i in range(len(audio)):
            if limits[i] == 0:
                finished[i].append((0.0, []))
        # W rows per active utterance; only the first is live until the first step fills them.
        rows = _index(active, device).repeat_interleave(W)
        state = state.select(rows)
        log_probs = torch.log_softmax(logits.index_select(0, rows), dim=-1)
        scores = torch.full((len(active), W), -math.inf, device=device)
        scores[:, 0] = 0.0
        histories = [[[] for _ in range(W)] for _ in active]
        step = 0
        while active:
            candidates = (scores[:, :, None] + log_probs.view(len(active), W, V)).view(len(active), W * V)
            top_scores, top_index = _best_candidates(candidates, min(2 * W, W * V))
            next_rows, next_tokens, next_scores, next_histories, still = [], [], [], [], []
            for u, utt in enumerate(active):
                chosen = []
                for rank, (score, index) in enumerate(zip(top_scores[u], top_index[u])):
                    if not math.isfinite(score):
                        break
                    w, token = divmod(index, V)
                    history = histories[u][w]
                    if token == model.eot_id:
                        if rank < W:
                            finished[utt].append((score / (len(history) + 1) ** length_penalty, history))
                        continue
                    chosen.append((u * W + w, token, score, history + [token]))
                    if len(chosen) == W:
                        break
                if len(finished[utt]) >= W or not chosen:
                    continue
                if step + 1 >= limits[utt]:
                    finished[utt].extend((s / len(h) ** length_penalty, h) for _, _, s, h in chosen)
                    continue
                # Fewer live candidates than beams (tiny vocabularies): dead copies fill the rows.
                chosen += [(chosen[0][0], chosen[0][1], -math.inf, chosen[0][3])] * (W - len(chosen))
                still.append(utt)
                next_rows += [c[0] for c in chosen]
                next_tokens += [c[1] for c in chosen]
                next_scores.append([c[2] for c in chosen])
                next_histories.append([c[3] for c in chosen])
            if not still:
                break
            state = state.select(_index(next_rows, device))
            logits, state = _step(model.llm, next_tokens, state)
            log_probs = torch.log_softmax(logits, dim=-1)
            scores = torch.tensor(next_scores, device=device)
            histories, active = next_histories, still
            step += 1
    return [max(hypotheses, key=lambda h: h[0])[1] for hypotheses in finished]


def decode(model: SpeechRWKV, audio: list[np.ndarray], asr: AsrConfig,
           steppers: StepperCache | None = None,
           targets: list[list[int]] | None = None) -> list[list[int]]:
    """Greedy for asr.beam == 1 (on `steppers`' RNNSteppers when given), beam search otherwise;
    limits from asr.max_tokens_per_second."""
    if asr.beam == 1:
        return greedy_decode(model, audio, asr.max_tokens_per_second, steppers=steppers, targets=targets)
    return beam_search(model, audio, asr.beam, asr.max_tokens_per_second, targets=targets)
