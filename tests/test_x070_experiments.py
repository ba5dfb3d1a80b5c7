"""RWKV-7 (x070) in both experiments, on CPU with tiny models: `train.py --task lm --arch x070`
trains from scratch on Markov chains and ends with the ICL evaluation; `--task asr` state-tunes
an RWKV-7 file (with and without the conv, and the LoRA, full and oracle arms), evaluates, and
merges into a file that the `rwkv` package runs; bad x070 input is a one-line error."""

import json
import re
from pathlib import Path

import pytest
import torch
from factories import markov_folder, random_checkpoint
from speech_fixtures import make_librispeech

from conrwkv import cli
from conrwkv.asr import run as run_asr
from conrwkv.asr.tiny_models import make_tiny_encoder, make_tiny_llm
from conrwkv.config import AsrConfig, ModelConfig, TrainConfig
from conrwkv.io import safe_torch_load
from conrwkv.model import RWKV

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# Every linear layer of an x070 block, written out here (not read from the code under test).
X070_LORA_TARGETS = "att.receptance,att.key,att.value,att.output,ffn.key,ffn.value"
TOKENS = [36, 1000, 65535, 7, 36, 500]


# ---------------------------------------------------------------- --task lm
def test_train_py_trains_x070_from_scratch_and_evaluates_in_context_learning(tmp_path_factory, tmp_path,
                                                                             capsys):
    data = markov_folder(tmp_path_factory, order=1, seq_len=65, n_train=600, n_val=64, seed=1)
    argv = ["--task", "lm", "--op", "train", "--data_file", str(data), "--vocab_size", "2",
            "--arch", "x070", "--n_layer", "2", "--n_embd", "32", "--head_size", "16",
            "--conv_kernel", "2", "--ctx_len", "64", "--micro_bsz", "16", "--max_steps", "40",
            "--lr_init", "3e-3", "--lr_final", "3e-4", "--warmup_steps", "5", "--accelerator", "cpu",
            "--devices", "1", "--proj_dir", str(tmp_path / "run")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "Bayes-optimal" in out and "gap" in out
    weights = tmp_path / "run" / "rwkv-step000040.pth"
    icl = json.loads(weights.with_name("rwkv-step000040-icl.json").read_text())
    assert icl["loss"] < 0.62 < 0.693                      # uniform guessing costs ln 2
    loaded = RWKV.from_checkpoint(weights)
    assert (loaded.config.arch, loaded.config.conv_kernel, loaded.config.n_layer) == ("x070", 2, 2)
    assert "blocks.1.att.v1" in safe_torch_load(weights)   # official x070 keys


def test_the_icl_sweep_trains_every_run_as_the_architecture_it_is_given(tmp_path):
    from conrwkv.lm import sweep as icl_sweep
    from conrwkv.train.flags import take

    for extra, arch in (([], "x060"), (["--arch", "x070"], "x070")):
        args = icl_sweep.parse_args(["--out", str(tmp_path), *extra])
        command = icl_sweep.train_command(args, tmp_path / "k1", tmp_path / "run", kernel=2, depth=1,
                                          seed=0)
        parsed = cli.build_parser("lm", "train").parse_args(command[3:])   # after python -m conrwkv
        assert take(ModelConfig, parsed)[0].arch == arch


# ---------------------------------------------------------------- --task asr
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("asr-x070")
    return dict(train=str(make_librispeech(root, "train-clean-100")),
                test=str(make_librispeech(root, "test-clean")),
                encoder=str(make_tiny_encoder(root / "encoder")),
                llm=str(make_tiny_llm(root / "llm7.pth", n_layer=2, n_embd=32, arch="x070")))


def configs(setup, proj, **asr):
    train_cfg = TrainConfig(proj_dir=str(proj), data_file=setup["train"], val_file=setup["test"],
                            load_model=setup["llm"], micro_bsz=2, max_steps=3, lr_init=1e-3,
                            lr_final=1e-4, warmup_steps=0, accelerator="cpu", devices="1", seed=0)
    return train_cfg, AsrConfig(encoder=setup["encoder"], projector_hidden=32, beam=2, **asr)


def test_the_tiny_llm_is_an_official_x070_file(setup):
    config = RWKV.config_from_checkpoint(setup["llm"])
    assert (config.arch, config.n_layer, config.n_embd, config.head_size) == ("x070", 2, 32, 16)


def test_tiny_models_writes_an_rwkv7_beside_the_rwkv6(tmp_path):
    from conrwkv.asr import tiny_models

    (tmp_path / "encoder").mkdir()
    (tmp_path / "encoder" / "config.json").write_text("{}")     # present: not remade
    for arch in ("x070", "x060"):
        argv = ["--out", str(tmp_path), "--arch", arch, "--n_layer", "1", "--n_embd", "32"]
        assert tiny_models.main(argv) == 0
    assert RWKV.config_from_checkpoint(tmp_path / "rwkv7-tiny.pth").arch == "x070"
    assert RWKV.config_from_checkpoint(tmp_path / "rwkv-tiny.pth").arch == "x060"


def package_logits(tmp_path, path: Path) -> torch.Tensor:
    """The `rwkv` package's RWKV_x070 on `path`, started from the file's time_state."""
    pytest.importorskip("rwkv")
    from test_parity_rwkv7_package import run_package

    sd = safe_torch_load(path)
    n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    state = [sd[f"blocks.{i}.att.time_state"] for i in range(n_layer)]
    return run_package(tmp_path, path, TOKENS, state)["seq_logits"]


@pytest.mark.parametrize("conv", [0, 3], ids=["state", "state-conv"])
def test_state_tuning_trains_evaluates_and_merges_an_x070_file(setup, tmp_path, conv):
    train_cfg, asr = configs(setup, tmp_path / "run")
    given = {"conv_kernel": conv} if conv else {}
    run_asr.train_asr(ModelConfig(), given, train_cfg, asr)
    trained = safe_torch_load(tmp_path / "run" / "asr-step000003.pth")
    assert ("llm.blocks.1.att.conv.weight" in trained) == bool(conv)
    assert trained["llm.blocks.1.att.time_state"].abs().sum() > 0

    asr.eval_data = setup["test"]
    summary = run_asr.eval_asr(ModelConfig(), {}, train_cfg, asr)
    assert 0 <= summary["splits"]["test-clean"]["wer"]

    merged = Path(run_asr.merge_asr(ModelConfig(), {}, TrainConfig(proj_dir=str(tmp_path / "run")),
                                    AsrConfig())["merged"])
    llm = RWKV.from_checkpoint(merged)
    assert (llm.config.arch, llm.config.state_tuning, llm.config.conv_kernel) == ("x070", True, conv)
    torch.testing.assert_close(llm.blocks[1].att.time_state.float(), trained["llm.blocks.1.att.time_state"])
    if conv:
        # A conv file runs in this project's RWKV only; the trained conv is in it.
        torch.testing.assert_close(llm.blocks[0].att.conv.weight.float(),
                                   trained["llm.blocks.0.att.conv.weight"])
        return
    with torch.no_grad():
        ours, _ = llm(torch.tensor([TOKENS]))
        untuned, _ = RWKV.from_checkpoint(setup["llm"])(torch.tensor([TOKENS]))
    theirs = package_logits(tmp_path, merged)
    assert (theirs - ours[0]).norm() / ours[0].norm() < 1e-4
    assert (untuned - ours).norm() / ours.norm() > 1e-3           # the trained state matters


def test_lora_on_x070_takes_every_linear_layer_by_default_and_trains_and_merges(setup, tmp_path):
    train_cfg, asr = configs(setup, tmp_path / "run", llm_train="lora", lora_rank=2,
                             lr_llm_init=1e-2, lr_llm_final=1e-3)
    # A layer only RWKV-6 has, asked for by name: the error names the flag and x070's layers.
    asr.lora_targets = "att.key,att.gate"
    with pytest.raises(ValueError, match=r"--lora_targets .*att\.gate matches no "
                                         r"linear layer of the LLM; its linear layers are att\.key, "
                                         r"att\.output, att\.receptance, att\.value, ffn\.key, "
                                         r"ffn\.value, head"):
        run_asr.build_speech_model({}, train_cfg, asr)
    asr.lora_targets = AsrConfig().lora_targets        # the default: every linear layer of a block
    run_asr.train_asr(ModelConfig(), {}, train_cfg, asr)
    saved = safe_torch_load(tmp_path / "run" / "asr-step000003.pth")
    assert {k.split(".lora_")[0] for k in saved if ".lora_" in k} == {
        f"llm.blocks.{i}.{t}" for i in range(2) for t in X070_LORA_TARGETS.split(",")}
    assert saved["llm.blocks.0.att.key.lora_B.default.weight"].abs().sum() > 0

    merged = Path(run_asr.merge_asr(ModelConfig(), {}, TrainConfig(proj_dir=str(tmp_path / "run")),
                                    AsrConfig())["merged"])
    assert not any(".lora_" in k or "base_layer" in k for k in safe_torch_load(merged))
    speech, _ = run_asr.load_trained({}, TrainConfig(proj_dir=str(tmp_path / "run")), AsrConfig())
    with torch.no_grad():
        adapted, _ = speech.llm(torch.tensor([TOKENS]))
    theirs = package_logits(tmp_path, merged)
    assert (theirs - adapted[0]).norm() / adapted[0].norm() < 1e-4


@pytest.mark.parametrize("asr", [dict(llm_train="full"), dict(oracle_prefix=True)], ids=["full", "oracle"])
def test_the_full_and_oracle_arms_train_an_x070_llm(setup, tmp_path, asr):
    train_cfg, asr_cfg = configs(setup, tmp_path / "run", **asr)
    train_cfg.max_steps = 2
    if asr_cfg.oracle_prefix:
        asr_cfg.encoder = ""                          # the oracle reads no speech
    run_asr.train_asr(ModelConfig(), {}, train_cfg, asr_cfg)
    saved = safe_torch_load(tmp_path / "run" / "asr-step000002.pth")
    assert "llm.blocks.1.att.time_state" in saved
    assert ("llm.blocks.1.att.w1" in saved) == (asr_cfg.llm_train == "full")
    assert not any(k.startswith("projector.") for k in saved) == bool(asr_cfg.oracle_prefix)


# ---------------------------------------------------------------- bad input through train.py
def bad_file(tmp_path, edit) -> Path:
    path, model = random_checkpoint(tmp_path / "bad.pth", arch="x070", vocab_size=2, n_embd=32, head_size=16)
    sd = model.official_state_dict()
    edit(sd)
    torch.save(sd, path)
    return path


@pytest.mark.parametrize("edit,message", [
    (lambda sd: sd.pop("blocks.1.att.k_k"), r"bad\.pth: keys missing from the checkpoint: "
                                            r"\['blocks\.1\.att\.k_k'\]"),
    (lambda sd: sd.pop("blocks.0.att.a1"), r"bad\.pth: an x070 checkpoint needs blocks\.0\.att\.a1"),
    # r_k [H, N] gives the head size: 32 / 12 heads of 12 is not a whole number of heads.
    (lambda sd: sd.update({f"blocks.{i}.att.r_k": torch.zeros(3, 12) for i in range(2)}),
     r"dim_att \(32\) must be a multiple of head_size \(12\)"),
], ids=["missing-key", "missing-lora", "head-size"])
def test_a_bad_x070_file_is_a_one_line_error_naming_the_key(tmp_path_factory, tmp_path, capsys, edit,
                                                             message):
    data = markov_folder(tmp_path_factory, order=1, seq_len=17, n_train=8, n_val=8, seed=2)
    argv = ["--task", "lm", "--op", "eval", "--data_file", str(data), "--accelerator", "cpu",
            "--load_model", str(bad_file(tmp_path, edit)), "--proj_dir", str(tmp_path / "run")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("train.py: error: ") and err.count("\n") == 1
    assert re.search(message, err), err


@pytest.mark.parametrize("flags,message", [
    (["--head_size", "24"], r"dim_att \(64\) must be a multiple of head_size \(24\)"),
    (["--wkv_backend", "cuda"], r"wkv_backend 'cuda' \(--wkv_backend\) has no WKV7 implementation"),
], ids=["head-size", "backend"])
def test_an_x070_shape_or_kernel_the_wkv7_op_does_not_take_names_the_flag(tmp_path_factory, tmp_path, capsys,
                                                                          flags, message):
    data = markov_folder(tmp_path_factory, order=1, seq_len=17, n_train=8, n_val=8, seed=2)
    argv = ["--task", "lm", "--op", "train", "--data_file", str(data), "--vocab_size", "2",
            "--arch", "x070", "--n_layer", "1", "--n_embd", "64", "--ctx_len", "16", "--micro_bsz", "4",
            "--max_steps", "1", "--accelerator", "cpu", "--devices", "1",
            "--proj_dir", str(tmp_path / "run"), *flags]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    # Refused before anything runs: the error is all that is printed.
    assert err.startswith("train.py: error: ") and err.count("\n") == 1 and re.search(message, err), err
