"""The oracle-prefix probe (--oracle_prefix, asr/oracle.py) on tiny models: the rows it builds,
its noise and dropout and their seeding, flag checks, training that learns the copy, eval that
names the probe and scores it, predict that refuses it, and the record that carries it."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from asr_factories import random_audio
from factories import random_checkpoint
from speech_fixtures import LIBRISPEECH_UTTERANCES, make_librispeech

from conrwkv import cli
from conrwkv.asr import SpeechRWKV, beam_search, greedy_decode
from conrwkv.asr import run as run_asr
from conrwkv.asr.oracle import OraclePrefix
from conrwkv.asr.plan import as_trained, plan_trained_asr
from conrwkv.asr.tiny_models import make_tiny_llm
from conrwkv.config import AsrConfig, ModelConfig, TrainConfig
from conrwkv.io import safe_torch_load

TARGETS = [[40, 41, 42, 43, 44], [50, 51], [60, 61, 62]]
SEPARATOR = 36                          # "#" in the World vocabulary, inside the tiny one


# tiny models: one torch thread for the whole module (asr_factories.one_torch_thread)
pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def llm_path(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("oracle") / "llm.pth", vocab_size=97, n_embd=32,
                             head_size=16)[0]


def oracle_model(llm_path, conv_kernel=0, **asr) -> SpeechRWKV:
    return SpeechRWKV.from_pretrained(llm_path, AsrConfig(oracle_prefix=True, **asr), conv_kernel=conv_kernel)


# ---------------------------------------------------------------- the rows
def test_the_prefix_is_the_transcript_then_the_separator_and_only_the_state_is_trained(llm_path):
    model = oracle_model(llm_path, conv_kernel=3)
    assert model.encoder is None and model.projector is None        # nothing of speech is loaded
    assert set(model.trainable_state_dict()) == (
        {f"llm.blocks.{i}.att.time_state" for i in range(2)}
        | {f"llm.blocks.{i}.att.conv.{p}" for i in range(2) for p in ("weight", "bias")})
    audio = random_audio([0.3, 0.2, 0.4])       # read only for its length: it is not the prefix
    with torch.no_grad():
        for prefix, ids in zip(model.prefixes(audio, TARGETS), TARGETS):
            torch.testing.assert_close(prefix, model.llm.emb(torch.tensor(ids + [SEPARATOR])), rtol=0, atol=0)
        # The loss is the LLM's own on the token row [transcript][#][transcript][0].
        sums, counts = model.utterance_losses(audio, TARGETS)
        for i, ids in enumerate(TARGETS):
            logits, _ = model.llm(torch.tensor([ids + [SEPARATOR] + ids]))
            expected = F.cross_entropy(logits[0, len(ids):].float(), torch.tensor(ids + [0]), reduction="sum")
            torch.testing.assert_close(sums[i], expected)
        assert counts.tolist() == [len(ids) + 1 for ids in TARGETS]
    # Decoding starts from the same prefix; beam 1 is greedy decoding.
    greedy = greedy_decode(model, audio, max_tokens=4, targets=TARGETS)
    assert beam_search(model, audio, beam=1, max_tokens=4, targets=TARGETS) == greedy
    with pytest.raises(ValueError, match="the oracle prefix is the transcript; give the targets"):
        greedy_decode(model, audio, max_tokens=4)


# ---------------------------------------------------------------- noise and dropout
def test_eval_noise_is_seeded_per_utterance_and_scaled_by_each_embeddings_rms(llm_path):
    model = oracle_model(llm_path, oracle_noise=0.5).eval()
    audio = random_audio([0.2] * 3)
    long = [list(range(1, 90))]
    with torch.no_grad():
        clean = model.llm.emb(torch.tensor(long[0]))
        noisy = model.prefixes(audio[:1], long)[0][:-1]
        # The same utterance gets the same noise alone or in any batch, call after call.
        assert torch.equal(model.prefixes(audio[:1], long)[0], model.prefixes(audio[:1], long)[0])
        batched = model.prefixes(audio, TARGETS)
        alone = model.prefixes(audio[1:2], TARGETS[1:2])[0]
        assert torch.equal(batched[1], alone)
        assert not torch.equal(batched[1][:-1], model.llm.emb(torch.tensor(TARGETS[1])))
        # The separator is never noised.
        torch.testing.assert_close(batched[0][-1], model.llm.emb(torch.tensor(SEPARATOR)), rtol=0, atol=0)
        rms = clean.pow(2).mean(-1).sqrt()
        ratio = ((noisy - clean).pow(2).mean(-1).sqrt() / rms).mean().item()
        assert ratio == pytest.approx(0.5, rel=0.1)
        # Another noise level sees the same draw, scaled: the probe compares like with like.
        model.oracle = OraclePrefix(noise=1.0)
        torch.testing.assert_close(model.prefixes(audio[:1], long)[0][:-1] - clean, 2 * (noisy - clean))


def test_dropout_zeroes_whole_tokens_and_training_draws_afresh(llm_path):
    model = oracle_model(llm_path, oracle_noise=0.1, oracle_dropout=0.5)
    audio = random_audio([0.2])
    long = [list(range(1, 90))]
    with torch.no_grad():
        model.eval()
        prefix = model.prefixes(audio, long)[0][:-1]
        dropped = (prefix == 0).all(-1)
        assert (prefix[~dropped] != 0).all()            # a kept token is not partly zeroed
        assert 0.35 < dropped.float().mean().item() < 0.65
        # The mask does not depend on the noise level.
        model.oracle = OraclePrefix(noise=0.0, dropout=0.5)
        assert torch.equal((model.prefixes(audio, long)[0][:-1] == 0).all(-1), dropped)
        # In training every call draws anew, from torch's generator (so --seed repeats a run).
        model.train()
        torch.manual_seed(1)
        first = model.prefixes(audio, long)[0]
        second = model.prefixes(audio, long)[0]
        torch.manual_seed(1)
        assert not torch.equal(first, second) and torch.equal(model.prefixes(audio, long)[0], first)


@pytest.mark.parametrize(("asr", "message"), [
    (dict(oracle_prefix=True, oracle_noise=-0.1), r"--oracle_noise must be >= 0 .*got -0.1"),
    (dict(oracle_prefix=True, oracle_noise=float("nan")), r"--oracle_noise must be >= 0"),
    (dict(oracle_prefix=True, oracle_dropout=1.0), r"--oracle_dropout must be in \[0, 1\) .*got 1.0"),
    (dict(oracle_noise=0.2, oracle_dropout=0.1),
     r"^--oracle_noise 0.2 and --oracle_dropout 0.1 act only on the oracle prefix: add --oracle_prefix"),
    (dict(oracle_prefix=True, encoder_trainable=True), r"no encoder is loaded: leave out --encoder_train"),
    (dict(oracle_prefix=True, train_state=False),
     r"--no-train_state without --conv_kernel or --llm_train leaves nothing"),
])
def test_bad_oracle_settings_are_errors_naming_the_flag(llm_path, asr, message):
    with pytest.raises(ValueError, match=message):
        SpeechRWKV.from_pretrained(llm_path, AsrConfig(**asr))


# ---------------------------------------------------------------- train, eval, predict, record
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny World-vocabulary LLM state-tuned on the copy, with noise and dropout; no --encoder."""
    root = tmp_path_factory.mktemp("oracle-run")
    corpus = str(make_librispeech(root, "train-clean-100"))
    train_cfg = TrainConfig(proj_dir=str(root / "run"), data_file=corpus, val_file=corpus,
                            load_model=str(make_tiny_llm(root / "llm.pth", n_layer=2, n_embd=32)),
                            micro_bsz=5, max_steps=12, lr_init=1e-3, lr_final=1e-3, warmup_steps=0,
                            accelerator="cpu", devices="1", seed=0)
    asr = AsrConfig(oracle_prefix=True, oracle_noise=0.1, oracle_dropout=0.1, lr_state_init=1.0,
                    lr_state_final=1.0, max_tokens_per_second=20.0)
    before = corpus_loss(train_cfg, asr, None)
    run_asr.train_asr(ModelConfig(), {}, train_cfg, asr)
    return dict(root=root, corpus=corpus, train_cfg=train_cfg, asr=asr, before=before,
                weights=root / "run" / "asr-step000012.pth")


