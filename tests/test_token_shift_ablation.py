"""The token-shift ablation (ModelConfig.token_shift = False, `--no-token_shift`): the time mix and
the channel mix see each token itself in place of the one before it, and nothing else changes.
Checked against the model with the shift: the same weights give different outputs exactly where
the shift reaches, the previous-token caches stop mattering, chunked and whole-sequence runs
agree, and the setting travels from training to `--op eval` through the training record."""

from __future__ import annotations

import json

import pytest
import torch
from factories import randomize_, tiny_config

from conrwkv import cli
from conrwkv.config import ModelConfig, TrainConfig
from conrwkv.data.markov import MarkovDataParams, write_markov_dataset
from conrwkv.lm.icl_eval import evaluate_and_plot
from conrwkv.lm.run import eval_lm, trained_token_shift
from conrwkv.model import RWKV

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def pair(**overrides) -> tuple[RWKV, RWKV]:
    """The same random weights with and without the token shift."""
    shifted = randomize_(RWKV(tiny_config(**overrides)), seed=1).eval()
    plain = RWKV(tiny_config(token_shift=False, **overrides)).eval()
    plain.load_state_dict(shifted.state_dict())
    return shifted, plain


@pytest.mark.parametrize("arch", ["x060", "x052"])
def test_the_channel_mix_sees_only_its_own_token(arch):
    shifted, plain = pair(arch=arch)
    x = torch.randn(2, 6, 64)
    changed = x.clone()
    changed[:, 2] += 1.0                                 # the token before position 3
    for model, reaches in ((plain, False), (shifted, True)):
        ffn = model.blocks[0].ffn
        with torch.no_grad():
            moved = (ffn(x, None)[0][:, 3] - ffn(changed, None)[0][:, 3]).abs().max()
        assert (moved > 1e-4) == reaches


@pytest.mark.parametrize("arch", ["x060", "x052"])
def test_the_previous_token_caches_are_not_read_and_chunks_agree(arch):
    shifted, plain = pair(arch=arch, conv_kernel=3)
    tokens = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        whole, state = plain(tokens)
        first, mid = plain(tokens[:, :4])
        rest, _ = plain(tokens[:, 4:], mid)
        torch.testing.assert_close(torch.cat([first, rest], 1), whole, atol=1e-5, rtol=1e-5)
        # the shift caches of the state can hold anything: the next chunk does not read them
        for layer in mid:
            layer.att_shift.normal_()
            layer.ffn_shift.normal_()
        again, _ = plain(tokens[:, 4:], mid)
        torch.testing.assert_close(again, rest)
        assert not torch.allclose(shifted(tokens)[0], whole, atol=1e-3)   # the shift does matter


def test_the_flag_reaches_the_model_the_record_and_eval(tmp_path, capsys):
    markov = tmp_path / "k1"
    write_markov_dataset(markov, MarkovDataParams(order=1, seq_len=17, n_train=40, n_val=8, seed=3),
                         progress=False)
    run = tmp_path / "run"
    flags = ["--task", "lm", "--data_file", str(markov), "--n_layer", "1", "--n_embd", "32",
             "--head_size", "16", "--ctx_len", "16", "--micro_bsz", "4", "--max_steps", "2",
             "--accelerator", "cpu", "--proj_dir", str(run), "--no-token_shift"]
    assert cli.main([*flags, "--dry_run"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["token_shift"] is False
    assert cli.main(flags) == 0
    weights = run / "rwkv-step000002.pth"
    assert json.loads(weights.with_suffix(".json").read_text())["model"]["token_shift"] is False
    assert trained_token_shift(weights) is False
    # eval takes no model flags but the backend: the record beside the weights decides. A model
    # of random weights (where the shift matters) with that record:
    scored = tmp_path / "scored"
    scored.mkdir()
    randomize_(RWKV(tiny_config(vocab_size=2, n_layer=1, n_embd=32)), seed=2).save_checkpoint(
        scored / "rwkv-step000003.pth")
    (scored / "rwkv-step000003.json").write_text(weights.with_suffix(".json").read_text())
    train_cfg = TrainConfig(proj_dir=str(scored), data_file=str(markov), ctx_len=16, micro_bsz=4,
                            accelerator="cpu")
    evaluated = eval_lm(ModelConfig(), {}, train_cfg)["icl"]["loss"]
    losses = {shift: evaluate_and_plot(
        RWKV.from_checkpoint(scored / "rwkv-step000003.pth", dtype=torch.float32, token_shift=shift),
        markov, 16, tmp_path / f"{shift}.pth", batch_size=32)["loss"] for shift in (True, False)}
    assert evaluated == pytest.approx(losses[False], abs=1e-6)
    assert abs(losses[True] - losses[False]) > 1e-4
    official = tmp_path / "official.pth"
    RWKV.from_checkpoint(weights).save_checkpoint(official)   # no record beside it: shift on
    assert trained_token_shift(official) is True
