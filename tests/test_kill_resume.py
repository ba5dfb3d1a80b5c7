"""A real SIGKILL of `train.py`, then a resume, gives what a run that was never interrupted gives:
the same step files, every one readable, bit-identical weights (CPU, fp32), no temporary files
left. For --task lm on windows and on documents (and with gradient accumulation, killed inside
its windows), and --task asr on bucketed batches; each run crosses epoch boundaries, so the
resumed data position is exercised mid-epoch and at its end.

The slow test kills many times at random moments (half of them inside a save) and is run by
hand: `python -m pytest -m slow tests/test_kill_resume.py`."""

from __future__ import annotations

import pytest
from factories import markov_folder
from kill_harness import compare, kill, random_kills, run_in_process, run_to_end
from speech_fixtures import make_librispeech

from conrwkv.asr.tiny_models import make_tiny_encoder, make_tiny_llm

# 400 chains of 33 symbols in batches of 16: 25 steps per epoch, so 60 steps cross two epoch
# ends; the model is large enough (2 x 128) that a save takes long enough to be killed inside.
LM = ["--task", "lm", "--vocab_size", "2", "--n_layer", "2", "--n_embd", "128", "--head_size", "16",
      "--conv_kernel", "2", "--ctx_len", "32", "--micro_bsz", "16", "--max_steps", "60",
      "--save_every", "5", "--lr_init", "3e-3", "--lr_final", "3e-4", "--warmup_steps", "5",
      "--accelerator", "cpu", "--devices", "1", "--seed", "3"]


@pytest.fixture(scope="module")
def markov(tmp_path_factory):
    return markov_folder(tmp_path_factory, order=1, seq_len=33, n_train=400, n_val=16, seed=2)


@pytest.fixture(scope="module")
def asr_args(tmp_path_factory):
    root = tmp_path_factory.mktemp("asr")
    corpus = make_librispeech(root, "train-clean-100")
    encoder = make_tiny_encoder(root / "encoder")
    llm = make_tiny_llm(root / "llm.pth", n_layer=2, n_embd=32)
    # 5 utterances in batches of 2: 3 batches an epoch, 12 steps cross three epoch ends.
    return ["--task", "asr", "--load_model", str(llm), "--encoder", str(encoder),
            "--data_file", str(corpus), "--micro_bsz", "2", "--max_steps", "12", "--save_every", "2",
            "--lr_init", "1e-3", "--lr_final", "1e-4", "--warmup_steps", "2",
            "--projector_hidden", "64", "--accelerator", "cpu", "--devices", "1", "--seed", "1"]


def assert_resumed_like(reference, resumed):
    result = compare(reference, resumed)
    assert result.ok, result


@pytest.mark.parametrize("data_type", ["documents", "windows"])
def test_lm_killed_inside_a_save_resumes_bit_identically(markov, tmp_path, data_type):
    data = str(markov) if data_type == "documents" else str(markov / "train")   # a plain binidx
    args = [*LM, "--data_file", data, "--data_type", data_type]
    run_in_process(args, tmp_path / "reference")
    where = kill(args, tmp_path / "run", inside_save=True, after_files=4)
    assert where == "inside a save"
    run_to_end(args, tmp_path / "run")
    assert_resumed_like(tmp_path / "reference", tmp_path / "run")


def test_lm_with_accumulation_killed_mid_window_resumes_bit_identically(markov, tmp_path):
    # 25 micro-batches an epoch in windows of 3: 9 steps an epoch, the last of one micro-batch;
    # a kill at a moment lands inside a window two times in three.
    args = [*LM, "--data_file", str(markov), "--accumulate_grad_batches", "3", "--max_steps", "20"]
    run_in_process(args, tmp_path / "reference")
    kill(args, tmp_path / "run", inside_save=False, delay=1.0)
    kill(args, tmp_path / "run", inside_save=True, after_files=2)
    run_to_end(args, tmp_path / "run")
    assert_resumed_like(tmp_path / "reference", tmp_path / "run")


def test_asr_killed_twice_resumes_bit_identically(asr_args, tmp_path):
    run_in_process(asr_args, tmp_path / "reference")
    kill(asr_args, tmp_path / "run", inside_save=False, after_files=0, delay=0.0)
    kill(asr_args, tmp_path / "run", inside_save=True, after_files=6)
    run_to_end(asr_args, tmp_path / "run")
    assert_resumed_like(tmp_path / "reference", tmp_path / "run")


@pytest.mark.slow
@pytest.mark.parametrize("task", ["lm", "asr"])
def test_many_random_kills(markov, asr_args, tmp_path, task):
    args = [*LM, "--data_file", str(markov)] if task == "lm" else asr_args
    run_in_process(args, tmp_path / "reference")
    outcome = random_kills(args, tmp_path / "reference", tmp_path / "runs", kills=20, seed=7)
    inside = outcome["kills"].count("inside a save")
    print(f"{task}: {len(outcome['kills'])} kills ({inside} inside a save) in "
          f"{len(outcome['comparisons'])} resumed runs")
    assert all(c.ok for c in outcome["comparisons"]), outcome