def corpus_loss(train_cfg, asr, weights) -> float:
    from conrwkv.asr.data import speech_dataset, transcript_ids
    from conrwkv.data.tokenizer import WorldTokenizer

    speech = run_asr.build_speech_model({}, train_cfg, asr).eval()
    if weights:
        speech.load_trainable_state_dict(safe_torch_load(weights))
    data = speech_dataset(train_cfg.data_file, asr)
    items = [data[i] for i in range(len(data))]
    with torch.no_grad():
        return speech.loss([i["audio"] for i in items],
                           transcript_ids(WorldTokenizer(), [i["text"] for i in items], asr)).item()


def test_training_on_the_copy_lowers_the_loss_fast_and_saves_the_state_only(trained):
    assert set(safe_torch_load(trained["weights"])) == {f"llm.blocks.{i}.att.time_state" for i in range(2)}
    after = corpus_loss(trained["train_cfg"], trained["asr"], trained["weights"])
    # From uniform (ln 65536 = 11.09) the random LLM moves by ~0.7 nats in these 12 steps.
    assert after < trained["before"] - 0.4, (trained["before"], after)
    record = json.loads(trained["weights"].with_suffix(".json").read_text())
    assert {k: record["asr"][k] for k in ("oracle_prefix", "oracle_noise", "oracle_dropout")} == {
        "oracle_prefix": True, "oracle_noise": 0.1, "oracle_dropout": 0.1}


