"""How well a language model writes out what it was just shown: the ability SLAM-ASR borrows
from its LLM, and what the copy documents of the digits LM text ("three one four # three one
four", data/offline/digits.py) are there to teach.

For each text, the prompt is the text's tokens and the separator's; greedy decoding then writes
as many tokens as the text has, and the probe counts the texts written out exactly and the
tokens in place. The texts are a corpus split's transcripts (lowercased, as the recogniser's
targets are), every one of them; the digits LM text leaves the dev and test strings out, so they
are strings the model never saw.

    python -m conrwkv.lm.copy_probe --weights output/digits-lm/rwkv-step000600.pth \\
        --corpus data/digits/test-clean
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ..data.speech import load_corpus
from ..data.tokenizer import WorldTokenizer
from ..model import RWKV


@torch.no_grad()
def copy_accuracy(model: RWKV, texts: list[str], separator: str = "#") -> dict:
    """{"texts", "exact", "exact_fraction", "tokens", "tokens_in_place", "token_accuracy"} of greedy
    copies of `texts` by `model` (RNN mode: the prompt in one pass, then one token at a time)."""
    tokenizer = WorldTokenizer()
    separator_ids = tokenizer.encode(separator)      # as the LM text writes it: no spaces around
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    exact = tokens = in_place = 0
    for text in texts:
        target = tokenizer.encode(text)
        logits, state = model(torch.tensor([target + separator_ids], device=device))
        written = []
        for _ in target:
            token = int(logits[0, -1].argmax())
            written.append(token)
            logits, state = model(torch.tensor([[token]], device=device), state)
        exact += written == target
        tokens += len(target)
        in_place += sum(a == b for a, b in zip(written, target))
    model.train(was_training)
    return {"texts": len(texts), "exact": exact, "exact_fraction": exact / max(len(texts), 1),
            "tokens": tokens, "tokens_in_place": in_place, "token_accuracy": in_place / max(tokens, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="the language model, an official-format .pth")
    p.add_argument("--corpus", required=True,
                   help="a corpus split (LibriSpeech-layout folder, save_to_disk folder or JSONL) whose "
                        "transcripts are the texts to copy")
    p.add_argument("--separator", default="#", help="what stands between a text and its copy (default: #)")
    args = p.parse_args(argv)
    try:
        model = RWKV.from_checkpoint(args.weights, dtype=torch.float32)
        texts = [" ".join(u.text.lower().split()) for u in load_corpus(args.corpus)]
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = copy_accuracy(model, texts, args.separator)
    print(json.dumps({"weights": args.weights, "corpus": args.corpus, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
