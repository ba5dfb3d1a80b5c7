"""train.py --task asr end to end on CPU with tiny models: train, resume, eval, predict, merge."""

import dataclasses
import json
from pathlib import Path

import jiwer
import pytest
import torch
from speech_fixtures import make_librispeech

from conrwkv.asr import run as run_asr
from conrwkv.asr.tiny_models import make_tiny_encoder, make_tiny_llm
from conrwkv.config import AsrConfig, ModelConfig, TrainConfig
from conrwkv.io import safe_torch_load
from conrwkv.model import RWKV


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("asr")
    train = make_librispeech(root, "train-clean-100")
    test = make_librispeech(root, "test-clean")
    encoder = make_tiny_encoder(root / "encoder")
    llm = make_tiny_llm(root / "llm.pth", n_layer=2, n_embd=32)
    return dict(root=root, train=str(train), test=str(test), encoder=str(encoder), llm=str(llm))


def configs(setup, proj, **train):
    base = dict(proj_dir=str(proj), data_file=setup["train"], val_file=setup["test"],
                load_model=setup["llm"], micro_bsz=2, max_steps=6, lr_init=1e-3, lr_final=1e-4,
                warmup_steps=0, accelerator="cpu", devices="1", seed=0)
    base.update(train)
    asr = AsrConfig(encoder=setup["encoder"], projector_hidden=64, beam=2)
    return ModelConfig(), TrainConfig(**base), asr


def val_loss(setup, weights, asr, conv=0):
    from conrwkv.asr.data import speech_dataset
    from conrwkv.data.tokenizer import WorldTokenizer

    model_given = {"conv_kernel": conv} if conv else {}
    _, train_cfg, _ = configs(setup, "unused")
    speech = run_asr.build_speech_model(model_given, train_cfg, asr)
    if weights:
        speech.load_trainable_state_dict(safe_torch_load(weights))
    data = speech_dataset(setup["test"], asr)
    items = [data[i] for i in range(len(data))]
    tok = WorldTokenizer()
    with torch.no_grad():
        return speech.loss([i["audio"] for i in items], [tok.encode(i["text"].lower()) for i in items]).item()


def test_training_saves_only_the_trained_tensors_and_lowers_the_loss(setup, tmp_path):
    model_cfg, train_cfg, asr = configs(setup, tmp_path / "run", max_steps=12, save_every=6)
    before = val_loss(setup, None, asr, conv=3)
    run_asr.train_asr(model_cfg, {"conv_kernel": 3}, train_cfg, asr)
    names = sorted(p.name for p in (tmp_path / "run").glob("asr-step*.pth"))
    assert names == ["asr-step000006.pth", "asr-step000012.pth"]
    saved = safe_torch_load(tmp_path / "run" / names[-1])
    expected = ({f"llm.blocks.{i}.att.time_state" for i in range(2)}
                | {f"llm.blocks.{i}.att.conv.{p}" for i in range(2) for p in ("weight", "bias")}
                | {"projector.mlp.0.weight", "projector.mlp.0.bias", "projector.mlp.2.weight",
                   "projector.mlp.2.bias"})
    assert set(saved) == expected
    resume = torch.load(tmp_path / "run" / "checkpoints" / "step12.ckpt", weights_only=False)
    assert {k.removeprefix("model.") for k in resume["state_dict"]} == expected   # no frozen LLM
    meta = json.loads((tmp_path / "run" / "asr-step000012.json").read_text())
    assert meta["asr"]["encoder"] == setup["encoder"] and meta["model"]["conv_kernel"] == 3
    # The sidecar says how long training took to reach its step (what the ablation table shows).
    first = json.loads((tmp_path / "run" / "asr-step000006.json").read_text())
    assert (first["step"], meta["step"]) == (6, 12)
    assert all(isinstance(m["train_seconds"], float) for m in (first, meta))
    assert 0 <= first["train_seconds"] <= meta["train_seconds"] < 600
    assert val_loss(setup, tmp_path / "run" / names[-1], asr, conv=3) < before - 0.05


