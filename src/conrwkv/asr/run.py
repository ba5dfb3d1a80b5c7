"""`train.py --task asr`: state tuning (train), corpus WER (eval), transcription (predict), and
export of the state-tuned LLM as one official .pth (merge).

The frozen parts come from --load_model (the RWKV World .pth) and --encoder (a local HuggingFace
folder); the trained parts live in proj_dir as asr-step<N>.pth and are found again by eval,
predict and merge (or named with --asr_weights). Those three rebuild the model as it was trained,
from the record beside the weights (asr-step<N>.json): the projector, the conv, the --llm_train
arm and its LoRA settings, the frozen files' paths (unless --load_model / --encoder name them
anew); they take only the flags of how to decode and where to run, so a trained model cannot be
loaded with mismatched settings.
Nothing is written over an earlier output:
each eval gets its own folder eval-<weights>-beam<B>-tps<T>[-N], and merge refuses an
existing --merge_out.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import AsrConfig, ModelConfig, TrainConfig
from ..data.speech import AUDIO_SUFFIXES, SAMPLE_RATE, AudioError, CorpusCounts, load_audio
from ..data.tokenizer import WorldTokenizer
from ..eval.fresh_names import new_folder
from ..eval.wer import format_wer_table, split_summary, write_split_results
from ..io import atomic_json_save, safe_torch_load
from ..model import StepperCache
from ..train.batch_size import effective_batch
from ..train.hardware import Hardware
from ..train.trainer import fit, resolve_max_steps
from .data import AsrDataModule, corpus_names, eval_dataset, parse_corpora, speech_loader, transcript_ids
from .decode import decode
from .module import AsrModule
from .oracle import ORACLE_FIELDS, oracle_label
from .plan import WEIGHTS_NAME, as_trained, trained_weights
from .speech_rwkv import SpeechRWKV

log = logging.getLogger(__name__)

# Options of the LLM that a speech run may set; its shape comes from the checkpoint.
_LLM_OPTIONS = ("wkv_backend", "grad_cp")


def build_speech_model(model_given: dict, train_cfg: TrainConfig, asr_cfg: AsrConfig,
                       hardware: Hardware | None = None, device: str = "cpu") -> SpeechRWKV:
    """The speech model of these settings; the frozen LLM in the dtype of `hardware`'s precision
    (default: resolved from train_cfg), a fully trained one (--llm_train full) in fp32."""
    hardware = hardware or Hardware.of(train_cfg)
    if not train_cfg.load_model:
        raise ValueError("--load_model is required: the RWKV World .pth to state-tune")
    if not asr_cfg.encoder and not asr_cfg.oracle_prefix:
        raise ValueError("--encoder is required: a local HuggingFace speech-encoder folder")
    return SpeechRWKV.from_pretrained(
        train_cfg.load_model, asr_cfg, conv_kernel=model_given.get("conv_kernel", 0),
        n_layer=model_given.get("n_layer"), n_embd=model_given.get("n_embd"),
        # A fully trained LLM is read in fp32 at once: through bf16 it would lose an fp32 file's bits.
        llm_dtype=torch.float32 if asr_cfg.llm_train == "full" else hardware.frozen_dtype, device=device,
        **{k: v for k, v in model_given.items() if k in _LLM_OPTIONS})


def train_asr(model_cfg: ModelConfig, model_given: dict, train_cfg: TrainConfig,
              asr_cfg: AsrConfig) -> dict:
    hardware = Hardware.of(train_cfg)
    if hardware.precision == "bf16-true":
        raise ValueError("--precision bf16-true would cast the trained initial states and the "
                         "projector to bf16, too coarse for their updates; use bf16-mixed, which "
                         "holds the frozen LLM in bf16 and trains them in fp32")
    # The corpora are read (every file checked) before the LLM is loaded: a bad --data_file
    # fails in seconds, not after minutes of loading a 14B model.
    data = AsrDataModule(train_cfg, asr_cfg)
    data.setup("fit")
    train_cfg = resolve_max_steps(train_cfg, data, hardware)
    torch.manual_seed(train_cfg.seed)
    speech = build_speech_model(model_given, train_cfg, asr_cfg, hardware)
    if train_cfg.compile:
        speech.llm.compile_model(mode=train_cfg.compile_mode)
    module = AsrModule(speech, train_cfg, asr_cfg, WorldTokenizer())
    mean_seconds = float(np.mean(data.train_set.durations()))
    batch = effective_batch(train_cfg, hardware, mean_seconds_per_sample=mean_seconds,
                            micro_batches_per_epoch=data.batches_per_epoch(hardware.processes))
    run_config = {"task": "asr", "model": dataclasses.asdict(speech.llm.config),
                  "train": dataclasses.asdict(train_cfg), "asr": dataclasses.asdict(asr_cfg),
                  "batch": batch}
    trainer = fit(module, data, train_cfg, hardware, WEIGHTS_NAME, run_config)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def load_trained(model_given: dict, train_cfg: TrainConfig, asr_cfg: AsrConfig,
                 weights: Path | None = None) -> tuple[SpeechRWKV, Path]:
    """The speech model as trained, with the trained tensors of `weights` (default:
    trained_weights), on the evaluation device."""
    weights = weights or trained_weights(train_cfg, asr_cfg)
    hardware = Hardware.of(train_cfg)
    model_given, train_cfg, asr_cfg = as_trained(weights, model_given, train_cfg, asr_cfg)
    speech = build_speech_model(model_given, train_cfg, asr_cfg, hardware, device=hardware.device)
    speech.load_trainable_state_dict(safe_torch_load(weights), source=str(weights))
    return speech.eval(), weights


def compile_for_decoding(speech: SpeechRWKV, train_cfg: TrainConfig) -> None:
    """With --compile, the LLM compiled for --op eval / predict: one graph with symbolic sizes
    (dynamic=True) for the prefills, whose lengths differ from batch to batch, and one for the
    token step, which the GPU's RNNStepper then records into its CUDA graph. torch.compile's
    default mode: its reduce-overhead mode would record CUDA graphs inside that recording."""
    if train_cfg.compile:
        speech.llm.compile_model(dynamic=True)


@torch.no_grad()
def transcribe(speech: SpeechRWKV, audio: list[np.ndarray], asr_cfg: AsrConfig, tokenizer,
               steppers: StepperCache | None = None, texts: list[str] | None = None) -> list[str]:
    """The hypotheses for `audio`; with the oracle prefix, `texts` (the references) are its prefix."""
    targets = transcript_ids(tokenizer, texts, asr_cfg) if speech.oracle is not None else None
    return [tokenizer.decode(ids) for ids in decode(speech, audio, asr_cfg, steppers, targets)]


def eval_folder_name(weights: Path, asr_cfg: AsrConfig) -> str:
    """eval-<weights stem>-beam<B>-tps<T>, plus the oracle probe, the eval filter and a
    non-default encoder batching: each setting that changes the hypotheses is in the name."""
    parts = [f"eval-{weights.stem}", f"beam{asr_cfg.beam}", f"tps{asr_cfg.max_tokens_per_second:g}"]
    if asr_cfg.oracle_prefix:
        parts.append(oracle_label(asr_cfg))
    if asr_cfg.eval_max_duration:
        parts.append(f"max{asr_cfg.eval_max_duration:g}s")
    if asr_cfg.encoder_batching != "auto":
        parts.append(f"encoder-{asr_cfg.encoder_batching}")
    return "-".join(parts)


def _coverage(name: str, counts: CorpusCounts, skipped_while_decoding: int, scored: int) -> dict:
    """What share of the corpus was scored, and why the rest was not."""
    bad_audio = counts.bad_audio + skipped_while_decoding
    if scored + bad_audio + counts.outside_duration != counts.in_corpus:
        raise RuntimeError(f"{name}: {scored} utterances scored, {bad_audio} bad and "
                           f"{counts.outside_duration} filtered do not add up to the corpus's "
                           f"{counts.in_corpus}")
    return {"utterances_in_corpus": counts.in_corpus, "utterances_scored": scored,
            "left_out": {"longer_than_eval_max_duration": counts.outside_duration,
                         "bad_audio": bad_audio}}


def _left_out_note(name: str, split: dict, asr_cfg: AsrConfig) -> str | None:
    left = split["left_out"]
    if not any(left.values()):
        return None
    reasons = []
    if left["longer_than_eval_max_duration"]:
        reasons.append(f"{left['longer_than_eval_max_duration']} longer than --eval_max_duration "
                       f"{asr_cfg.eval_max_duration:g} s")
    if left["bad_audio"]:
        reasons.append(f"{left['bad_audio']} with bad audio (--skip_bad_audio)")
    return (f"{name}: {split['utterances_in_corpus'] - split['utterances_scored']} of "
            f"{split['utterances_in_corpus']} utterances not scored: {', '.join(reasons)}")


def eval_asr(model_cfg: ModelConfig, model_given: dict, train_cfg: TrainConfig,
             asr_cfg: AsrConfig) -> dict:
    """Corpus WER per corpus under both normalisers (eval/wer.py).

    Every corpus is resolved and read before the model is loaded, so a wrong name fails at
    once. Hypotheses, references and a summary go to a new folder beside the weights,
    eval_folder_name(...) with -2, -3, ... when that exists: an evaluation never replaces
    another's files."""
    flag = "--eval_data" if asr_cfg.eval_data else "--val_file"
    specs = parse_corpora(asr_cfg.eval_data or train_cfg.val_file, flag)
    if not specs:
        raise ValueError("nothing to score: give --eval_data (comma-separated corpora) or --val_file")
    weights = trained_weights(train_cfg, asr_cfg)
    names = corpus_names(specs)
    corpora = {name: (spec, *eval_dataset(spec, asr_cfg, flag)) for name, spec in zip(names, specs)}
    speech, weights = load_trained(model_given, train_cfg, asr_cfg, weights)
    compile_for_decoding(speech, train_cfg)
    asr_cfg = as_trained(weights, model_given, train_cfg, asr_cfg)[2]   # oracle and lowercase as trained
    tokenizer = WorldTokenizer()
    steppers = StepperCache()              # one CUDA-graph capture per batch size, not per batch
    out_dir = new_folder(weights.parent, eval_folder_name(weights, asr_cfg))
    results, splits = {}, {}
    for name, (spec, dataset, counts) in corpora.items():
        ids, refs, hyps, seconds = [], [], [], 0.0
        start = time.perf_counter()
        for batch in tqdm(speech_loader(dataset, train_cfg.micro_bsz, shuffle=False),
                          desc=f"decoding {name}", unit="batch"):
            if not batch["audio"]:
                continue
            hyps += transcribe(speech, batch["audio"], asr_cfg, tokenizer, steppers, batch["texts"])
            ids += batch["ids"]
            refs += batch["texts"]
            seconds += sum(len(a) for a in batch["audio"]) / SAMPLE_RATE
        decode_s = time.perf_counter() - start
        coverage = _coverage(name, counts, dataset.skipped, len(ids))
        results[name] = write_split_results(out_dir, name, ids, refs, hyps)
        splits[name] = {"corpus": spec.text, **coverage, **split_summary(results[name]),
                        "audio_s": seconds, "decode_s": decode_s}
    summary = {"weights": str(weights), "eval_dir": str(out_dir), "beam": asr_cfg.beam,
               "max_tokens_per_second": asr_cfg.max_tokens_per_second,
               "eval_max_duration": asr_cfg.eval_max_duration,
               "encoder_batching": asr_cfg.encoder_batching,
               **{name: getattr(asr_cfg, name) for name in ORACLE_FIELDS}, "splits": splits}
    atomic_json_save(summary, out_dir / "summary.json")
    table = format_wer_table(results, {name: s["utterances_in_corpus"] for name, s in splits.items()})
    notes = [note for name, s in splits.items() if (note := _left_out_note(name, s, asr_cfg))]
    print(f"\nCorpus WER of {weights} (beam {asr_cfg.beam}); files in {out_dir}\n{table}"
          + "".join(f"\n{note}" for note in notes))
    return summary


