"""train.py --task asr --op eval and --op predict on tiny models: every evaluation gets a folder of
its own, corpora of one name stay apart, a test set is never silently shortened, corpus errors
come before the model is loaded; predict skips bad audio only when asked, and says so."""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import shutil
from pathlib import Path

import pytest
from speech_fixtures import LIBRISPEECH_UTTERANCES, make_librispeech, write_tone

from conrwkv.asr import run as run_asr
from conrwkv.asr.tiny_models import make_tiny_encoder, make_tiny_llm
from conrwkv.config import AsrConfig, ModelConfig, TrainConfig
from conrwkv.io import atomic_torch_save
from conrwkv.train.step_files import weights_path

N = len(LIBRISPEECH_UTTERANCES)


# tiny models: one torch thread for the whole module (asr_factories.one_torch_thread)
pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"encoder": str(make_tiny_encoder(root / "encoder")),
            "llm": str(make_tiny_llm(root / "llm.pth", n_layer=1, n_embd=32))}


@pytest.fixture
def run(models, tmp_path):
    """Untrained (fresh) weights saved as the run's asr-step000003.pth, and the configs to eval them."""
    train_cfg = TrainConfig(proj_dir=str(tmp_path / "run"), load_model=models["llm"], micro_bsz=2,
                            accelerator="cpu", devices="1")
    asr = AsrConfig(encoder=models["encoder"], projector_hidden=32, max_tokens_per_second=2.0)
    speech = run_asr.build_speech_model({}, train_cfg, asr)
    weights = weights_path(train_cfg.proj_dir, "asr", 3)
    atomic_torch_save(speech.trainable_state_dict(), weights)
    record = {"model": dataclasses.asdict(speech.llm.config), "train": dataclasses.asdict(train_cfg),
              "asr": dataclasses.asdict(asr)}
    weights.with_suffix(".json").write_text(json.dumps(record))     # what training writes beside them
    return train_cfg, asr


def test_each_evaluation_gets_its_own_folder(run, tmp_path):
    train_cfg, asr = run
    asr.eval_data = str(make_librispeech(tmp_path / "data", "test-clean"))
    first = run_asr.eval_asr(ModelConfig(), {}, train_cfg, asr)
    proj = tmp_path / "run"
    assert first["eval_dir"] == str(proj / "eval-asr-step000003-beam1-tps2")
    first_files = {p.name: p.read_bytes() for p in (proj / "eval-asr-step000003-beam1-tps2").iterdir()}
    assert set(first_files) == {"test-clean.hyp.txt", "test-clean.ref.txt", "test-clean.wer.json",
                                "summary.json"}
    again = run_asr.eval_asr(ModelConfig(), {}, train_cfg, asr)
    assert again["eval_dir"] == str(proj / "eval-asr-step000003-beam1-tps2-2")
    asr.beam = 2
    beam2 = run_asr.eval_asr(ModelConfig(), {}, train_cfg, asr)
    assert beam2["eval_dir"] == str(proj / "eval-asr-step000003-beam2-tps2")
    kept = {p.name: p.read_bytes() for p in (proj / "eval-asr-step000003-beam1-tps2").iterdir()}
    assert kept == first_files
    saved = json.loads((proj / "eval-asr-step000003-beam2-tps2" / "summary.json").read_text())
    assert saved["beam"] == 2 and saved["eval_dir"] == beam2["eval_dir"]


