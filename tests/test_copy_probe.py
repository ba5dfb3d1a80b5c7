"""lm/copy_probe: greedy copies counted exactly, on models whose next token is known."""

from __future__ import annotations

import json

import numpy as np
import soundfile
import torch

from conrwkv.config import ModelConfig
from conrwkv.data.tokenizer import WorldTokenizer
from conrwkv.lm.copy_probe import copy_accuracy, main
from conrwkv.model import RWKV


def constant_model(token: int) -> RWKV:
    """A model whose greedy next token is always `token`: a head with one non-zero row along a
    bias-like direction (ln_out's bias, so the hidden state has it whatever the input)."""
    model = RWKV(ModelConfig(vocab_size=65536, n_layer=1, n_embd=32, head_size=16))
    with torch.no_grad():
        model.ln_out.weight.zero_()
        model.ln_out.bias.fill_(1.0)
        model.head.weight.zero_()
        model.head.weight[token] = 1.0
    return model


def test_texts_written_out_exactly_and_tokens_in_place_are_counted():
    one = WorldTokenizer().encode(" one")
    assert len(one) == 1
    model = constant_model(one[0])                       # writes " one one one ..."
    tokenizer = WorldTokenizer()
    texts = [" one one", "one one", "three four five"]
    assert tokenizer.encode(" one one") == one * 2 and tokenizer.encode("one one")[1:] == one
    result = copy_accuracy(model, texts)
    assert result["texts"] == 3 and result["tokens"] == sum(len(tokenizer.encode(t)) for t in texts)
    # " one one" is written out; "one one" starts with "one" (no space), so only its second token
    # is in place; "three four five" has none
    assert result["exact"] == 1 and result["exact_fraction"] == 1 / 3
    assert result["tokens_in_place"] == 3
    assert result["token_accuracy"] == 3 / result["tokens"]


def test_the_command_scores_a_corpus_split_and_names_a_missing_file(tmp_path, capsys):
    weights = tmp_path / "lm.pth"
    constant_model(0).save_checkpoint(weights)
    for i in range(2):                                   # the corpus loader checks the audio is there
        soundfile.write(tmp_path / f"{i}.flac", np.zeros(1600, dtype=np.float32), 16000)
    split = tmp_path / "test.jsonl"
    split.write_text("\n".join(json.dumps({"audio": str(tmp_path / f"{i}.flac"), "text": t})
                               for i, t in enumerate(["ONE TWO", "THREE"])) + "\n")
    assert main(["--weights", str(weights), "--corpus", str(split)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["texts"] == 2 and out["exact"] == 0 and out["tokens_in_place"] == 0
    assert main(["--weights", str(tmp_path / "missing.pth"), "--corpus", str(split)]) == 2
    assert "missing.pth" in capsys.readouterr().err