def _audio_files(spec: str) -> list[Path]:
    files = []
    for item in (s for s in spec.split(",") if s):
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"--audio: {path} does not exist")
    if not files:
        raise ValueError(f"--audio {spec!r}: no audio files ({', '.join(AUDIO_SUFFIXES)}) found")
    return files


def _load_or_skip(path: Path, asr_cfg: AsrConfig, skipped: list[str]) -> np.ndarray | None:
    """The file's audio; for a bad file an error, or with --skip_bad_audio None and a warning."""
    try:
        return load_audio(str(path))
    except AudioError as err:
        if not asr_cfg.skip_bad_audio:
            raise AudioError(f"--audio: {err} (--skip_bad_audio skips such files)") from err
        skipped.append(str(path))
        log.warning("--audio: skipping %s (bad audio %d so far): %s", path, len(skipped), err)
        return None


def predict_asr(model_cfg: ModelConfig, model_given: dict, train_cfg: TrainConfig,
                asr_cfg: AsrConfig) -> dict:
    """Transcribe --audio files/folders; print each text and the real-time factor. A bad audio
    file stops with an error naming it, or with --skip_bad_audio is skipped and counted."""
    files = _audio_files(asr_cfg.audio)
    weights = trained_weights(train_cfg, asr_cfg)
    if as_trained(weights, model_given, train_cfg, asr_cfg)[2].oracle_prefix:
        raise ValueError(f"--op predict: {weights} was trained with --oracle_prefix, which feeds the "
                         f"transcript in place of the speech, and new audio has none; score the "
                         f"probe with --op eval on a corpus with transcripts")
    speech, weights = load_trained(model_given, train_cfg, asr_cfg, weights)
    compile_for_decoding(speech, train_cfg)
    tokenizer = WorldTokenizer()
    steppers = StepperCache()
    texts, skipped, seconds, start = {}, [], 0.0, time.perf_counter()
    for i in range(0, len(files), train_cfg.micro_bsz):
        loaded = [(path, _load_or_skip(path, asr_cfg, skipped)) for path in files[i:i + train_cfg.micro_bsz]]
        chunk = [(path, audio) for path, audio in loaded if audio is not None]
        if not chunk:
            continue
        audio = [a for _, a in chunk]
        seconds += sum(len(a) for a in audio) / SAMPLE_RATE
        for (path, _), text in zip(chunk, transcribe(speech, audio, asr_cfg, tokenizer, steppers)):
            texts[str(path)] = text
            print(f"{path}\t{text}", flush=True)
    if not texts:
        raise ValueError(f"--audio {asr_cfg.audio}: all {len(files)} files are bad audio; nothing to "
                         f"transcribe")
    elapsed = time.perf_counter() - start
    rtf = elapsed / seconds if seconds else float("nan")
    bad = f" ({len(skipped)} of {len(files)} skipped as bad audio)" if skipped else ""
    print(f"{len(texts)} files transcribed{bad}, {seconds:.1f} s of audio in {elapsed:.2f} s: real-time "
          f"factor {rtf:.3f} ({Hardware.of(train_cfg).device}, beam {asr_cfg.beam}, weights {weights})")
    return {"texts": texts, "skipped": skipped, "audio_s": seconds, "elapsed_s": elapsed, "rtf": rtf}


def merge_asr(model_cfg: ModelConfig, model_given: dict, train_cfg: TrainConfig,
              asr_cfg: AsrConfig) -> dict:
    """Write the LLM with its trained time_state (and conv) as one official .pth: --merge_out,
    or <weights stem>-merged-llm.pth beside the weights; never over an existing file."""
    weights = trained_weights(train_cfg, asr_cfg)
    target = Path(asr_cfg.merge_out or weights.with_name(f"{weights.stem}-merged-llm.pth"))
    if target.exists():
        raise FileExistsError(f"{target} exists; choose another --merge_out (an existing file is "
                              f"never overwritten)")
    speech, weights = load_trained(model_given, train_cfg, asr_cfg, weights)
    speech.export_merged_llm(target)
    note = ("runs in the rwkv package as a state-tuned model" if not speech.llm.config.conv_kernel
            else "has Con-RWKV conv keys: runs in this project's RWKV only")
    print(f"wrote {target} ({note})")
    return {"merged": str(target), "from": str(weights)}
