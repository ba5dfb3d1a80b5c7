"""Train a small HuBERT-architecture speech encoder with CTC on a LibriSpeech-layout corpus, and
save it the way a CTC-fine-tuned HuBERT is published (HubertForCTC + feature extractor + CTC
tokenizer, `save_pretrained`), so that SpeechEncoder loads it like hubert-large-ls960-ft.

Why: SLAM-ASR's encoder is a self-supervised model fine-tuned with CTC on LibriSpeech, so its
last layer already says which letters were spoken. No such model can be downloaded here, so the
offline experiment (demo/demo-asr-offline.sh) trains a small one from random weights on the
synthetic corpus's training split. HuBERT's self-supervised pretraining is left out: with a few
hours of speech from a few voices it would add little, and CTC alone learns the letters.

Letters: CTC over 28 symbols plus the blank: A-Z, the apostrophe and the word separator "|",
as in the published CTC heads. Training: AdamW, linear warm-up then linear decay, length-
bucketed batches, SpecAugment time masking (HuBERT's own mask_time_prob), bf16 autocast on a
GPU. After training, greedy CTC decoding gives each evaluation split's corpus WER, the
encoder's own accuracy before any language model is involved.

    python -m conrwkv.asr.ctc_encoder --train_data corpus/train \\
        --eval_data corpus/test-clean,corpus/test-other --out models/encoder --steps 4000
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data.speech import SAMPLE_RATE, LengthBucketBatchSampler, load_audio, load_corpus
from ..eval.wer import corpus_wer
from ..io import atomic_json_save, atomic_torch_save
from ..train.flags import add_dataclass_flags, take
from ..train.schedule import lr_factor

log = logging.getLogger(__name__)

BLANK, WORD_SEPARATOR = "<pad>", "|"
LETTERS = (BLANK, WORD_SEPARATOR, "'", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
LETTER_ID = {c: i for i, c in enumerate(LETTERS)}


@dataclass
class CtcEncoderConfig:
    """Shape of the encoder and its training; the defaults are the offline experiment's."""

    hidden_size: int = field(default=256, metadata={"help": "transformer width"})
    layers: int = field(default=6, metadata={"help": "transformer layers"})
    heads: int = field(default=4, metadata={"help": "attention heads"})
    ffn: int = field(default=1024, metadata={"help": "feed-forward width"})
    conv_dim: int = field(default=256, metadata={"help": "channels of each of the 7 conv front-end layers"})
    mask_time_prob: float = field(default=0.05, metadata={"help": "SpecAugment time-mask probability"})
    layerdrop: float = field(default=0.0, metadata={"help": "probability of skipping a layer in training"})
    steps: int = field(default=6000, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=32, metadata={"help": "utterances per step"})
    lr: float = field(default=1.5e-3, metadata={"help": "peak learning rate"})
    warmup: int = field(default=500, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient-norm clip"})
    seed: int = field(default=0, metadata={"help": "seed of weights, batches and masks"})


def text_to_ids(text: str) -> list[int]:
    """Uppercase transcript -> letter ids; spaces become the word separator. Unknown characters
    are an error: they would silently teach the model to skip what was said."""
    ids = []
    for char in " ".join(text.upper().split()):
        symbol = WORD_SEPARATOR if char == " " else char
        if symbol not in LETTER_ID or symbol == BLANK:
            raise ValueError(f"transcript {text!r} has the character {char!r}, which the CTC "
                             f"alphabet (A-Z, apostrophe, space) does not hold")
        ids.append(LETTER_ID[symbol])
    return ids


def greedy_ctc_text(frame_ids: np.ndarray) -> str:
    """Best path to text: merge repeats, drop blanks, separators become spaces."""
    out, previous = [], None
    for i in frame_ids.tolist():
        if i != previous and i != LETTER_ID[BLANK]:
            out.append(" " if i == LETTER_ID[WORD_SEPARATOR] else LETTERS[i])
        previous = i
    return " ".join("".join(out).split())


def build_model(config: CtcEncoderConfig):
    from transformers import HubertConfig, HubertForCTC

    hubert = HubertConfig(
        hidden_size=config.hidden_size, num_hidden_layers=config.layers,
        num_attention_heads=config.heads, intermediate_size=config.ffn,
        conv_dim=(config.conv_dim,) * 7, feat_extract_norm="layer", do_stable_layer_norm=True,
        mask_time_prob=config.mask_time_prob, layerdrop=config.layerdrop,
        vocab_size=len(LETTERS), pad_token_id=LETTER_ID[BLANK],
        ctc_loss_reduction="mean", ctc_zero_infinity=True)
    return HubertForCTC(hubert)


def build_processor_parts(folder: Path):
    """The feature extractor and CTC tokenizer saved beside the model (the published layout)."""
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor

    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=True)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.json"
    vocab.write_text(json.dumps(LETTER_ID))
    tokenizer = Wav2Vec2CTCTokenizer(str(vocab), pad_token=BLANK, word_delimiter_token=WORD_SEPARATOR,
                                     unk_token=BLANK)
    return extractor, tokenizer


