"""CTC speech encoder: the letter alphabet, greedy CTC decoding, and tiny CPU training runs that
save a HubertForCTC folder SpeechEncoder loads, score their eval splits, and honour time_limit."""

from __future__ import annotations

import json
import types

import jiwer
import numpy as np
import pytest
import torch
from speech_fixtures import make_librispeech

from conrwkv.asr import ctc_encoder
from conrwkv.asr.ctc_encoder import (
    LETTER_ID,
    LETTERS,
    CtcEncoderConfig,
    greedy_ctc_text,
    text_to_ids,
    train_ctc_encoder,
)
from conrwkv.data.speech import load_audio, load_corpus
from conrwkv.eval.wer import normalize_text

pytest.importorskip("transformers")

TINY = CtcEncoderConfig(hidden_size=32, layers=1, heads=2, ffn=64, conv_dim=16, steps=3, batch_size=2)
TINY_FLAGS = ["--hidden_size", "32", "--layers", "1", "--heads", "2", "--ffn", "64", "--conv_dim", "16",
              "--batch_size", "2"]


# tiny models: one torch thread for the whole module (asr_factories.one_torch_thread)
pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctc")
    return {"root": root, "train": str(make_librispeech(root, "train")),
            "test": str(make_librispeech(root, "test-clean"))}


class TranscribeSpy:
    """Wraps ctc_encoder.transcribe and keeps what it returned."""

    def __init__(self, monkeypatch):
        self.calls = []
        self._real = ctc_encoder.transcribe
        monkeypatch.setattr(ctc_encoder, "transcribe", self)

    def __call__(self, *args, **kwargs):
        texts = self._real(*args, **kwargs)
        self.calls.append(texts)
        return texts


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """One full 3-step run with test-clean scored, and the hypotheses its scoring saw."""
    out = tmp_path_factory.mktemp("trained") / "encoder"
    with pytest.MonkeyPatch.context() as monkeypatch:
        spy = TranscribeSpy(monkeypatch)
        results = train_ctc_encoder(corpus["train"], out, TINY, [corpus["test"]], device="cpu",
                                    progress=False)
    return out, results, spy.calls


def _conv_frames(samples: int) -> int:
    """Frames of HuBERT's 7-layer conv front end (kernels 10,3,3,3,3,2,2; strides 5,2,...)."""
    for kernel, stride in zip((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)):
        samples = (samples - kernel) // stride + 1
    return samples


def _ids(letters: str) -> list[int]:
    return [LETTER_ID["|" if c == " " else c] for c in letters]


# ---------------------------------------------------------------- alphabet and decoding
def test_text_to_ids():
    assert LETTERS[:3] == ("<pad>", "|", "'") and len(LETTERS) == 29
    assert text_to_ids("AB C") == [3, 4, 1, 5]
    assert text_to_ids("  the  cat's\tZ ") == _ids("THE CAT'S Z")
    assert text_to_ids("") == []
    with pytest.raises(ValueError, match=r"'A:B' has the character ':'"):
        text_to_ids("A:B")
    with pytest.raises(ValueError, match=r"has the character '1'"):
        text_to_ids("ROOM 101")
    with pytest.raises(ValueError, match="has the character '<'"):
        text_to_ids("<pad>")


def test_greedy_ctc_text_by_hand():
    blank, sep = LETTER_ID["<pad>"], LETTER_ID["|"]
    h, e, l, o, w = (LETTER_ID[c] for c in "HELOW")    # noqa: E741
    frames = np.array([blank, h, h, blank, e, l, l, blank, l, o, sep, sep, blank, w, w, blank])
    assert greedy_ctc_text(frames) == "HELLO W"
    # separators at the ends, repeated or split by blanks collapse to single inner spaces
    assert greedy_ctc_text(np.array([sep, h, sep, blank, sep, e, sep])) == "H E"
    assert greedy_ctc_text(np.array([blank, blank])) == ""
    assert greedy_ctc_text(np.array([], dtype=np.int64)) == ""
    assert greedy_ctc_text(np.array(_ids("DON'T"))) == "DON'T"


