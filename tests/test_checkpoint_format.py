"""Official `.pth` files: round trip, recognition, and the errors for files we must refuse."""

import io
import pickle
import random
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from factories import random_checkpoint

from conrwkv.io import atomic_torch_save, safe_torch_load
from conrwkv.model import RWKV

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("arch", ["x060", "x070"])
def test_round_trip_keeps_every_tensor_and_the_logits(tmp_path, arch):
    path, model = random_checkpoint(tmp_path / "m.pth", arch=arch, conv_kernel=3, state_tuning=True)
    loaded = RWKV.from_checkpoint(path)
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


def test_saved_x070_keys_are_the_official_ones(tmp_path):
    path, _ = random_checkpoint(tmp_path / "m.pth", arch="x070", n_embd=96, head_size=32,
                                state_tuning=True, conv_kernel=3, v_rank=16)
    sd = torch.load(path, weights_only=True)
    block = {k.removeprefix("blocks.1."): tuple(v.shape) for k, v in sd.items() if k.startswith("blocks.1.")}
    expected = {f"att.x_{s}": (1, 1, 96) for s in "rwkvag"}
    expected.update({f"att.{s}0": (1, 1, 96) for s in "wav"})
    expected.update({"att.w1": (96, 32), "att.w2": (32, 96), "att.a1": (96, 32), "att.a2": (32, 96),
                     "att.v1": (96, 16), "att.v2": (16, 96), "att.g1": (96, 64), "att.g2": (64, 96),
                     "att.k_k": (1, 1, 96), "att.k_a": (1, 1, 96), "att.r_k": (3, 32),
                     "att.time_state": (3, 32, 32), "att.conv.weight": (96, 1, 3), "att.conv.bias": (96,),
                     "att.ln_x.weight": (96,), "att.ln_x.bias": (96,), "ffn.x_k": (1, 1, 96),
                     "ffn.key.weight": (384, 96), "ffn.value.weight": (96, 384)})
    expected.update({f"att.{s}.weight": (96, 96) for s in ("receptance", "key", "value", "output")})
    expected.update({f"{s}.{p}": (96,) for s in ("ln1", "ln2") for p in ("weight", "bias")})
    assert block == expected


def test_deepspeed_prefix_is_stripped(tmp_path):
    path, model = random_checkpoint(tmp_path / "m.pth")
    sd = {f"_forward_module.{k}": v for k, v in torch.load(path, weights_only=True).items()}
    torch.save(sd, tmp_path / "ds.pth")
    loaded = RWKV.from_checkpoint(tmp_path / "ds.pth")
    idx = torch.randint(0, 97, (1, 5))
    torch.testing.assert_close(loaded(idx)[0], model(idx)[0])


def test_base_model_gets_neutral_adapters(tmp_path):
    path, base = random_checkpoint(tmp_path / "m.pth")
    adapted = RWKV.from_checkpoint(path, conv_kernel=4, state_tuning=True)
    assert adapted.config.conv_kernel == 4 and adapted.config.state_tuning
    assert torch.all(adapted.blocks[1].att.conv.weight == 0)
    assert torch.all(adapted.blocks[1].att.time_state == 0)
    idx = torch.randint(0, 97, (2, 9))
    torch.testing.assert_close(adapted(idx)[0], base(idx)[0])


def test_dtype_follows_the_file_unless_asked(tmp_path):
    _, model = random_checkpoint(tmp_path / "m.pth")
    model.save_checkpoint(tmp_path / "bf16.pth", dtype=torch.bfloat16)
    assert RWKV.from_checkpoint(tmp_path / "bf16.pth").emb.weight.dtype == torch.bfloat16
    as_fp32 = RWKV.from_checkpoint(tmp_path / "bf16.pth", dtype=torch.float32)
    assert as_fp32.head.weight.dtype == torch.float32


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path):
    path, _ = random_checkpoint(tmp_path / "m.pth")
    expected = r"emb\.weight: checkpoint has \[97, 64\], the model expects \[97, 128\]"
    with pytest.raises(ValueError, match=expected):
        RWKV.from_checkpoint(path, n_embd=128)
    with pytest.raises(ValueError, match="has 2 layers.*n_layer = 24"):
        RWKV.from_checkpoint(path, n_layer=24)


def test_conv_kernel_of_another_size_is_refused(tmp_path):
    path, _ = random_checkpoint(tmp_path / "m.pth", conv_kernel=3)
    with pytest.raises(ValueError, match=r"att\.conv\.weight: checkpoint has \[64, 1, 3\]"):
        RWKV.from_checkpoint(path, conv_kernel=5)


def test_incomplete_rwkv7_and_old_files_are_refused_by_name(tmp_path):
    path, _ = random_checkpoint(tmp_path / "m.pth")
    sd = torch.load(path, weights_only=True)
    v7 = {k: v for k, v in sd.items() if "time_maa" not in k}
    v7["blocks.0.att.r_k"] = torch.zeros(4, 16)
    torch.save(v7, tmp_path / "v7.pth")
    with pytest.raises(ValueError, match=r"x070 checkpoint needs blocks\.0\.att\.w1"):
        RWKV.from_checkpoint(tmp_path / "v7.pth")
    v7_path, _ = random_checkpoint(tmp_path / "v7-full.pth", arch="x070")
    v7 = torch.load(v7_path, weights_only=True)
    del v7["blocks.1.att.k_a"]
    torch.save(v7, tmp_path / "v7-missing.pth")
    with pytest.raises(ValueError, match=r"missing from the checkpoint: \['blocks\.1\.att\.k_a'\]"):
        RWKV.from_checkpoint(tmp_path / "v7-missing.pth")
    old = {k: v for k, v in sd.items() if "time_maa" not in k and "gate" not in k}
    old["blocks.0.att.time_mix_k"] = torch.zeros(1, 1, 64)
    torch.save(old, tmp_path / "v4.pth")
    with pytest.raises(ValueError, match="older than RWKV-5.2"):
        RWKV.from_checkpoint(tmp_path / "v4.pth")


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


