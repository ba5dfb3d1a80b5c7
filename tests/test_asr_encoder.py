"""The speech-encoder wrapper on tiny HuBERT / HuBERT-CTC / wav2vec 2.0 folders made here:
shapes, valid frame counts by the conv length formula, padding independence (batched only where
the model is exact under padding, one utterance at a time otherwise), frozen and eval behaviour,
and clear errors for missing folders and bad audio."""

import logging

import pytest
import torch
from asr_factories import (
    random_audio,
    tiny_hubert_folder,
    tiny_speech_rwkv,
    tiny_wav2vec2_folder,
)
from torch import nn

from conrwkv.asr import SpeechEncoder

pytest.importorskip("transformers")


# tiny models: one torch thread for the whole module (asr_factories.one_torch_thread)
pytestmark = pytest.mark.usefixtures("single_torch_thread")

SECONDS = [1.0, 0.73, 0.4]


@pytest.fixture(scope="module")
def hubert_folder(tmp_path_factory):
    return tiny_hubert_folder(tmp_path_factory.mktemp("hubert"))


@pytest.fixture(scope="module")
def wav2vec2_folder(tmp_path_factory):
    return tiny_wav2vec2_folder(tmp_path_factory.mktemp("wav2vec2"))


def conv_output_length(num_samples: int, config) -> int:
    """The Conv1d length rule, layer by layer (written here independently of transformers)."""
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        num_samples = (num_samples - kernel) // stride + 1
    return num_samples


def test_features_and_valid_frame_counts(hubert_folder):
    encoder = SpeechEncoder(str(hubert_folder))
    audio = random_audio(SECONDS)
    features, counts = encoder(audio)
    expected = [conv_output_length(len(a), encoder.model.config) for a in audio]
    assert counts.dtype == torch.long and counts.tolist() == expected
    assert expected == [49, 36, 19]                    # 50 frames/s, receptive field 400 samples
    assert features.shape == (3, max(expected), encoder.output_dim) and encoder.output_dim == 32
    assert encoder.uses_attention_mask


def test_padding_and_neighbours_do_not_change_masked_features(hubert_folder):
    encoder = SpeechEncoder(str(hubert_folder))
    short, long = random_audio([0.5, 1.2], seed=1)
    alone, (n,) = encoder([short])
    batched, counts = encoder([long, short])
    assert counts[1] == n
    assert torch.allclose(batched[1, :n], alone[0], atol=1e-5)


def test_frozen_encoder_stays_in_eval_mode_without_gradients(hubert_folder):
    parent = nn.ModuleDict({"encoder": SpeechEncoder(str(hubert_folder))}).train()
    encoder = parent["encoder"]
    assert not any(p.requires_grad for p in encoder.parameters())
    assert encoder.training and not encoder.model.training
    assert not any(m.training for m in encoder.model.modules())
    audio = random_audio([0.8], seed=2)
    first, _ = encoder(audio)
    second, _ = encoder(audio)
    assert first.grad_fn is None
    assert torch.equal(first, second)                  # dropout (0.1 in the config) stays off


def test_trainable_encoder_trains(hubert_folder):
    parent = nn.ModuleDict({"encoder": SpeechEncoder(str(hubert_folder), trainable=True)}).train()
    encoder = parent["encoder"]
    assert all(p.requires_grad for p in encoder.parameters()) and encoder.model.training
    audio = random_audio([0.8], seed=2)
    first, _ = encoder(audio)
    second, _ = encoder(audio)
    assert first.grad_fn is not None
    assert not torch.equal(first, second)              # dropout is on while training
    parent.eval()
    assert not encoder.model.training