def test_corpora_of_one_folder_name_keep_their_own_rows(run, tmp_path, capsys):
    train_cfg, asr = run
    a = make_librispeech(tmp_path / "a", "test-clean")
    make_librispeech(tmp_path / "b", "test-clean")
    b = tmp_path / "b" / "test-clean"
    shutil.move(tmp_path / "b" / "LibriSpeech" / "test-clean", b)
    # b's transcripts differ, so its rows cannot be a's
    for trans in b.glob("*/*/*.trans.txt"):
        trans.write_text(trans.read_text().replace("THE", "A"))
    asr.eval_data = f"{a},{b}"
    summary = run_asr.eval_asr(ModelConfig(), {}, train_cfg, asr)
    assert list(summary["splits"]) == ["LibriSpeech-test-clean", "b-test-clean"]
    assert summary["splits"]["b-test-clean"]["corpus"] == str(b)
    out = tmp_path / "run" / "eval-asr-step000003-beam1-tps2"
    assert "THE" in (out / "LibriSpeech-test-clean.ref.txt").read_text()
    assert "THE" not in (out / "b-test-clean.ref.txt").read_text()
    printed = capsys.readouterr().out
    assert "| LibriSpeech-test-clean | 5 / 5 |" in printed and "| b-test-clean | 5 / 5 |" in printed


def test_a_test_set_is_scored_whole_and_a_filter_is_reported(run, tmp_path, capsys):
    train_cfg, asr = run
    asr.max_duration = 1.0                       # a training filter: the 1.25 s utterance stays in
    root = tmp_path / "data"
    make_librispeech(root, "test-clean")
    make_librispeech(root, "test-other")
    (root / "LibriSpeech" / "test-other" / "26" / "495" / "26-495-0001.flac").write_bytes(b"")
    asr.eval_data = f"{root}:test-clean,{root / 'LibriSpeech'}:test-other"
    asr.skip_bad_audio = True
    summary = run_asr.eval_asr(ModelConfig(), {}, train_cfg, asr)
    clean, other = summary["splits"]["test-clean"], summary["splits"]["test-other"]
    assert (clean["utterances_in_corpus"], clean["utterances_scored"], clean["utterances"]) == (N, N, N)
    assert other["utterances_scored"] == N - 1 and other["left_out"] == {
        "longer_than_eval_max_duration": 0, "bad_audio": 1}
    printed = capsys.readouterr().out
    assert "| test-other | 4 / 5 |" in printed
    assert "test-other: 1 of 5 utterances not scored: 1 with bad audio (--skip_bad_audio)" in printed

    asr.eval_max_duration = 0.9
    summary = run_asr.eval_asr(ModelConfig(), {}, train_cfg, asr)
    assert summary["eval_dir"].endswith("eval-asr-step000003-beam1-tps2-max0.9s")
    assert summary["splits"]["test-clean"]["utterances_scored"] == 3
    assert summary["splits"]["test-clean"]["left_out"]["longer_than_eval_max_duration"] == 2
    assert "test-clean: 2 of 5 utterances not scored: 2 longer than --eval_max_duration 0.9 s" in (
        capsys.readouterr().out)


def test_both_normalisers_are_in_the_summary_and_the_table(run, tmp_path, capsys):
    train_cfg, asr = run
    asr.eval_data = str(make_librispeech(tmp_path / "data", "test-clean"))
    split = run_asr.eval_asr(ModelConfig(), {}, train_cfg, asr)["splits"]["test-clean"]
    assert split["normalizer"] == "project" and split["whisper"]["normalizer"] == "whisper"
    assert {"wer", "substitutions", "deletions", "insertions", "reference_words"} <= set(split["whisper"])
    header = capsys.readouterr().out.split("\n| split |")[1].splitlines()[0]
    assert "WER %" in header and "Whisper-norm. WER %" in header