class Foreign:
    """A class instance: what torch.save writes when handed a whole object, not tensors."""

    def __init__(self):
        self.weights = torch.zeros(2)


def test_pickled_objects_are_refused(tmp_path, capsys):
    bad = tmp_path / "evil.pth"
    torch.save({"emb.weight": torch.zeros(2, 2), "extra": Payload()}, bad)
    with pytest.raises(ValueError, match=r"evil.pth is a PyTorch file that holds Python objects "
                                         r"other than tensors \(print\); it is never loaded"):
        RWKV.from_checkpoint(bad)
    assert "must never run" not in capsys.readouterr().out


def _bad_files(tmp_path):
    """(file, what its message must say) for every kind of file a checkpoint must not be."""
    good, _ = random_checkpoint(tmp_path / "good.pth")
    legacy = tmp_path / "legacy.pth"
    torch.save({"a": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    not_torch = "is not a PyTorch checkpoint"
    corrupt = "is a truncated or corrupt PyTorch file"
    objects = "holds Python objects other than tensors"
    nan = torch.load(good, weights_only=True)
    nan["blocks.1.att.key.weight"][3, 4] = float("nan")
    inf = {"emb.weight": torch.zeros(4, 4), "head.weight": torch.ones(8, 4)}
    inf["head.weight"][7, 3] = float("-inf")
    inf = {k: v.bfloat16() for k, v in inf.items()}
    files = {
        "random.pth": (random.Random(0).randbytes(4096), f"{not_torch} .*it starts with"),
        "text.pth": (b"emb.weight 0.1 0.2\nhead.weight 0.3\n", f"{not_torch} .*b'emb.weig'"),
        "empty.pth": (b"", f"{not_torch} \\(an empty file"),
        "cut.pth": (good.read_bytes()[:1000], corrupt),
        "cut-legacy.pth": (legacy.read_bytes()[:60], corrupt),
        "plain.pkl": (pickle.dumps({"a": [1, 2]}), not_torch),
        "zip.pth": (_zip_bytes(), corrupt),
    }
    for name, (data, _) in files.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"emb.weight": torch.zeros(2), "model": Foreign()}, tmp_path / "foreign.pth")
    torch.save(nan, tmp_path / "nan.pth")
    torch.save(inf, tmp_path / "inf-bf16.pth")
    return [*((tmp_path / name, message) for name, (_, message) in files.items()),
            (tmp_path / "foreign.pth", rf"{objects} \(\S*Foreign\)"),
            (tmp_path / "nan.pth", r"tensor 'blocks.1.att.key.weight' holds non-finite values \(nan\)"),
            (tmp_path / "inf-bf16.pth", r"tensor 'head.weight' holds non-finite values \(-inf\)")]


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "a zip, but not one torch.save wrote")
    return buffer.getvalue()


@pytest.mark.parametrize("mmap", [False, True])
def test_every_bad_file_gets_its_own_one_line_message(tmp_path, mmap):
    for path, message in _bad_files(tmp_path):
        with pytest.raises(ValueError) as info:
            safe_torch_load(path, mmap=mmap)
        text = str(info.value)
        assert str(path) in text and re.search(message, text), (path.name, text)
        assert "\n" not in text and "weights_only" not in text, (path.name, text)


def test_non_finite_weights_are_refused_where_models_load(tmp_path):
    path, _ = random_checkpoint(tmp_path / "m.pth")
    sd = torch.load(path, weights_only=True)
    sd["blocks.0.ffn.value.weight"][0, 0] = float("inf")
    torch.save(sd, tmp_path / "inf.pth")
    with pytest.raises(ValueError, match=r"inf.pth: tensor 'blocks.0.ffn.value.weight' holds non-finite"):
        RWKV.from_checkpoint(tmp_path / "inf.pth")


@pytest.mark.parametrize("protocol", [2, 3])
def test_legacy_format_loads_even_when_mmap_is_asked(tmp_path, protocol):
    torch.save({"a": torch.arange(3.0)}, tmp_path / "old.pth", pickle_protocol=protocol,
               _use_new_zipfile_serialization=False)
    assert safe_torch_load(tmp_path / "old.pth", mmap=True)["a"].tolist() == [0.0, 1.0, 2.0]


def test_train_py_reports_a_bad_load_model_in_one_line(tmp_path):
    torch.save({"emb.weight": torch.zeros(2), "model": Foreign()}, tmp_path / "foreign.pth")
    out = subprocess.run([sys.executable, "train.py", "--task", "lm", "--load_model",
                          str(tmp_path / "foreign.pth"), "--data_file", str(tmp_path / "none"),
                          "--accelerator", "cpu", "--proj_dir", str(tmp_path / "run")],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: checkpoint "), out.stderr
    assert "holds Python objects other than tensors" in lines[0] and "weights_only" not in out.stderr


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