def test_ctc_folder_loads_its_base_model(tmp_path):
    from transformers import HubertForCTC

    folder = tiny_hubert_folder(tmp_path / "ctc", seed=3, ctc=True)
    encoder = SpeechEncoder(str(folder))
    assert type(encoder.model).__name__ == "HubertModel"
    audio = random_audio([0.6], seed=4)
    features, _ = encoder(audio)
    ctc = HubertForCTC.from_pretrained(folder, local_files_only=True).eval()
    inputs = encoder.extractor(audio[0], sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        reference = ctc(**inputs, output_hidden_states=True).hidden_states[-1]
    assert torch.allclose(features, reference, atol=1e-5)


@pytest.fixture(scope="module")
def masked_group_norm_folder(tmp_path_factory):
    """WavLM-base style: a GroupNorm front end whose feature extractor returns a mask."""
    return tiny_wav2vec2_folder(tmp_path_factory.mktemp("wav2vec2-mask"), seed=6, attention_mask=True)


def test_auto_batches_only_layer_norm_models_fed_a_mask(hubert_folder, wav2vec2_folder,
                                                        masked_group_norm_folder, caplog):
    caplog.set_level(logging.INFO, logger="conrwkv.asr.encoder")
    hubert = SpeechEncoder(str(hubert_folder))
    assert hubert.exact_when_batched and hubert.batched
    assert not caplog.records                                     # nothing to explain
    for folder, mask in ((wav2vec2_folder, "off"), (masked_group_norm_folder, "on")):
        caplog.clear()
        encoder = SpeechEncoder(str(folder))
        assert encoder.uses_attention_mask == (mask == "on")
        assert not encoder.exact_when_batched and not encoder.batched
        [record] = caplog.records
        assert record.levelno == logging.INFO and "each utterance runs alone" in record.getMessage()
        assert f"feat_extract_norm='group', attention mask {mask}" in record.getMessage()
    with pytest.raises(ValueError, match="batching must be one of"):
        SpeechEncoder(str(hubert_folder), batching="sometimes")


@pytest.mark.parametrize("which", ["no mask", "mask"])
def test_group_norm_one_by_one_equals_alone_and_batch_differs(which, wav2vec2_folder,
                                                              masked_group_norm_folder, caplog):
    """Counts come from the true lengths either way; run alone, an utterance's features equal its
    features in a batch (auto picks that); padded batches change every frame (GroupNorm over the
    padding), with or without a mask, and `batch` warns so at load."""
    folder = str(wav2vec2_folder if which == "no mask" else masked_group_norm_folder)
    short, long = random_audio([0.5, 1.2], seed=5)
    auto = SpeechEncoder(folder)
    alone, (n,) = auto([short])
    one_by_one, counts = auto([long, short])
    expected = [conv_output_length(len(a), auto.model.config) for a in (long, short)]
    assert counts.tolist() == expected and n == expected[1]
    torch.testing.assert_close(one_by_one[1, :n], alone[0], rtol=0, atol=1e-5)
    assert torch.equal(one_by_one[1, n:], torch.zeros_like(one_by_one[1, n:]))
    explicit, _ = SpeechEncoder(folder, batching="one_by_one")([long, short])
    torch.testing.assert_close(explicit, one_by_one, rtol=0, atol=1e-6)

    caplog.set_level(logging.WARNING, logger="conrwkv.asr.encoder")
    batched_encoder = SpeechEncoder(folder, batching="batch")
    assert batched_encoder.batched
    assert any("padding changes its outputs" in r.getMessage() for r in caplog.records)
    batched, batch_counts = batched_encoder([long, short])
    assert batch_counts.tolist() == expected
    assert (batched[1, :n] - alone[0]).abs().max() > 1e-3


def test_layer_norm_model_with_mask_batches_exactly(hubert_folder):
    short, long = random_audio([0.5, 1.2], seed=7)
    batched, counts = SpeechEncoder(str(hubert_folder))([long, short])
    one_by_one, _ = SpeechEncoder(str(hubert_folder), batching="one_by_one")([long, short])
    for row, n in enumerate(counts.tolist()):
        torch.testing.assert_close(batched[row, :n], one_by_one[row, :n], rtol=0, atol=1e-5)


def test_missing_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-encoder"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        SpeechEncoder(str(missing))
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        SpeechEncoder(str(incomplete))
    with pytest.raises(ValueError, match="no folder given"):
        SpeechEncoder("")


def test_bad_audio_is_refused(hubert_folder):
    encoder = SpeechEncoder(str(hubert_folder))
    with pytest.raises(ValueError, match="item 1 has shape"):
        encoder(random_audio([0.5]) + [torch.zeros(2, 800).numpy()])
    with pytest.raises(ValueError, match="too short"):
        encoder(random_audio([0.5]) + [random_audio([0.01])[0]])
    with pytest.raises(ValueError, match="non-empty list"):
        encoder([])


def test_speech_rwkv_passes_the_batching_choice_on(tmp_path):
    assert tiny_speech_rwkv(tmp_path).encoder.batched                       # tiny HuBERT: exact
    assert not tiny_speech_rwkv(tmp_path, encoder_batching="one_by_one").encoder.batched