def _load_split(source: str) -> tuple[list[str], list[np.ndarray], list[str]]:
    utterances = load_corpus(source)
    # Threads: decoding runs in libsndfile, outside the GIL, so hours of FLAC load in seconds.
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        audio = list(tqdm(pool.map(lambda u: load_audio(u.audio, u.audio_name), utterances),
                          total=len(utterances), desc=f"load {Path(source).name}", unit="utt",
                          leave=False))
    return [u.id for u in utterances], audio, [u.text for u in utterances]


def _batch_inputs(extractor, audio: list[np.ndarray], device) -> dict[str, torch.Tensor]:
    inputs = extractor(audio, sampling_rate=SAMPLE_RATE, padding=True, return_tensors="pt",
                       return_attention_mask=True)
    return {k: v.to(device) for k, v in inputs.items()}


def lr_multiplier(step: int, elapsed: float, config: CtcEncoderConfig, time_limit: float) -> float:
    """The learning rate over config.lr: linear warm-up over config.warmup steps, then a linear
    decay that reaches zero at config.steps or, with a time limit, when that runs out, whichever
    comes first. A time limit that cut a step-planned decay short would stop training at a high
    learning rate, so the decay follows the clock too."""
    progress = (step - config.warmup) / max(config.steps - config.warmup, 1)
    if time_limit:
        progress = max(progress, elapsed / time_limit)
    return lr_factor(step, config.steps, config.warmup, 1.0, "const") * min(max(1.0 - progress, 0.0), 1.0)


TRAINING_DIR = "training"          # out/training/step<N>.pt: resumable states, never deleted


def _resumable_states(out: Path) -> list[Path]:
    """The resumable training states in out/training, newest first."""
    folder = out / TRAINING_DIR
    found = [(int(p.stem.removeprefix("step")), p) for p in folder.glob("step*.pt")
             if p.stem.removeprefix("step").isdigit()] if folder.is_dir() else []
    return [p for _, p in sorted(found, reverse=True)]


def _save_state(out: Path, model, optimizer, config: CtcEncoderConfig, step: int, epoch: int,
                position: int, losses: list, elapsed: float, device: torch.device) -> Path:
    """Everything a resume needs to go on exactly: weights, AdamW, where in which epoch, the
    losses so far, the training seconds so far (the learning rate decays by them under a time
    limit) and the random states (dropout draws from torch's, SpecAugment's masks from numpy's)."""
    path = out / TRAINING_DIR / f"step{step}.pt"
    if not path.exists():
        atomic_torch_save({
            "config": asdict(config), "step": step, "epoch": epoch, "position": position,
            "elapsed": elapsed, "losses": torch.stack(losses).float().cpu() if losses else torch.zeros(0),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(), "numpy_rng": _numpy_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.zeros(0),
        }, path)
    return path


def _numpy_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
            "cached": cached, "kind": kind}


def _set_numpy_state(state: dict) -> None:
    np.random.set_state((state["kind"], state["keys"].numpy().astype(np.uint32), state["pos"],
                         state["has_gauss"], state["cached"]))


