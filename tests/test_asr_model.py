"""Projector and SpeechRWKV: shapes and frame counts, a loss over transcript tokens only that no
padding or neighbour changes, the exact trained parameter set and saved key set, the merged `.pth`
run by the `rwkv` package, and one optimisation step that lowers the loss."""

import pytest
import torch
import torch.nn.functional as F
from asr_factories import random_audio, tiny_speech_rwkv

from conrwkv.asr import Projector, SpeechRWKV
from conrwkv.config import AsrConfig

pytest.importorskip("transformers")


# tiny models: one torch thread for the whole module (asr_factories.one_torch_thread)
pytestmark = pytest.mark.usefixtures("single_torch_thread")

TARGETS = [[40, 41, 42, 43], [50, 51], [60, 61, 62, 63, 64, 65, 66]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("speech_rwkv")


@pytest.fixture
def model(model_dir):
    return tiny_speech_rwkv(model_dir)


# ---------------------------------------------------------------- projector
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_projector_shapes_counts_and_padding(kind):
    projector = Projector(input_dim=8, n_embd=12, hidden=16, downsample=5, kind=kind)
    features = torch.randn(2, 23, 8)
    counts = torch.tensor([23, 12])
    out, out_counts = projector(features, counts)
    assert out.shape == (2, 4, 12) and out_counts.tolist() == [4, 2]
    # Valid outputs of row 1 see frames < 10 only: what lies beyond its 12 frames is irrelevant.
    changed = features.clone()
    changed[1, 12:] = 100.0
    assert torch.equal(projector(changed, counts)[0][1, :2], out[1, :2])
    changed[1, 9] = 100.0
    assert not torch.allclose(projector(changed, counts)[0][1, 1], out[1, 1])


def test_linear_projector_concatenates_consecutive_frames():
    projector = Projector(input_dim=3, n_embd=4, hidden=5, downsample=2)
    features = torch.randn(1, 4, 3)
    out, _ = projector(features, torch.tensor([4]))
    expected = projector.mlp(torch.cat([features[0, 2], features[0, 3]]))
    assert torch.allclose(out[0, 1], expected)


def test_projector_refuses_bad_input():
    with pytest.raises(ValueError, match="projector must be one of"):
        Projector(8, 12, kind="qformer")
    with pytest.raises(ValueError, match=r"expected \[B, F, 8\]"):
        Projector(8, 12)(torch.randn(1, 10, 7), torch.tensor([10]))


# ---------------------------------------------------------------- loss
def test_loss_counts_transcript_and_end_tokens_only(model):
    """The loss equals a direct computation: full logits of [speech][#][text] at the positions
    that predict the text and the end token, averaged over those tokens of the whole batch."""
    audio = random_audio([1.0, 0.7, 1.3], seed=1)
    loss = model.loss(audio, TARGETS)
    nll, count = 0.0, 0
    with torch.no_grad():
        for prefix, ids in zip(model.prefixes(audio), TARGETS):
            row = torch.cat([prefix, model.llm.emb(torch.tensor(ids))])[None]
            logits, _ = model.llm(row)
            start = prefix.shape[0] - 1
            predicted = logits[0, start:start + len(ids) + 1]
            nll += F.cross_entropy(predicted, torch.tensor(ids + [0]), reduction="sum").item()
            count += len(ids) + 1
    assert loss.item() == pytest.approx(nll / count, rel=1e-5)


def test_loss_does_not_change_with_padding_or_neighbours(model):
    short, long, longer = random_audio([0.5, 1.1, 1.6], seed=2)
    text = [7, 8, 9]
    with torch.no_grad():
        alone, n_alone = model.utterance_losses([short], [text])
        batch, n_batch = model.utterance_losses([longer, short, long], [TARGETS[2], text, TARGETS[0]])
        mean = model.loss([short, longer], [text, TARGETS[2]])
        other, n_other = model.utterance_losses([longer], [TARGETS[2]])
    assert n_alone.tolist() == [4] and n_batch.tolist() == [8, 4, 5]
    assert batch[1].item() == pytest.approx(alone[0].item(), rel=1e-5)
    assert batch[0].item() == pytest.approx(other[0].item(), rel=1e-5)
    assert mean.item() == pytest.approx((alone[0] + other[0]).item() / 12, rel=1e-5)


def test_length_buckets_pad_the_llm_input_and_change_no_loss_or_gradient(model, monkeypatch):
    audio = random_audio([0.5, 1.1, 1.6], seed=3)
    lengths = []
    original = model.llm.forward_hidden

    def recording(inputs, state=None):
        lengths.append(inputs.shape[1])
        return original(inputs, state)

    monkeypatch.setattr(model.llm, "forward_hidden", recording)
    trained = [p for p in model.parameters() if p.requires_grad]
    results = {}
    for bucket in (0, 16, 64):
        sums, counts = model.utterance_losses(audio, TARGETS, length_bucket=bucket)
        grads = torch.autograd.grad(sums.sum(), trained)
        results[bucket] = (sums.detach(), counts, grads)
    unpadded, sixteen, sixty_four = lengths
    assert unpadded % 16 and sixteen % 16 == 0 and sixty_four % 64 == 0 and sixteen < unpadded + 16
    for bucket in (16, 64):
        assert torch.equal(results[bucket][1], results[0][1])
        torch.testing.assert_close(results[bucket][0], results[0][0], rtol=1e-6, atol=1e-6)
        for got, ref in zip(results[bucket][2], results[0][2]):
            # the sums over positions run over more (zero) terms: float32 rounding only
            assert ((got - ref).norm() / ref.norm()).item() < 1e-5


def test_a_negative_length_bucket_is_refused_by_name():
    from conrwkv.config import AsrConfig

    with pytest.raises(ValueError, match="--length_bucket must be 0"):
        AsrConfig(length_bucket=-1)


def test_targets_are_checked(model):
    audio = random_audio([0.5], seed=3)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.loss(audio, [[5, 97]])
    with pytest.raises(ValueError, match="end-of-text"):
        model.loss(audio, [[5, 0]])
    with pytest.raises(ValueError, match="1 audio items but 2 target lists"):
        model.loss(audio, [[5], [6]])


# ---------------------------------------------------------------- what is trained and saved
def expected_keys(conv: bool, projector: str) -> set[str]:
    keys = {f"llm.blocks.{i}.att.time_state" for i in range(2)}
    if conv:
        keys |= {f"llm.blocks.{i}.att.conv.{p}" for i in range(2) for p in ("weight", "bias")}
    keys |= {f"projector.mlp.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    if projector == "conv":
        keys |= {"projector.conv.weight", "projector.conv.bias"}
    return keys


@pytest.mark.parametrize("conv,projector,encoder_trainable", [
    (False, "linear", False), (True, "linear", False), (False, "conv", False), (True, "linear", True)],
    ids=["state", "state+conv", "conv-projector", "conv+trainable-encoder"])
def test_exactly_the_intended_parameters_train(model_dir, conv, projector, encoder_trainable):
    model = tiny_speech_rwkv(model_dir, conv_kernel=4 if conv else 0, projector=projector,
                             encoder_trainable=encoder_trainable)
    keys = expected_keys(conv, projector)
    encoder_keys = {n for n, _ in model.named_parameters() if n.startswith("encoder.")}
    assert len(encoder_keys) > 50
    if encoder_trainable:
        keys |= encoder_keys
    requiring_grad = {n for n, p in model.named_parameters() if p.requires_grad}
    assert requiring_grad == keys
    saved = model.trainable_state_dict()
    assert set(saved) == keys
    groups = {g["name"]: g["params"] for g in model.parameter_groups()}
    assert set(groups) == ({"state", "adapter", "encoder"} if encoder_trainable else {"state", "adapter"})
    assert len(groups["state"]) == 2 and all(p.shape == (2, 16, 16) for p in groups["state"])
    assert sum(len(ps) for ps in groups.values()) == len(keys)
    assert all(p.dtype == torch.float32 for p in saved.values())


@pytest.mark.parametrize("train_state,conv", [(False, False), (False, True), (True, False)],
                         ids=["projector-only", "projector+conv", "state"])
def test_train_state_flag_decides_whether_time_state_trains(model_dir, train_state, conv):
    from conrwkv.asr.module import AsrModule
    from conrwkv.config import TrainConfig
    from conrwkv.data.tokenizer import WorldTokenizer

    model = tiny_speech_rwkv(model_dir, conv_kernel=4 if conv else 0, train_state=train_state)
    assert model.train_state is train_state
    states = {f"llm.blocks.{i}.att.time_state": b.att.time_state for i, b in enumerate(model.llm.blocks)}
    keys = expected_keys(conv, "linear") - (set() if train_state else set(states))
    assert all(p.requires_grad is train_state for p in states.values())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == keys
    assert set(model.trainable_named_parameters()) == set(model.trainable_state_dict()) == keys
    grouped = {id(p) for g in model.parameter_groups() for p in g["params"]}
    assert all((id(p) in grouped) is train_state for p in states.values())
    assert all(id(p) in grouped and p.requires_grad for p in model.projector.parameters())
    # What the training module hands the optimizer: no frozen state, no empty group.
    optimizer = AsrModule(model, TrainConfig(), AsrConfig(train_state=train_state),
                          WorldTokenizer()).configure_optimizers()["optimizer"]
    optimized = [p for g in optimizer.param_groups for p in g["params"]]
    assert all(g["params"] for g in optimizer.param_groups)
    assert {id(p) for p in optimized} == {id(p) for p in model.trainable_named_parameters().values()}
    assert ("state" in {g["name"] for g in optimizer.param_groups}) is train_state

    loss = model.loss(random_audio([0.7], seed=7), [[40, 41]])
    loss.backward()
    assert model.projector.mlp[0].weight.grad.abs().sum() > 0
    assert all((p.grad is not None) is train_state for p in states.values())


def test_train_state_weights_and_flag(model_dir):
    import argparse

    from conrwkv.train.flags import add_dataclass_flags, take

    parser = argparse.ArgumentParser()
    add_dataclass_flags(parser, AsrConfig, "asr")
    assert AsrConfig().train_state is True
    assert take(AsrConfig, parser.parse_args([]))[0].train_state is True
    assert take(AsrConfig, parser.parse_args(["--no-train_state"]))[0].train_state is False
    # Weights of a state-tuned run do not fit a projector-only model, and the reverse: clear errors.
    tuned = tiny_speech_rwkv(model_dir).trainable_state_dict()
    frozen = tiny_speech_rwkv(model_dir, train_state=False)
    with pytest.raises(ValueError, match=r"unexpected keys \['llm.blocks.0.att.time_state'"):
        frozen.load_trainable_state_dict(tuned)
    with pytest.raises(ValueError, match=r"missing keys \['llm.blocks.0.att.time_state'"):
        tiny_speech_rwkv(model_dir).load_trainable_state_dict(frozen.trainable_state_dict())


def test_trainable_state_dict_round_trip_and_errors(model_dir, model):
    with torch.no_grad():
        for p in model.trainable_named_parameters().values():
            p.normal_()
    saved = model.trainable_state_dict()
    fresh = tiny_speech_rwkv(model_dir)
    fresh.load_trainable_state_dict(saved)
    for name, tensor in fresh.trainable_state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    audio = random_audio([0.8], seed=4)
    assert fresh.loss(audio, [[5, 6]]).item() == pytest.approx(model.loss(audio, [[5, 6]]).item(), rel=1e-6)

    missing = {k: v for k, v in saved.items() if k != "llm.blocks.1.att.time_state"}
    with pytest.raises(ValueError, match=r"ckpt.pth: .*missing keys \['llm.blocks.1.att.time_state'\]"):
        fresh.load_trainable_state_dict(missing, source="ckpt.pth")
    with pytest.raises(ValueError, match="unexpected keys.*llm.blocks.0.att.conv.weight"):
        fresh.load_trainable_state_dict({**saved, "llm.blocks.0.att.conv.weight": torch.zeros(32, 1, 4)})
    wrong = {**saved, "projector.mlp.2.bias": torch.zeros(5)}
    with pytest.raises(ValueError, match=r"projector.mlp.2.bias has shape \(5,\), the model \(32,\)"):
        fresh.load_trainable_state_dict(wrong)


def test_from_pretrained_checks_the_llm_shape(model_dir, model):
    config = AsrConfig(encoder=str(model_dir / "encoder"), projector_hidden=8)
    llm = model_dir / "llm-0.pth"
    with pytest.raises(ValueError, match="has 2 layers"):
        SpeechRWKV.from_pretrained(llm, config, n_layer=3)
    with pytest.raises(ValueError, match="emb.weight"):
        SpeechRWKV.from_pretrained(llm, config, n_layer=2, n_embd=64)
    assert SpeechRWKV.from_pretrained(llm, config, n_layer=2, n_embd=32).llm.config.n_embd == 32


def test_bf16_llm_keeps_the_trained_tensors_fp32(model_dir):
    config = AsrConfig(encoder=str(model_dir / "encoder"), projector_hidden=8)
    model = SpeechRWKV.from_pretrained(model_dir / "llm-0.pth", config, conv_kernel=3,
                                       llm_dtype=torch.bfloat16)
    assert model.llm.emb.weight.dtype == torch.bfloat16
    trained = model.trainable_named_parameters()
    assert all(p.dtype == torch.float32 for p in trained.values())
    loss = model.loss(random_audio([0.6], seed=5), [[5, 6, 7]])
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trained.values())


# ---------------------------------------------------------------- merged export
def test_merge_never_replaces_a_file_that_appears_while_it_writes(model, tmp_path, monkeypatch):
    from conrwkv.asr import speech_rwkv

    target = tmp_path / "merged.pth"
    save = speech_rwkv.atomic_torch_save

    def someone_else_writes_target_meanwhile(state, path):
        save(state, path)
        target.write_bytes(b"another run's file")

    monkeypatch.setattr(speech_rwkv, "atomic_torch_save", someone_else_writes_target_meanwhile)
    with pytest.raises(FileExistsError, match="merged.pth exists; choose another name"):
        model.export_merged_llm(target)
    assert target.read_bytes() == b"another run's file"
    assert [p.name for p in tmp_path.iterdir()] == ["merged.pth"]          # no partial file left


def test_merged_pth_runs_state_tuned_in_the_rwkv_package(model, tmp_path):
    rwkv_model = pytest.importorskip("rwkv.model")
    with torch.no_grad():
        for block in model.llm.blocks:
            block.att.time_state.normal_(0.0, 1.0)
    path = model.export_merged_llm(tmp_path / "merged.pth")
    with pytest.raises(FileExistsError, match="merged.pth exists"):
        model.export_merged_llm(path)
    tokens = [36, 40, 41, 17, 5, 88, 3]
    with torch.no_grad():
        ours, _ = model.llm(torch.tensor([tokens]))
        zero_state = [torch.zeros_like(b.att.time_state) for b in model.llm.blocks]
        trained = [b.att.time_state.clone() for b in model.llm.blocks]
        for block, zero in zip(model.llm.blocks, zero_state):
            block.att.time_state.copy_(zero)
        untuned, _ = model.llm(torch.tensor([tokens]))
        for block, state in zip(model.llm.blocks, trained):
            block.att.time_state.copy_(state)
    reference = rwkv_model.RWKV(str(path), strategy="cpu fp32", verbose=False)
    theirs, _ = reference.forward(tokens, None, full_output=True)
    assert (theirs - ours[0]).norm() / ours[0].norm() < 1e-4
    assert (untuned - ours).norm() / ours.norm() > 1e-2          # the state does matter


# ---------------------------------------------------------------- training
@pytest.mark.parametrize("conv_kernel", [0, 4])
def test_one_optimisation_step_lowers_the_loss(model_dir, conv_kernel):
    model = tiny_speech_rwkv(model_dir, conv_kernel=conv_kernel).train()
    audio = random_audio([0.9, 0.6], seed=6)
    targets = [[40, 41, 42], [43, 44]]
    optimizer = torch.optim.Adam([{"params": g["params"], "lr": 1e-2 if g["name"] == "state" else 1e-3}
                                  for g in model.parameter_groups()])
    before = model.loss(audio, targets)
    before.backward()
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    for name, param in model.trainable_named_parameters().items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    optimizer.step()
    with torch.no_grad():
        after = model.loss(audio, targets)
    assert after.item() < before.item() - 1e-3
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


@pytest.mark.cuda
def test_compiled_llm_equals_eager_in_the_asr_loss_and_gradients(tmp_path):
    # The state-tuning step on the GPU's kernels (head size 16), the LLM compiled as --compile
    # compiles it: loss and the gradient of every trained tensor (states, projector) as eager.
    speech = tiny_speech_rwkv(tmp_path).cuda()
    audio = random_audio([1.0, 0.6, 0.8], seed=3)
    targets = [[5, 9, 12, 40], [7, 8], [30, 31, 32]]

    def loss_and_grads():
        speech.zero_grad(set_to_none=True)
        loss = speech.loss(audio, targets)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in speech.trainable_named_parameters().items()}

    eager = loss_and_grads()
    assert any(n.endswith("time_state") for n in eager[1])
    torch._dynamo.reset()
    speech.llm.compile_model()
    compiled = loss_and_grads()
    torch.testing.assert_close(compiled[0], eager[0], rtol=2e-3, atol=2e-3)
    assert compiled[1].keys() == eager[1].keys()
    for name in eager[1]:
        torch.testing.assert_close(compiled[1][name], eager[1][name], rtol=2e-3, atol=2e-3, msg=name)
