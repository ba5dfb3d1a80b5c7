"""Official `.pth` files: round trip, recognition, and the errors for files we must refuse."""

import pickle

import pytest
import torch
from factories import random_checkpoint

from conrwkv.io import atomic_torch_save, safe_torch_load
from conrwkv.model import RWKV6


def test_round_trip_keeps_every_tensor_and_the_logits(tmp_path):
    path, model = random_checkpoint(tmp_path / "m.pth", conv_kernel=3, state_tuning=True)
    loaded = RWKV6.from_checkpoint(path)
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    idx = torch.randint(0, 97, (2, 7))
    torch.testing.assert_close(loaded(idx)[0], model(idx)[0], rtol=0, atol=0)


def test_saved_keys_are_the_official_ones(tmp_path):
    path, _ = random_checkpoint(tmp_path / "m.pth", n_layer=1, state_tuning=True)
    sd = torch.load(path, weights_only=True)
    assert sd["blocks.0.att.time_maa_w1"].shape == (64, 160)
    assert sd["blocks.0.att.time_maa_w2"].shape == (5, 32, 64)
    assert sd["blocks.0.att.time_decay"].shape == (1, 1, 64)
    assert sd["blocks.0.att.time_faaaa"].shape == (4, 16)
    assert sd["blocks.0.att.time_state"].shape == (4, 16, 16)
    assert sd["blocks.0.ffn.key.weight"].shape == (224, 64)
    assert "blocks.0.ln0.weight" in sd and "head.weight" in sd and "ln_out.bias" in sd


def test_deepspeed_prefix_is_stripped(tmp_path):
    path, model = random_checkpoint(tmp_path / "m.pth")
    sd = {f"_forward_module.{k}": v for k, v in torch.load(path, weights_only=True).items()}
    torch.save(sd, tmp_path / "ds.pth")
    loaded = RWKV6.from_checkpoint(tmp_path / "ds.pth")
    idx = torch.randint(0, 97, (1, 5))
    torch.testing.assert_close(loaded(idx)[0], model(idx)[0])


def test_base_model_gets_neutral_adapters(tmp_path):
    path, base = random_checkpoint(tmp_path / "m.pth")
    adapted = RWKV6.from_checkpoint(path, conv_kernel=4, state_tuning=True)
    assert adapted.config.conv_kernel == 4 and adapted.config.state_tuning
    assert torch.all(adapted.blocks[1].att.conv.weight == 0)
    assert torch.all(adapted.blocks[1].att.time_state == 0)
    idx = torch.randint(0, 97, (2, 9))
    torch.testing.assert_close(adapted(idx)[0], base(idx)[0])


def test_dtype_follows_the_file_unless_asked(tmp_path):
    _, model = random_checkpoint(tmp_path / "m.pth")
    model.save_checkpoint(tmp_path / "bf16.pth", dtype=torch.bfloat16)
    assert RWKV6.from_checkpoint(tmp_path / "bf16.pth").emb.weight.dtype == torch.bfloat16
    as_fp32 = RWKV6.from_checkpoint(tmp_path / "bf16.pth", dtype=torch.float32)
    assert as_fp32.head.weight.dtype == torch.float32


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path):
    path, _ = random_checkpoint(tmp_path / "m.pth")
    expected = r"emb\.weight: checkpoint has \[97, 64\], the model expects \[97, 128\]"
    with pytest.raises(ValueError, match=expected):
        RWKV6.from_checkpoint(path, n_embd=128)
    with pytest.raises(ValueError, match="has 2 layers.*n_layer = 24"):
        RWKV6.from_checkpoint(path, n_layer=24)


def test_conv_kernel_of_another_size_is_refused(tmp_path):
    path, _ = random_checkpoint(tmp_path / "m.pth", conv_kernel=3)
    with pytest.raises(ValueError, match=r"att\.conv\.weight: checkpoint has \[64, 1, 3\]"):
        RWKV6.from_checkpoint(path, conv_kernel=5)


def test_rwkv7_and_old_files_are_refused_by_name(tmp_path):
    path, _ = random_checkpoint(tmp_path / "m.pth")
    sd = torch.load(path, weights_only=True)
    v7 = {k: v for k, v in sd.items() if "time_maa" not in k}
    v7["blocks.0.att.r_k"] = torch.zeros(4, 16)
    torch.save(v7, tmp_path / "v7.pth")
    with pytest.raises(ValueError, match="RWKV-7"):
        RWKV6.from_checkpoint(tmp_path / "v7.pth")
    old = {k: v for k, v in sd.items() if "time_maa" not in k and "gate" not in k}
    old["blocks.0.att.time_mix_k"] = torch.zeros(1, 1, 64)
    torch.save(old, tmp_path / "v4.pth")
    with pytest.raises(ValueError, match="older than RWKV-5.2"):
        RWKV6.from_checkpoint(tmp_path / "v4.pth")


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_objects_are_refused(tmp_path, capsys):
    bad = tmp_path / "evil.pth"
    torch.save({"emb.weight": torch.zeros(2, 2), "extra": Payload()}, bad)
    with pytest.raises(ValueError, match="evil.pth contains pickled Python objects"):
        RWKV6.from_checkpoint(bad)
    assert "must never run" not in capsys.readouterr().out


def test_missing_truncated_and_non_dict_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        safe_torch_load(tmp_path / "nope.pth")
    path, _ = random_checkpoint(tmp_path / "m.pth")
    (tmp_path / "cut.pth").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="cut.pth"):
        safe_torch_load(tmp_path / "cut.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="not a flat dict of tensors"):
        safe_torch_load(tmp_path / "list.pth")


def test_atomic_save_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "keep.pth"
    atomic_torch_save({"a": torch.ones(1)}, target)

    class Unpicklable:
        def __reduce__(self):
            raise pickle.PicklingError("cannot")

    with pytest.raises(pickle.PicklingError):
        atomic_torch_save({"a": Unpicklable()}, target)
    assert torch.load(target, weights_only=True)["a"].item() == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["keep.pth"]
