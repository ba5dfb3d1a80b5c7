"""Tiny, randomly initialised stand-ins for the two frozen models of the ASR recipe, for smoke
runs and tests on a machine that can download nothing:

- a HuBERT-architecture encoder (the real 7-layer conv front end: 50 frames/s at 16 kHz, at a
  tiny width), saved with save_pretrained beside its own feature extractor;
- an RWKV-6 (or, with --arch x070, RWKV-7) language model with the World vocabulary (65536) at
  a tiny width, initialised by the official scheme and saved as an official .pth.

They run the real loading code end to end; they know nothing about speech or English, so a
smoke run's WER says only that the pipeline works.

    python -m conrwkv.asr.tiny_models --out data/asr-smoke/models
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..config import ModelConfig
from ..data.speech.audio import SAMPLE_RATE
from ..model import RWKV

TINY_ENCODER = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                    conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)


def make_tiny_encoder(folder: str | Path, seed: int = 0) -> Path:
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    folder = Path(folder)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = HubertModel(HubertConfig(**TINY_ENCODER, feat_extract_norm="layer"))
    model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0, do_normalize=True,
                             return_attention_mask=True).save_pretrained(folder)
    return folder


def make_tiny_llm(path: str | Path, n_layer: int = 2, n_embd: int = 64, seed: int = 0,
                  arch: str = "x060") -> Path:
    """Official init, except the output projections: the official scheme starts them at zero,
    which would make every block (and so the trained state) invisible in the output. `arch`
    is x060 (RWKV-6) or x070 (RWKV-7, whose channel mix has no receptance)."""
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        model = RWKV(ModelConfig(vocab_size=65536, n_layer=n_layer, n_embd=n_embd, head_size=16, arch=arch))
        for block in model.blocks:
            for linear in (block.att.output, block.ffn.value, getattr(block.ffn, "receptance", None)):
                if linear is not None:
                    linear.weight.normal_(0.0, linear.in_features**-0.5)
    model.save_checkpoint(path)
    return Path(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True,
                   help="Folder for encoder/ and rwkv-tiny.pth (rwkv7-tiny.pth with --arch x070).")
    p.add_argument("--arch", default="x060", choices=("x060", "x070"),
                   help="Architecture of the tiny RWKV: x060 (RWKV-6) or x070 (RWKV-7).")
    p.add_argument("--n_layer", type=int, default=2, help="Layers of the tiny RWKV.")
    p.add_argument("--n_embd", type=int, default=64, help="Width of the tiny RWKV.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the random weights.")
    args = p.parse_args(argv)
    out = Path(args.out)
    # The two architectures have their own files, so one folder can hold both.
    encoder = out / "encoder"
    llm = out / ("rwkv7-tiny.pth" if args.arch == "x070" else "rwkv-tiny.pth")
    if not (encoder / "config.json").is_file():
        make_tiny_encoder(encoder, args.seed)
    if not llm.is_file():
        make_tiny_llm(llm, args.n_layer, args.n_embd, args.seed, args.arch)
    print(f"{encoder}\n{llm}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
