"""The ICL evaluation's files: a re-run never replaces an earlier one's JSON and plot, the summary
and the printed message name the files actually written, and a ctx_len longer than the chains
is cut to the predictions a chain has."""

import json

import pytest
from factories import randomize_, tiny_config

from conrwkv.config import ModelConfig, TrainConfig
from conrwkv.data.markov import MarkovDataParams, write_markov_dataset
from conrwkv.eval.fresh_names import new_files, new_folder
from conrwkv.lm.icl_eval import evaluate_and_plot
from conrwkv.lm.run import eval_lm
from conrwkv.model import RWKV

SEQ_LEN = 17                       # 16 predictions per chain


@pytest.fixture(scope="module")
def markov_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("icl") / "k1"
    write_markov_dataset(out, MarkovDataParams(order=1, seq_len=SEQ_LEN, n_train=40, n_val=8, seed=3),
                         progress=False)
    return out


def tiny_markov_model() -> RWKV:
    return randomize_(RWKV(tiny_config(vocab_size=2, n_layer=1, n_embd=32)), seed=2).eval()


def test_a_rerun_writes_new_files_and_keeps_the_first(markov_dir, tmp_path):
    model = tiny_markov_model()
    weights = tmp_path / "rwkv-step000010.pth"
    first = evaluate_and_plot(model, markov_dir, 16, weights, batch_size=4)
    assert first["files"] == {"json": str(tmp_path / "rwkv-step000010-icl.json"),
                              "plot": str(tmp_path / "rwkv-step000010-icl.png")}
    first_json = (tmp_path / "rwkv-step000010-icl.json").read_bytes()
    second = evaluate_and_plot(model, markov_dir, 8, weights, batch_size=4)
    assert second["files"] == {"json": str(tmp_path / "rwkv-step000010-icl-2.json"),
                               "plot": str(tmp_path / "rwkv-step000010-icl-2.png")}
    assert (tmp_path / "rwkv-step000010-icl.json").read_bytes() == first_json
    assert json.loads(first_json)["positions"] == 16
    assert json.loads((tmp_path / "rwkv-step000010-icl-2.json").read_text())["positions"] == 8
    assert (tmp_path / "rwkv-step000010-icl-2.png").stat().st_size > 0


def test_ctx_len_longer_than_the_chains_uses_every_prediction(markov_dir, tmp_path):
    model = tiny_markov_model()
    exact = evaluate_and_plot(model, markov_dir, SEQ_LEN - 1, tmp_path / "a.pth", batch_size=4)
    longer = evaluate_and_plot(model, markov_dir, 4 * SEQ_LEN, tmp_path / "b.pth", batch_size=4)
    assert longer["positions"] == exact["positions"] == SEQ_LEN - 1
    assert longer["loss"] == pytest.approx(exact["loss"], abs=1e-6)
    assert longer["gap"] == pytest.approx(exact["gap"], abs=1e-6)


def test_eval_lm_prints_the_files_it_wrote(markov_dir, tmp_path, capsys):
    tiny_markov_model().save_checkpoint(tmp_path / "rwkv-step000003.pth")
    (tmp_path / "rwkv-step000003-icl.png").write_bytes(b"an earlier plot")
    train_cfg = TrainConfig(proj_dir=str(tmp_path), data_file=str(markov_dir), ctx_len=64,
                            micro_bsz=4, accelerator="cpu")
    summary = eval_lm(ModelConfig(), {}, train_cfg)["icl"]
    printed = capsys.readouterr().out
    assert summary["files"]["plot"] == str(tmp_path / "rwkv-step000003-icl-2.png")
    assert f"plot {tmp_path / 'rwkv-step000003-icl-2.png'}" in printed
    assert str(tmp_path / "rwkv-step000003-icl-2.json") in printed
    assert (tmp_path / "rwkv-step000003-icl.png").read_bytes() == b"an earlier plot"
    assert not (tmp_path / "rwkv-step000003-icl.json").exists()   # the pair moves on together


def test_fresh_names_count_up_and_never_reuse(tmp_path):
    assert new_folder(tmp_path, "eval-x") == tmp_path / "eval-x"
    assert new_folder(tmp_path, "eval-x") == tmp_path / "eval-x-2"
    (tmp_path / "eval-x-3").mkdir()
    assert new_folder(tmp_path, "eval-x") == tmp_path / "eval-x-4"
    (tmp_path / "w-icl-2.png").write_bytes(b"")
    assert new_files(tmp_path / "w-icl", (".json", ".png")) == [tmp_path / "w-icl.json",
                                                                 tmp_path / "w-icl.png"]
    assert new_files(tmp_path / "w-icl", (".json", ".png")) == [tmp_path / "w-icl-3.json",
                                                                 tmp_path / "w-icl-3.png"]
    assert not (tmp_path / "w-icl-2.json").exists()          # given back when its png was taken
