"""The speech-encoder wrapper on tiny HuBERT / HuBERT-CTC / wav2vec 2.0 folders made here:
shapes, valid frame counts by the conv length formula, padding independence, frozen and eval
behaviour, and clear errors for missing folders and bad audio."""

import pytest
import torch
from asr_factories import one_torch_thread, random_audio, tiny_hubert_folder, tiny_wav2vec2_folder
from torch import nn

from conrwkv.asr import SpeechEncoder

pytest.importorskip("transformers")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield

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


def test_encoder_without_attention_mask(wav2vec2_folder):
    """wav2vec2-base style: counts still come from the true lengths; padding changes the features
    (GroupNorm over the padded audio), unless each utterance runs alone."""
    short, long = random_audio([0.5, 1.2], seed=5)
    padded = SpeechEncoder(str(wav2vec2_folder))
    exact = SpeechEncoder(str(wav2vec2_folder), run_unmasked_alone=True)
    assert not padded.uses_attention_mask
    alone, (n,) = padded([short])
    batched, counts = padded([long, short])
    expected = [conv_output_length(len(a), padded.model.config) for a in (long, short)]
    assert counts.tolist() == expected and n == expected[1]
    assert (batched[1, :n] - alone[0]).abs().max() > 1e-3
    one_by_one, counts_exact = exact([long, short])
    assert counts_exact.tolist() == expected
    assert torch.allclose(one_by_one[1, :n], alone[0], atol=1e-5)
    assert torch.equal(one_by_one[1, n:], torch.zeros_like(one_by_one[1, n:]))


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
