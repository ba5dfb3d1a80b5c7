"""The trainable-LLM arms of the speech model (--llm_train lora / full): the exact trained and saved
key sets, LoRA (peft) leaving the model unchanged at initialisation, a few optimisation steps
that lower the loss and move only trained tensors, the merged `.pth` run by the `rwkv` package
with the adapted model's logits, clear errors for bad settings, and train -> merge end to end
from the training record."""

from pathlib import Path

import pytest
import torch
from asr_factories import random_audio, tiny_speech_rwkv

from conrwkv.config import LORA_TARGETS, AsrConfig, TrainConfig

pytest.importorskip("transformers")
pytest.importorskip("peft")

TOKENS = [36, 40, 41, 17, 5, 88, 3]


# tiny models: one torch thread for the whole module (asr_factories.one_torch_thread)
pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("speech_rwkv_lora")


def base_keys(train_state: bool = True) -> set[str]:
    keys = {f"projector.mlp.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    return keys | ({f"llm.blocks.{i}.att.time_state" for i in range(2)} if train_state else set())


def lora_keys(targets=LORA_TARGETS) -> set[str]:
    return {f"llm.blocks.{i}.{t}.lora_{m}.default.weight" for i in range(2) for t in targets
            for m in "AB"}


# ---------------------------------------------------------------- what is trained and saved
@pytest.mark.parametrize("targets", [",".join(LORA_TARGETS), "att.key,ffn.value"],
                         ids=["all-linear", "two-targets"])
def test_lora_trains_and_saves_exactly_the_adapters(model_dir, targets):
    model = tiny_speech_rwkv(model_dir, llm_train="lora", lora_targets=targets)
    keys = base_keys() | lora_keys(targets.split(","))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == keys
    assert set(model.trainable_state_dict()) == keys
    groups = model.named_parameter_groups()
    assert set(groups) == {"state", "adapter", "llm"}
    assert set(groups["llm"]) == lora_keys(targets.split(","))
    assert all(p.dtype == torch.float32 for p in model.trainable_state_dict().values())
    # Rank 8 on a 32-wide model: A is [8, in], B [out, 8]; the base weights stay frozen.
    assert groups["llm"]["llm.blocks.0.att.key.lora_A.default.weight"].shape == (8, 32)
    assert groups["llm"]["llm.blocks.0.att.key.lora_B.default.weight"].shape == (32, 8)
    assert not model.llm.blocks[0].att.key.base_layer.weight.requires_grad


@pytest.mark.parametrize("train_state", [True, False], ids=["with-state", "no-state"])
def test_full_trains_and_saves_every_llm_parameter(model_dir, train_state):
    model = tiny_speech_rwkv(model_dir, conv_kernel=4, llm_train="full", train_state=train_state)
    llm = {f"llm.{n}" for n, _ in model.llm.named_parameters()}
    assert "llm.emb.weight" in llm and "llm.head.weight" in llm and len(llm) > 40
    states = {f"llm.blocks.{i}.att.time_state" for i in range(2)}
    keys = base_keys(False) | llm - (set() if train_state else states)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == keys
    assert set(model.trainable_state_dict()) == keys
    groups = model.named_parameter_groups()
    assert set(groups["state"]) == (states if train_state else set())
    assert {"llm.blocks.0.att.conv.weight", "llm.blocks.1.att.conv.bias"} <= set(groups["adapter"])
    assert set(groups["llm"]) == {k for k in llm if k not in states and ".att.conv." not in k}


def test_weights_of_one_arm_do_not_load_into_another(model_dir):
    lora = tiny_speech_rwkv(model_dir, llm_train="lora")
    with pytest.raises(ValueError, match=r"unexpected keys .*lora_A.default.weight.*llm_train"):
        tiny_speech_rwkv(model_dir).load_trainable_state_dict(lora.trainable_state_dict())
    fresh = tiny_speech_rwkv(model_dir, llm_train="lora", seed=0)
    fresh.load_trainable_state_dict(lora.trainable_state_dict())


@pytest.mark.parametrize("llm_train", ["lora", "full"])
def test_a_bf16_llm_trains_its_lora_matrices_or_weights_in_fp32(model_dir, llm_train):
    from conrwkv.asr import SpeechRWKV

    tiny_speech_rwkv(model_dir)                                   # writes the encoder and LLM files
    config = AsrConfig(encoder=str(model_dir / "encoder"), projector_hidden=8, llm_train=llm_train)
    model = SpeechRWKV.from_pretrained(model_dir / "llm-0.pth", config, llm_dtype=torch.bfloat16)
    base = model.llm.blocks[0].att.key
    assert (base.base_layer if llm_train == "lora" else base).weight.dtype == (
        torch.bfloat16 if llm_train == "lora" else torch.float32)
    trained = model.trainable_named_parameters()
    model.loss(random_audio([0.6], seed=5), [[5, 6, 7]]).backward()
    assert all(p.dtype == torch.float32 and p.grad is not None for p in trained.values())


def test_a_fully_trained_llm_is_read_in_fp32_under_bf16_mixed(model_dir):
    from conrwkv.asr.run import build_speech_model
    from conrwkv.io import safe_torch_load

    tiny_speech_rwkv(model_dir)                                   # writes the encoder and LLM files
    llm = model_dir / "llm-0.pth"
    train_cfg = TrainConfig(load_model=str(llm), precision="bf16-mixed", accelerator="cpu")
    asr = AsrConfig(encoder=str(model_dir / "encoder"), projector_hidden=8)
    frozen = build_speech_model({}, train_cfg, asr)
    assert frozen.llm.blocks[0].att.key.weight.dtype == torch.bfloat16
    full = build_speech_model({}, train_cfg, AsrConfig(**{**vars(asr), "llm_train": "full"}))
    assert torch.equal(full.llm.blocks[0].att.key.weight, safe_torch_load(llm)["blocks.0.att.key.weight"])


# ---------------------------------------------------------------- LoRA at initialisation
def test_lora_leaves_the_model_unchanged_at_initialisation(model_dir):
    plain = tiny_speech_rwkv(model_dir)
    lora = tiny_speech_rwkv(model_dir, llm_train="lora")
    assert all(not p.any() for n, p in lora.named_parameters() if ".lora_B." in n)   # peft: B = 0
    with torch.no_grad():
        ours, theirs = lora.llm(torch.tensor([TOKENS]))[0], plain.llm(torch.tensor([TOKENS]))[0]
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
        audio = random_audio([0.8], seed=3)
        assert lora.loss(audio, [[40, 41]]).item() == pytest.approx(
            plain.loss(audio, [[40, 41]]).item(), rel=1e-6)


# ---------------------------------------------------------------- training
@pytest.mark.parametrize("llm_train", ["lora", "full"])
def test_a_few_steps_lower_the_loss_and_move_only_trained_tensors(model_dir, llm_train):
    from conrwkv.asr.module import AsrModule
    from conrwkv.data.tokenizer import WorldTokenizer

    model = tiny_speech_rwkv(model_dir, llm_train=llm_train).train()
    asr = AsrConfig(llm_train=llm_train, lr_llm_init=3e-3, lr_llm_final=1e-3)
    optimizer = AsrModule(model, TrainConfig(lr_init=1e-3, lr_final=1e-4, warmup_steps=0, max_steps=10),
                          asr, WorldTokenizer()).configure_optimizers()["optimizer"]
    assert {g["name"]: g["initial_lr"] for g in optimizer.param_groups}["llm"] == 3e-3
    llm_group = [p for g in optimizer.param_groups if g["name"] == "llm" for p in g["params"]]
    assert {id(p) for p in llm_group} == {id(p) for p in model.named_parameter_groups()["llm"].values()}
    audio = random_audio([0.9, 0.6], seed=6)
    targets = [[40, 41, 42], [43, 44]]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        first = model.loss(audio, targets).item()
    for _ in range(3):
        optimizer.zero_grad()
        model.loss(audio, targets).backward()
        optimizer.step()
    with torch.no_grad():
        last = model.loss(audio, targets).item()
    assert last < first - 1e-3
    trained = model.trainable_named_parameters()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved <= set(trained)
    # Every LoRA matrix moves (A from step 2, once B is non-zero); under full, every block weight.
    expected = (lora_keys() if llm_train == "lora"
                else {f"llm.blocks.{i}.{t}.weight" for i in range(2) for t in LORA_TARGETS})
    assert expected <= moved


# ---------------------------------------------------------------- merged export
def perturb(model, names: str) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if names in name:
                param.normal_(0.0, 0.3)


@pytest.mark.parametrize("llm_train", ["lora", "full"])
def test_merged_pth_runs_in_the_rwkv_package_as_the_adapted_model(model_dir, tmp_path, llm_train):
    from conrwkv.model import RWKV

    rwkv_model = pytest.importorskip("rwkv.model")
    model = tiny_speech_rwkv(model_dir, llm_train=llm_train)
    perturb(model, ".lora_B." if llm_train == "lora" else ".att.key.weight")
    perturb(model, ".time_state")
    path = model.export_merged_llm(tmp_path / "merged.pth")
    plain = set(RWKV.from_checkpoint(model_dir / "llm-0.pth", state_tuning=True).state_dict())
    assert set(torch.load(path, weights_only=True)) == plain      # official names, no peft keys
    with torch.no_grad():
        ours, _ = model.llm(torch.tensor([TOKENS]))
        untuned, _ = tiny_speech_rwkv(model_dir).llm(torch.tensor([TOKENS]))
    reference = rwkv_model.RWKV(str(path), strategy="cpu fp32", verbose=False)
    theirs, _ = reference.forward(TOKENS, None, full_output=True)
    assert (theirs - ours[0]).norm() / ours[0].norm() < 1e-4
    assert (untuned - ours).norm() / ours.norm() > 1e-2           # the trained weights do matter
    if llm_train == "lora":
        # The live model keeps its adapters unmerged: merging wrote a copy.
        assert "blocks.0.att.key.lora_B.default.weight" in model.llm.state_dict()
        assert model.llm.blocks[0].att.key.merged is False


# ---------------------------------------------------------------- bad settings
@pytest.mark.parametrize("settings,message", [
    ({"llm_train": "half"}, r"--llm_train must be one of frozen, lora, full, got 'half'"),
    ({"llm_train": "lora", "lora_rank": 0}, r"--lora_rank must be >= 1 with --llm_train lora, got 0"),
    ({"llm_train": "lora", "lora_alpha": 0}, r"--lora_alpha must be > 0"),
    ({"llm_train": "lora", "lora_dropout": 1.0}, r"--lora_dropout must be in \[0, 1\)"),
    ({"llm_train": "lora", "lora_targets": "att.key,att.nope"},
     r"--lora_targets 'att.key,att.nope': att.nope matches no linear layer of the LLM; its linear "
     r"layers are att.gate, att.key, att.output, att.receptance, att.value, ffn.key, "
     r"ffn.receptance, ffn.value, head \(blocks.N.<name> in every block\)"),
    ({"llm_train": "lora", "lora_targets": " , "}, r"--lora_targets '': no target matches"),
])
def test_bad_settings_are_clear_errors_naming_the_flag(model_dir, settings, message):
    with pytest.raises(ValueError, match=message):
        tiny_speech_rwkv(model_dir, **settings)


def test_lora_settings_are_ignored_while_the_llm_is_frozen(model_dir):
    model = tiny_speech_rwkv(model_dir, lora_rank=0, lora_targets="nothing")
    assert set(model.trainable_state_dict()) == base_keys()


# ---------------------------------------------------------------- flags and the record
def test_flags_reach_train_only_and_the_record_rebuilds_the_arm():
    import argparse

    from conrwkv.asr.plan import TRAINED_AS
    from conrwkv.cli import COMMANDS
    from conrwkv.train.flags import add_dataclass_flags, take

    new = ("llm_train", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets",
           "lr_llm_init", "lr_llm_final")
    assert set(new) <= set(COMMANDS["asr", "train"].asr)
    for op in ("eval", "predict", "merge"):
        assert not set(new) & set(COMMANDS["asr", op].asr), op
    assert set(new[:5]) <= set(TRAINED_AS)
    parser = argparse.ArgumentParser()
    add_dataclass_flags(parser, AsrConfig, "asr")
    cfg = take(AsrConfig, parser.parse_args(["--llm_train", "lora", "--lora_rank", "4",
                                             "--lora_targets", "att.key", "--lr_llm_init", "2e-4"]))[0]
    assert (cfg.llm_train, cfg.lora_rank, cfg.lora_targets, cfg.lr_llm_init) == ("lora", 4, "att.key", 2e-4)
    assert AsrConfig().llm_train == "frozen"
    with pytest.raises(SystemExit):
        parser.parse_args(["--llm_train", "half"])


def test_a_record_from_before_the_arms_rebuilds_a_frozen_llm(tmp_path):
    import json

    from conrwkv.asr.plan import as_trained

    old = {"encoder": "enc", "encoder_trainable": False, "projector": "conv", "downsample": 4,
           "projector_hidden": 16, "train_state": True, "separator": "#"}
    (tmp_path / "asr-step000001.json").write_text(json.dumps(
        {"model": {"conv_kernel": 0, "n_layer": 2, "n_embd": 32}, "train": {"load_model": "llm.pth"},
         "asr": old}))
    _, _, asr = as_trained(tmp_path / "asr-step000001.pth", {}, TrainConfig(),
                           AsrConfig(llm_train="full", lora_rank=3))
    assert (asr.projector, asr.downsample, asr.llm_train, asr.lora_rank) == ("conv", 4, "frozen", 8)


def test_lora_train_then_merge_rebuilds_the_model_from_the_record(tmp_path):
    from speech_fixtures import make_librispeech

    from conrwkv.asr import run as run_asr
    from conrwkv.asr.tiny_models import make_tiny_encoder, make_tiny_llm
    from conrwkv.config import ModelConfig
    from conrwkv.data.tokenizer import WorldTokenizer
    from conrwkv.io import safe_torch_load
    from conrwkv.model import RWKV

    train = make_librispeech(tmp_path, "train-clean-100")
    encoder = make_tiny_encoder(tmp_path / "encoder")
    llm = make_tiny_llm(tmp_path / "llm.pth", n_layer=2, n_embd=32)
    train_cfg = TrainConfig(proj_dir=str(tmp_path / "run"), data_file=str(train), load_model=str(llm),
                            micro_bsz=2, max_steps=2, lr_init=1e-3, lr_final=1e-4, warmup_steps=0,
                            accelerator="cpu", devices="1", seed=0)
    asr = AsrConfig(encoder=str(encoder), projector_hidden=16, llm_train="lora", lora_rank=2,
                    lora_targets="att.key,ffn.value", lr_llm_init=1e-2, lr_llm_final=1e-3)
    run_asr.train_asr(ModelConfig(), {}, train_cfg, asr)
    weights = tmp_path / "run" / "asr-step000002.pth"
    saved = safe_torch_load(weights)
    assert set(saved) == base_keys() | lora_keys(["att.key", "ffn.value"])
    resume = torch.load(tmp_path / "run" / "checkpoints" / "step2.ckpt", weights_only=False)
    assert {k.removeprefix("model.") for k in resume["state_dict"]} == set(saved)
    assert saved["llm.blocks.0.att.key.lora_B.default.weight"].abs().sum() > 0

    # merge takes only its own flags: the arm, rank and targets come from the record.
    merged = Path(run_asr.merge_asr(ModelConfig(), {}, TrainConfig(proj_dir=str(tmp_path / "run")),
                                    AsrConfig())["merged"])
    speech, _ = run_asr.load_trained({}, TrainConfig(proj_dir=str(tmp_path / "run")), AsrConfig())
    assert speech.llm_train == "lora" and speech.llm.blocks[0].att.key.r["default"] == 2
    with torch.no_grad():
        ours, _ = speech.llm(torch.tensor([TOKENS]))
        theirs, _ = RWKV.from_checkpoint(merged)(torch.tensor([TOKENS]))
    assert (theirs - ours).norm() / ours.norm() < 1e-5
    # and decodes (RNN mode through the adapted layers).
    assert len(run_asr.transcribe(speech, random_audio([0.5, 0.7]), AsrConfig(), WorldTokenizer())) == 2