def test_corpus_errors_come_before_the_model_is_loaded(run, tmp_path, monkeypatch):
    train_cfg, asr = run
    make_librispeech(tmp_path / "data", "test-clean")
    make_librispeech(tmp_path / "data", "test-other")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the corpora were checked")

    monkeypatch.setattr(run_asr, "build_speech_model", no_model)
    asr.eval_data = str(tmp_path / "data")
    with pytest.raises(ValueError, match=r"holds several splits \(test-clean, test-other\); name one as "
                                         r"PATH:SPLIT, e.g. --eval_data .*data:test-clean"):
        run_asr.eval_asr(ModelConfig(), {}, train_cfg, asr)
    asr.eval_data = f"{tmp_path / 'data'}:test-clean,{tmp_path / 'data'}:dev-clean"
    with pytest.raises(ValueError, match="has no split 'dev-clean'"):
        run_asr.eval_asr(ModelConfig(), {}, train_cfg, asr)
    asr.eval_data = ""
    train_cfg.val_file = str(tmp_path / "data")
    with pytest.raises(ValueError, match=r"^--val_file: .* holds several splits"):
        run_asr.eval_asr(ModelConfig(), {}, train_cfg, asr)
    assert not list((tmp_path / "run").glob("eval-*"))


def test_predict_stops_at_a_bad_file_unless_asked_to_skip_it(run, tmp_path, capsys, caplog):
    train_cfg, asr = run
    folder = tmp_path / "audio"
    write_tone(folder / "a.flac", 0.6)
    (folder / "b.flac").write_bytes(b"")
    write_tone(folder / "c.wav", 0.4)
    asr.audio = str(folder)
    with pytest.raises(ValueError, match=r"^--audio: audio file .*b.flac is empty \(0 bytes\) "
                                         r"\(--skip_bad_audio skips such files\)$"):
        run_asr.predict_asr(ModelConfig(), {}, train_cfg, asr)
    asr.skip_bad_audio = True
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="conrwkv.asr.run"):
        result = run_asr.predict_asr(ModelConfig(), {}, train_cfg, asr)
    assert sorted(result["texts"]) == [str(folder / "a.flac"), str(folder / "c.wav")]
    assert result["skipped"] == [str(folder / "b.flac")]
    assert f"skipping {folder / 'b.flac'} (bad audio 1 so far): audio file" in caplog.text
    assert "is empty (0 bytes)" in caplog.text
    assert "2 files transcribed (1 of 3 skipped as bad audio)" in capsys.readouterr().out

    asr.audio = f"{folder / 'b.flac'}"
    with pytest.raises(ValueError, match=r"all 1 files are bad audio; nothing to transcribe"):
        run_asr.predict_asr(ModelConfig(), {}, train_cfg, asr)


def test_compile_gives_the_same_hypotheses_with_one_graph_for_every_prefix_length(run, tmp_path, monkeypatch):
    import torch

    from conrwkv.model import RWKV

    train_cfg, asr = run
    asr.eval_data = str(make_librispeech(tmp_path / "data", "test-clean"))
    eager = run_asr.eval_asr(ModelConfig(), {}, train_cfg, asr)
    graphs, calls = [], []
    original = RWKV.compile_model

    def recording(model, **options):
        calls.append(options)

        def backend(graph, example_inputs):
            graphs.append(graph)
            return graph.forward
        original(model, backend=backend, **options)

    decode_mod = importlib.import_module("conrwkv.asr.decode")     # the package's `decode` is the function

    lengths = set()
    run_prefixes = decode_mod.run_prefixes

    def recording_prefixes(llm, prefixes):
        lengths.update((len(prefixes), p.shape[0]) for p in prefixes)
        return run_prefixes(llm, prefixes)

    monkeypatch.setattr(RWKV, "compile_model", recording)
    monkeypatch.setattr(decode_mod, "run_prefixes", recording_prefixes)
    torch._dynamo.reset()
    compiled = run_asr.eval_asr(ModelConfig(), {}, dataclasses.replace(train_cfg, compile=True), asr)
    assert calls == [{"dynamic": True}]
    # prefills of many (batch, length) shapes and the one-token step, in a few graphs (sizes 1
    # are specialised): not a graph per shape
    assert len(graphs) <= 4 < len(lengths), (len(graphs), sorted(lengths))
    hyp = "test-clean.hyp.txt"
    assert (Path(compiled["eval_dir"]) / hyp).read_text() == (Path(eager["eval_dir"]) / hyp).read_text()