# ---------------------------------------------------------------- training
def test_training_saves_a_ctc_hubert_folder(corpus, trained):
    from transformers import HubertForCTC, Wav2Vec2CTCTokenizer

    from conrwkv.asr.encoder import SpeechEncoder

    out, results, _ = trained
    saved = json.loads((out / "ctc_results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert results["steps_done"] == TINY.steps and results["stopped_early"] is False
    assert results["train_utterances"] == 5 and results["config"]["hidden_size"] == 32
    assert np.isfinite(results["loss_first_50"]) and results["train_seconds"] >= 0

    model = HubertForCTC.from_pretrained(out, dtype=torch.float32)
    assert model.config.vocab_size == len(LETTERS) and model.config.pad_token_id == 0
    assert model.config.num_hidden_layers == 1 and model.config.hidden_size == 32
    encoder = SpeechEncoder(str(out))
    audio = [load_audio(u.audio) for u in load_corpus(corpus["test"])[:2]]
    features, counts = encoder(audio)
    assert features.shape == (2, int(counts.max()), 32) and encoder.output_dim == 32
    assert counts.tolist() == [_conv_frames(len(a)) for a in audio]

    # The saved CTC tokenizer agrees with the training alphabet and with greedy_ctc_text.
    tokenizer = Wav2Vec2CTCTokenizer.from_pretrained(out)
    assert tokenizer.decode(text_to_ids("HELLO WORLD'S"), group_tokens=False) == "HELLO WORLD'S"
    extractor = encoder.extractor
    inputs = extractor(audio, sampling_rate=16000, padding=True, return_tensors="pt",
                       return_attention_mask=True)
    with torch.no_grad():
        best = model(**inputs).logits.argmax(-1)
    frames = model._get_feat_extract_output_lengths(inputs["attention_mask"].sum(-1))
    for row, n in enumerate(frames.tolist()):
        ids = best[row, :n].numpy()
        assert greedy_ctc_text(ids) == " ".join(tokenizer.decode(ids.tolist()).split())
    rng = np.random.default_rng(0)
    for _ in range(50):
        ids = rng.integers(0, 6, size=int(rng.integers(0, 20)))
        assert greedy_ctc_text(ids) == " ".join(tokenizer.decode(ids.tolist()).split())


def test_eval_wer_is_the_wer_of_the_greedy_transcripts(corpus, trained):
    _, results, calls = trained
    [hypotheses] = calls
    references = [u.text for u in load_corpus(corpus["test"])]
    assert len(hypotheses) == len(references) == 5
    assert all(h == " ".join(h.split()) and set(h) <= set(LETTERS[2:]) | {" "} for h in hypotheses)
    summary = results["eval"]["test-clean"]
    refs = [normalize_text(r) for r in references]
    hyps = [normalize_text(h) for h in hypotheses]
    assert summary["wer"] == pytest.approx(jiwer.wer(refs, hyps))
    assert summary["reference_words"] == sum(len(r.split()) for r in refs) == 26
    assert summary["hypothesis_words"] == sum(len(h.split()) for h in hyps)
    assert summary["utterances"] == 5


def test_existing_model_folder_is_refused(corpus, trained):
    out, _, _ = trained
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a model"):
        train_ctc_encoder(corpus["train"], out, TINY, device="cpu", progress=False)
    assert (out / "model.safetensors").read_bytes() == before


def _fake_clock(monkeypatch):
    """time.time() in ctc_encoder advances one second per call, starting at 0."""
    ticks = iter(range(10**6))
    monkeypatch.setattr(ctc_encoder, "time", types.SimpleNamespace(time=lambda: float(next(ticks))))


def test_time_limit_stops_early_and_still_saves_from_the_command_line(corpus, tmp_path, monkeypatch,
                                                                      capsys):
    # start at t=0; the first step is always made; before step 2 the clock says 1, over the limit.
    _fake_clock(monkeypatch)
    out = tmp_path / "encoder"
    code = ctc_encoder.main(["--train_data", corpus["train"], "--eval_data", f"{corpus['test']},",
                             "--out", str(out), "--device", "cpu", "--no_progress", "--steps", "5",
                             "--time_limit", "0.5", *TINY_FLAGS])
    assert code == 0
    results = json.loads((out / "ctc_results.json").read_text())
    assert results["steps_done"] == 1 < results["config"]["steps"] == 5
    assert results["stopped_early"] is True and results["config"]["batch_size"] == 2
    assert list(results["eval"]) == ["test-clean"]
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    printed = capsys.readouterr().out
    assert json.loads(printed.splitlines()[0])["steps_done"] == 1
    assert f"test-clean: CTC greedy WER {100 * results['eval']['test-clean']['wer']:.2f}%" in printed


def test_time_limit_before_the_first_step_still_trains_one_step(corpus, tmp_path, monkeypatch):
    _fake_clock(monkeypatch)
    results = train_ctc_encoder(corpus["train"], tmp_path / "encoder", TINY, device="cpu",
                                progress=False, time_limit=0.5)
    assert results["steps_done"] == 1 and results["stopped_early"] is True
    assert (tmp_path / "encoder" / "config.json").is_file()


def test_command_line_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        ctc_encoder.main(["--out", "x"])
    assert exit_info.value.code == 2 and "--train_data" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ctc_encoder.main(["--train_data", "a", "--out", "x", "--steps", "many"])


def test_the_learning_rate_warms_up_by_steps_and_decays_by_steps_or_by_the_clock():
    config = ctc_encoder.CtcEncoderConfig(steps=1000, warmup=100)
    lr = ctc_encoder.lr_multiplier
    assert lr(0, 0.0, config, 0.0) == pytest.approx(0.01) and lr(100, 0.0, config, 0.0) == 1.0
    assert lr(550, 0.0, config, 0.0) == pytest.approx(0.5) and lr(1000, 0.0, config, 0.0) == 0.0
    # with a time limit the decay ends when the clock does, if that comes before the last step
    assert lr(200, 30.0, config, 60.0) == pytest.approx(0.5)
    assert lr(200, 60.0, config, 60.0) == 0.0
    assert lr(900, 1.0, config, 60.0) == pytest.approx(1 - 800 / 900)     # the steps end first
    assert lr(50, 59.0, config, 60.0) < lr(50, 0.0, config, 60.0)   # warm-up is still by steps


def test_a_killed_or_paused_training_resumes_to_the_same_weights(corpus, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from safetensors.torch import load_file

    flags = [*TINY_FLAGS, "--steps", "8", "--mask_time_prob", "0.3", "--train_data", corpus["train"],
             "--device", "cpu", "--no_progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    root = Path(__file__).resolve().parents[1]

    def command(out):
        return [sys.executable, "-m", "conrwkv.asr.ctc_encoder", *flags, "--out", str(out)]

    assert subprocess.run(command(tmp_path / "straight"), cwd=root, env=env).returncode == 0
    # killed right after its step-4 state, then a pause at the first chance, then to the end
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*command(killed), "--save_every", "2"], cwd=root, env=env,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "training" / "step4.pt").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    paused = subprocess.run([*command(killed), "--save_every", "2", "--pause_after", "1e-9"], cwd=root,
                            env=env, capture_output=True, text=True)
    assert paused.returncode == 0 and json.loads(paused.stdout.splitlines()[-1])["paused_at"] >= 4
    assert not (killed / "config.json").exists()                   # a pause saves no model
    done = subprocess.run([*command(killed), "--save_every", "2"], cwd=root, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stderr
    straight, resumed = (load_file(str(out / "model.safetensors")) for out in (tmp_path / "straight", killed))
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    results = [json.loads((out / "ctc_results.json").read_text()) for out in (tmp_path / "straight", killed)]
    assert results[0]["loss_every_50"] == results[1]["loss_every_50"]
    # other settings on the same folder are refused by name
    other = subprocess.run([*command(tmp_path / "other"), "--save_every", "2", "--pause_after", "1e-9"],
                           cwd=root, env=env, capture_output=True, text=True)
    assert other.returncode == 0
    changed = subprocess.run([*command(tmp_path / "other"), "--lr", "1e-2"], cwd=root, env=env,
                             capture_output=True, text=True)
    assert changed.returncode == 2 and "other settings (lr)" in changed.stderr