def test_eval_names_the_probe_and_scores_it_reproducibly(trained):
    # eval's own flags are the defaults: the probe comes from the record.
    train_cfg = TrainConfig(proj_dir=trained["train_cfg"].proj_dir, accelerator="cpu", micro_bsz=2)
    asr = AsrConfig(eval_data=trained["corpus"], max_tokens_per_second=20.0)
    summary = run_asr.eval_asr(ModelConfig(), {}, train_cfg, asr)
    out = trained["root"] / "run" / "eval-asr-step000012-beam1-tps20-oracle-noise0.1-drop0.1"
    assert summary["eval_dir"] == str(out)
    saved = json.loads((out / "summary.json").read_text())
    assert (saved["oracle_prefix"], saved["oracle_noise"], saved["oracle_dropout"]) == (True, 0.1, 0.1)
    split = saved["splits"]["train-clean-100"]
    assert split["utterances_scored"] == len(LIBRISPEECH_UTTERANCES) and 0 <= split["wer"]
    again = run_asr.eval_asr(ModelConfig(), {}, train_cfg, asr)
    assert again["eval_dir"] == f"{out}-2"
    assert (out / "train-clean-100.hyp.txt").read_text() == (
        trained["root"] / "run" / f"{out.name}-2" / "train-clean-100.hyp.txt").read_text()


def test_predict_refuses_the_probe(trained, tmp_path, capsys):
    train_cfg = TrainConfig(proj_dir=trained["train_cfg"].proj_dir, accelerator="cpu")
    asr = AsrConfig(audio=trained["corpus"])
    with pytest.raises(ValueError, match=r"^--op predict: .*asr-step000012.pth was trained with "
                                         r"--oracle_prefix, .* new audio has none; score the probe "
                                         r"with --op eval"):
        run_asr.predict_asr(ModelConfig(), {}, train_cfg, asr)
    # Only train offers the flags: eval and predict take the probe from the record.
    for op in ("eval", "predict"):
        with pytest.raises(SystemExit):
            cli.build_parser("asr", op).parse_args(["--task", "asr", "--op", op, "--oracle_prefix"])
    assert "unrecognized arguments: --oracle_prefix" in capsys.readouterr().err
    args = cli.build_parser("asr", "train").parse_args(
        ["--task", "asr", "--oracle_prefix", "--oracle_noise", "0.3", "--oracle_dropout", "0.2"])
    assert (args.oracle_prefix, args.oracle_noise, args.oracle_dropout) == (True, 0.3, 0.2)


def test_merge_writes_the_probe_state_into_the_llm(trained, tmp_path):
    from conrwkv.model import RWKV

    train_cfg = TrainConfig(proj_dir=trained["train_cfg"].proj_dir, accelerator="cpu")
    merged = run_asr.merge_asr(ModelConfig(), {}, train_cfg, AsrConfig(merge_out=str(tmp_path / "m.pth")))
    state = safe_torch_load(trained["weights"])["llm.blocks.1.att.time_state"]
    llm = RWKV.from_checkpoint(merged["merged"])
    torch.testing.assert_close(llm.blocks[1].att.time_state.float(), state)


def test_the_record_carries_the_probe_and_an_older_record_means_none(trained, tmp_path, capsys):
    weights = trained["weights"]
    _, _, asr = as_trained(weights, {}, TrainConfig(), AsrConfig())
    assert (asr.oracle_prefix, asr.oracle_noise, asr.oracle_dropout, asr.encoder) == (True, 0.1, 0.1, "")
    assert cli.main(["--task", "asr", "--op", "eval", "--proj_dir", str(weights.parent), "--dry_run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert {k: plan["trained_as"][k] for k in ("oracle_prefix", "oracle_noise", "oracle_dropout")} == {
        "oracle_prefix": True, "oracle_noise": 0.1, "oracle_dropout": 0.1}
    # A record written before the probe existed has no oracle keys: it was trained without it.
    old = tmp_path / "asr-step000001.pth"
    old.write_bytes(weights.read_bytes())
    record = json.loads(weights.with_suffix(".json").read_text())
    for name in ("oracle_prefix", "oracle_noise", "oracle_dropout"):
        del record["asr"][name]
    old.with_suffix(".json").write_text(json.dumps(record))
    _, _, asr = as_trained(old, {}, TrainConfig(), dataclasses.replace(AsrConfig(), oracle_prefix=True))
    assert (asr.oracle_prefix, asr.oracle_noise, asr.oracle_dropout) == (False, 0.0, 0.0)
    assert plan_trained_asr(ModelConfig(), {}, TrainConfig(), AsrConfig(asr_weights=str(old)))[
        "trained_as"]["oracle_prefix"] is False