def test_resume_loads_the_trained_tensors_and_continues(setup, tmp_path):
    model_cfg, train_cfg, asr = configs(setup, tmp_path / "run", max_steps=4, save_every=2)
    run_asr.train_asr(model_cfg, {}, train_cfg, asr)
    step4 = safe_torch_load(tmp_path / "run" / "asr-step000004.pth")
    train_cfg.max_steps = 6
    run_asr.train_asr(model_cfg, {}, train_cfg, asr)
    names = sorted(p.name for p in (tmp_path / "run").glob("asr-step*.pth"))
    assert names == ["asr-step000002.pth", "asr-step000004.pth", "asr-step000006.pth"]
    step6 = safe_torch_load(tmp_path / "run" / "asr-step000006.pth")
    moved = [k for k in step4 if not torch.equal(step4[k], step6[k])]
    assert "llm.blocks.0.att.time_state" in moved
    # the relaunch started from step 4's tensors, not from a fresh projector
    fresh = run_asr.build_speech_model({}, train_cfg, asr).trainable_state_dict()
    delta_resumed = (step6["projector.mlp.0.weight"] - step4["projector.mlp.0.weight"]).norm()
    delta_fresh = (step6["projector.mlp.0.weight"] - fresh["projector.mlp.0.weight"]).norm()
    assert delta_resumed < delta_fresh


def test_eval_predict_and_merge(setup, tmp_path, capsys):
    model_cfg, train_cfg, asr = configs(setup, tmp_path / "run", max_steps=2)
    run_asr.train_asr(model_cfg, {}, train_cfg, asr)
    capsys.readouterr()

    asr.eval_data = setup["test"]
    summary = run_asr.eval_asr(model_cfg, {}, train_cfg, asr)
    out = tmp_path / "run" / "eval-asr-step000002-beam2-tps8"
    assert summary["eval_dir"] == str(out)
    refs = dict(line.split(" ", 1) for line in (out / "test-clean.ref.txt").read_text().splitlines())
    hyps = {}
    for line in (out / "test-clean.hyp.txt").read_text().splitlines():
        key, _, text = line.partition(" ")
        hyps[key] = text
    from conrwkv.eval.wer import normalize_text
    ids = sorted(refs)
    expected = jiwer.wer([normalize_text(refs[i]) for i in ids],
                         [normalize_text(hyps[i]) or "<empty>" for i in ids])
    assert summary["splits"]["test-clean"]["wer"] == pytest.approx(expected, abs=0.02)
    assert "| test-clean |" in capsys.readouterr().out

    asr.audio = setup["test"]
    result = run_asr.predict_asr(model_cfg, {}, train_cfg, asr)
    printed = capsys.readouterr().out
    assert len(result["texts"]) == len(refs) and "real-time factor" in printed

    merged = Path(run_asr.merge_asr(model_cfg, {}, train_cfg, asr)["merged"])
    llm = RWKV.from_checkpoint(merged)
    trained = safe_torch_load(tmp_path / "run" / "asr-step000002.pth")
    assert llm.config.state_tuning
    torch.testing.assert_close(llm.blocks[1].att.time_state.float(),
                               trained["llm.blocks.1.att.time_state"])
    before = merged.read_bytes()
    with pytest.raises(FileExistsError, match=r"merged-llm.pth exists; choose another --merge_out"):
        run_asr.merge_asr(model_cfg, {}, train_cfg, asr)
    assert merged.read_bytes() == before
    asr.merge_out = str(tmp_path / "exports" / "mine.pth")
    assert run_asr.merge_asr(model_cfg, {}, train_cfg, asr)["merged"] == asr.merge_out
    assert RWKV.from_checkpoint(asr.merge_out).config.state_tuning

    # The command line says so in one line, names the flag, and exits 2.
    cli = _train_py()
    argv = ["--task", "asr", "--op", "merge", "--proj_dir", str(tmp_path / "run"),
            "--merge_out", asr.merge_out]            # the rest comes from the weights' record
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == (f"train.py: error: {asr.merge_out} exists; choose another --merge_out (an existing "
                   f"file is never overwritten)\n")


def _train_py():
    """What train.py runs (it calls conrwkv.cli.main)."""
    from conrwkv import cli

    return cli


def test_missing_inputs_are_clear_errors(setup, tmp_path):
    model_cfg, train_cfg, asr = configs(setup, tmp_path / "run")
    with pytest.raises(ValueError, match="no trained weights"):
        run_asr.eval_asr(model_cfg, {}, train_cfg, asr)
    asr.audio = str(tmp_path / "nothing.flac")
    with pytest.raises(FileNotFoundError, match="nothing.flac does not exist"):
        run_asr.predict_asr(model_cfg, {}, train_cfg, asr)
    with pytest.raises(ValueError, match="--load_model is required"):
        run_asr.train_asr(model_cfg, {}, TrainConfig(data_file=setup["train"]), asr)