def _load_state(out: Path, config: CtcEncoderConfig, device: torch.device) -> dict | None:
    states = _resumable_states(out)
    if not states:
        return None
    try:
        state = torch.load(states[0], map_location=device, weights_only=True)
    except Exception as err:         # torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise ValueError(f"{states[0]} cannot be read ({type(err).__name__}); move it aside to "
                         f"resume from the one before") from err
    if state["config"] != asdict(config):
        changed = sorted(k for k in state["config"] if state["config"][k] != asdict(config).get(k))
        raise ValueError(f"{out} holds a training run with other settings ({', '.join(changed)}); "
                         f"give the same flags to continue it, or choose a new --out")
    return state


def train_ctc_encoder(train_data: str, out: str | Path, config: CtcEncoderConfig,
                      eval_data: list[str] = (), device: str = "auto", progress: bool = True,
                      time_limit: float = 0.0, save_every: int = 0, pause_after: float = 0.0) -> dict:
    """Train, save to `out` (save_pretrained folder) and score `eval_data`; returns the results
    written to `out/ctc_results.json`. With `time_limit` (seconds of training, 0: none) training
    stops early when it runs out (after one step at least), and the model is still saved and
    scored; the results then say how many steps were made.

    Resumable: every `save_every` steps (0: never) and when `pause_after` seconds of this launch
    have passed, the training state goes to out/training/step<N>.pt. A pause returns
    {"paused_at": N} without saving or scoring the model; the same call again continues from
    the newest state (the time limit counts the seconds of every launch), to the same weights
    as a run that was never stopped."""
    out = Path(out)
    if (out / "config.json").exists():
        raise FileExistsError(f"{out} already holds a model; choose a new --out")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)       # SpecAugment's masks (transformers draws them from numpy)
    model = build_model(config).to(device)
    resumed = _load_state(out, config, device)
    extractor, tokenizer = build_processor_parts(out)
    ids, audio, texts = _load_split(train_data)
    labels = [torch.tensor(text_to_ids(t)) for t in texts]
    sampler = LengthBucketBatchSampler([len(a) / SAMPLE_RATE for a in audio], config.batch_size,
                                       seed=config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.98), eps=1e-8,
                                  weight_decay=config.weight_decay)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    model.train()
    losses, step, epoch, position, earlier = [], 0, 0, 0, 0.0
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        torch.set_rng_state(resumed["torch_rng"].cpu())
        _set_numpy_state(resumed["numpy_rng"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(resumed["cuda_rng"].cpu(), device)
        losses = [x.to(device) for x in resumed["losses"]]
        step, epoch, position, earlier = (resumed[k] for k in ("step", "epoch", "position", "elapsed"))
        log.warning("resuming %s at step %d (epoch %d, batch %d)", out, step, epoch, position)
    start = time.time() - earlier                  # the time limit counts every launch's seconds
    launched = time.time()
    bar = tqdm(total=config.steps, initial=step, desc="ctc", unit="step", disable=not progress)
    stopped_early = False
    while step < config.steps and not stopped_early:
        sampler.set_epoch(epoch)
        for index, batch in enumerate(sampler):
            if index < position:                   # a resumed epoch goes on where it stopped
                continue
            if step >= config.steps:
                break
            if pause_after and time.time() - launched > pause_after:
                path = _save_state(out, model, optimizer, config, step, epoch, index, losses,
                                   time.time() - start, device)
                bar.close()
                log.warning("paused after %.0f s at step %d of %d (%s): run the same command again "
                            "to continue", time.time() - launched, step, config.steps, path)
                return {"paused_at": step, "state": str(path)}
            # At least one step is made: a model saved untrained would pass for a result.
            if time_limit and step and time.time() - start > time_limit:
                log.warning("time limit of %.0f s reached after %d of %d steps: saving this model",
                            time_limit, step, config.steps)
                stopped_early = True
                break
            for group in optimizer.param_groups:
                group["lr"] = config.lr * lr_multiplier(step, time.time() - start, config, time_limit)
            inputs = _batch_inputs(extractor, [audio[i] for i in batch], device)
            target = torch.nn.utils.rnn.pad_sequence([labels[i] for i in batch], batch_first=True,
                                                     padding_value=-100).to(device)
            with autocast:
                loss = model(**inputs, labels=target).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            # Kept on the device: reading each loss back would wait for the GPU every step.
            losses.append(loss.detach())
            step += 1
            bar.update()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{float(torch.stack(losses[-50:]).mean()):.3f}")
            if save_every and step % save_every == 0:
                _save_state(out, model, optimizer, config, step, epoch, index + 1, losses,
                            time.time() - start, device)
        epoch += 1
        position = 0
    bar.close()
    train_seconds = time.time() - start
    losses = torch.stack(losses).float().cpu().numpy()
    # fp16 halves the folder; SpeechEncoder loads it at the dtype it is asked for.
    model.half().save_pretrained(out)
    model.float()
    extractor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    results = {"config": asdict(config), "train_data": train_data, "train_utterances": len(ids),
               "steps_done": step, "stopped_early": stopped_early,
               "epochs": epoch, "train_seconds": round(train_seconds, 1), "device": _device_name(device),
               "loss_first_50": float(np.mean(losses[:50])), "loss_last_50": float(np.mean(losses[-50:])),
               "loss_every_50": [round(float(np.mean(losses[i:i + 50])), 4)
                                 for i in range(0, len(losses), 50)],
               "eval": {}}
    for source in eval_data:
        split_ids, split_audio, split_texts = _load_split(source)
        hypotheses = transcribe(model, extractor, split_audio, device)
        wer = corpus_wer(split_texts, hypotheses)
        results["eval"][Path(source).name] = wer.summary()
        log.info("CTC greedy WER on %s: %.2f%% (%d utterances)", source, 100 * wer.wer, len(split_ids))
    atomic_json_save(results, out / "ctc_results.json")
    return results


@torch.no_grad()
def transcribe(model, extractor, audio: list[np.ndarray], device, batch_size: int = 32) -> list[str]:
    """Greedy CTC transcripts, in the order of `audio`."""
    was_training = model.training
    model.eval()
    texts: list[str] = [""] * len(audio)
    order = sorted(range(len(audio)), key=lambda i: -len(audio[i]))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=torch.device(device).type == "cuda")
    for begin in range(0, len(order), batch_size):
        rows = order[begin:begin + batch_size]
        inputs = _batch_inputs(extractor, [audio[i] for i in rows], device)
        with autocast:
            logits = model(**inputs).logits
        frames = model._get_feat_extract_output_lengths(inputs["attention_mask"].sum(-1))
        best = logits.argmax(-1).cpu().numpy()
        for row, i in enumerate(rows):
            texts[i] = greedy_ctc_text(best[row, :int(frames[row])])
    model.train(was_training)
    return texts


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_data", required=True,
                   help="LibriSpeech-layout split folder or manifest to train on")
    p.add_argument("--eval_data", default="",
                   help="comma-separated splits scored by greedy CTC after training")
    p.add_argument("--out", required=True, help="new folder for the save_pretrained encoder")
    p.add_argument("--device", default="auto", help="torch device (auto: cuda when there is one)")
    p.add_argument("--time_limit", type=float, default=0.0,
                   help="stop training after this many seconds and save what there is; the learning "
                        "rate then decays to zero by this time (0: no limit, decay by --steps)")
    p.add_argument("--save_every", type=int, default=0,
                   help="write a resumable training state to OUT/training every this many steps "
                        "(0: none); a killed run given the same command continues from the newest")
    p.add_argument("--pause_after", type=float, default=0.0,
                   help="after this many seconds of this launch, write a resumable state and stop "
                        "without saving the model (0: never); the same command again continues, "
                        "so a training longer than one session's call runs in parts")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    add_dataclass_flags(p, CtcEncoderConfig, "encoder and training")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = take(CtcEncoderConfig, args)[0]
    eval_data = [s for s in args.eval_data.split(",") if s]
    try:
        results = train_ctc_encoder(args.train_data, args.out, config, eval_data, args.device,
                                    progress=not args.no_progress, time_limit=args.time_limit,
                                    save_every=args.save_every, pause_after=args.pause_after)
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if "paused_at" in results:
        print(json.dumps(results))
        return 0
    summary_keys = ("steps_done", "train_seconds", "loss_first_50", "loss_last_50")
    print(json.dumps({k: results[k] for k in summary_keys}))
    for split, summary in results["eval"].items():
        print(f"{split}: CTC greedy WER {100 * summary['wer']:.2f}%")
    return 0 if all(math.isfinite(r["wer"]) for r in results["eval"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