def test_compile_flag_traces_the_whole_llm_as_one_graph(setup, tmp_path, monkeypatch):
    # The LLM's body is traced with fullgraph=True, so a graph break anywhere in the ASR forward
    # would fail here; the "eager" backend runs the traced graph as it is (inductor's CPU code
    # generation would take minutes for the batches' several lengths).
    # test_lm_training compares a compiled training with an eager one.
    from conrwkv.model import RWKV

    graphs, modes, lengths = [], [], []
    original = RWKV.compile_model

    def recording(model, mode, **options):
        modes.append(mode)

        def backend(graph, example_inputs):
            graphs.append(graph)
            lengths.append(next(x.shape[1] for x in example_inputs if isinstance(x, torch.Tensor)
                                and x.dim() == 3 and x.shape[-1] == model.config.n_embd))
            return graph.forward
        original(model, backend=backend, **options)

    monkeypatch.setattr(RWKV, "compile_model", recording)
    torch._dynamo.reset()
    model_cfg, train_cfg, asr = configs(setup, tmp_path / "run", max_steps=2, compile=True,
                                        compile_mode="reduce-overhead")
    asr = dataclasses.replace(asr, length_bucket=64)
    run_asr.train_asr(model_cfg, {}, train_cfg, asr)
    assert graphs and (tmp_path / "run" / "asr-step000002.pth").is_file()
    assert modes == ["reduce-overhead"]
    assert lengths and all(n % 64 == 0 for n in lengths), lengths   # the training batches, bucketed
    inputs = " ".join(n.name for n in graphs[0].graph.nodes if n.op == "placeholder")
    assert "blocks_modules_0" in inputs and "blocks_modules_1" in inputs   # both blocks, one graph


def truncate_flac(path):
    """Keep the header (the duration still reads) but not enough frames to decode."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_corpus_whose_audio_is_all_undecodable_is_an_error_not_a_silent_run(setup, tmp_path):
    import shutil

    corpus = tmp_path / "LibriSpeech" / "train-clean-100"
    shutil.copytree(setup["train"], corpus)
    for flac in corpus.rglob("*.flac"):
        truncate_flac(flac)
    model_cfg, train_cfg, asr = configs(setup, tmp_path / "run", data_file=str(corpus), max_steps=4,
                                        save_every=2)
    asr.skip_bad_audio = True
    with pytest.raises(ValueError, match="none of the [34] training utterances read since this "
                                         "launch started could be decoded"):
        run_asr.train_asr(model_cfg, {}, train_cfg, asr)
    assert not list((tmp_path / "run").glob("asr-step*.pth"))


def test_batches_of_only_bad_files_still_step_and_are_counted(setup, tmp_path):
    import shutil

    corpus = tmp_path / "LibriSpeech" / "train-clean-100"
    shutil.copytree(setup["train"], corpus)
    for name in ("19-198-0001", "26-495-0001"):                  # the two longest: one batch
        truncate_flac(next(corpus.rglob(f"{name}.flac")))
    model_cfg, train_cfg, asr = configs(setup, tmp_path / "run", data_file=str(corpus), max_steps=6)
    asr.skip_bad_audio = True
    run_asr.train_asr(model_cfg, {}, train_cfg, asr)
    assert (tmp_path / "run" / "asr-step000006.pth").is_file()   # every batch made a step
    sidecar = json.loads((tmp_path / "run" / "asr-step000006.json").read_text())
    assert sidecar["metrics"]["train/skipped_audio"] == 4.0       # two epochs of 3 batches


def test_bf16_true_is_refused_for_state_tuning(setup, tmp_path):
    model_cfg, train_cfg, asr = configs(setup, tmp_path / "run", precision="bf16-true")
    with pytest.raises(ValueError, match="bf16-true would cast the trained initial states"):
        run_asr.train_asr(model_cfg, {}, train_cfg, asr)


def test_dry_runs_print_what_the_commands_will_use(setup, tmp_path, capsys):
    cli = _train_py()
    assert cli.main(["--task", "asr", "--load_model", setup["llm"], "--conv_kernel", "3",
                     "--accelerator", "cpu", "--dry_run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["llm"]["from"] == setup["llm"] and plan["llm"]["n_embd"] == 32
    assert plan["llm"]["state_tuning"] and plan["llm"]["conv_kernel"] == 3
    assert plan["hardware"]["precision"] == "32-true"

    model_cfg, train_cfg, asr = configs(setup, tmp_path / "run", max_steps=2)
    run_asr.train_asr(model_cfg, {"conv_kernel": 3}, train_cfg, asr)
    capsys.readouterr()
    # eval takes the model as it was trained from the weights' record: no model flags needed
    assert cli.main(["--task", "asr", "--op", "eval", "--proj_dir", str(tmp_path / "run"),
                     "--dry_run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["weights"].endswith("asr-step000002.pth")
    assert plan["trained_as"]["projector_hidden"] == 64 and plan["trained_as"]["encoder"] == setup["encoder"]
    assert plan["llm"]["conv_kernel"] == 3 and plan["llm"]["from"] == setup["llm"]

