"""Speech data command line for RWKV-ASR: a synthetic LibriSpeech-format corpus for offline runs,
and JSONL manifests from any supported speech source. The logic lives in conrwkv.data.synth and
conrwkv.data.speech; this file only reads flags.

    python dataset2.py synth --out data/synth --train 200 --dev 40 --test_clean 40 --test_other 40
    python dataset2.py manifest --source data/LibriSpeech --split test-clean --out test-clean.jsonl
"""

from __future__ import annotations

import argparse
import logging
import math

from conrwkv.data.speech import load_corpus, write_manifest
from conrwkv.data.synth import (
    DEFAULT_HELDOUT_VOICES,
    DEFAULT_SPEEDS,
    DEFAULT_VOICES,
    SynthConfig,
    synthesize_corpus,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser(
        "synth", help="write a synthetic corpus in the LibriSpeech layout with espeak-ng and flite",
        description="Speak WordNet example sentences with espeak-ng and flite voices at several speeds "
                    "into <out>/{train,dev,test-clean,test-other}/<speaker>/<chapter>/*.flac (16 kHz) "
                    "with LibriSpeech transcripts. test-other uses held-out voices. An existing folder "
                    "is resumed when its meta.json has the same parameters and refused otherwise.")
    defaults = SynthConfig()
    synth.add_argument("--out", required=True, help="output folder (created; resumed if made with the "
                       "same parameters)")
    synth.add_argument("--train", type=int, default=defaults.train, help="utterances in train")
    synth.add_argument("--dev", type=int, default=defaults.dev, help="utterances in dev")
    synth.add_argument("--test_clean", type=int, default=defaults.test_clean,
                       help="utterances in test-clean (seen voices, unseen sentences)")
    synth.add_argument("--test_other", type=int, default=defaults.test_other,
                       help="utterances in test-other (held-out voices, unseen sentences)")
    synth.add_argument("--seed", type=int, default=defaults.seed,
                       help="seed for the choice of sentences, voices and speeds")
    synth.add_argument("--voices", nargs="+", default=list(DEFAULT_VOICES),
                       help="voices of train, dev and test-clean: espeak:<voice>[+<variant>] "
                            "(espeak-ng --voices=en, --voices=variant) or flite:<voice> (flite -lv)")
    synth.add_argument("--heldout_voices", nargs="+", default=list(DEFAULT_HELDOUT_VOICES),
                       help="voices of test-other only, none of them in --voices")
    synth.add_argument("--speeds", nargs="+", type=float, default=list(DEFAULT_SPEEDS),
                       help="speaking-rate factors (1.0: the synthesiser's normal rate)")
    synth.add_argument("--min_words", type=int, default=defaults.min_words, help="fewest words per utterance")
    synth.add_argument("--max_words", type=int, default=defaults.max_words, help="most words per utterance")
    synth.add_argument("--workers", type=int, default=0,
                       help="synthesiser processes run at once (0: one per CPU core)")
    synth.add_argument("--no_install", action="store_true",
                       help="stop with a message instead of running apt-get when espeak-ng, flite or "
                            "wordnet-base is missing")
    synth.add_argument("--no_progress", action="store_true", help="hide the progress bar")

    manifest = commands.add_parser(
        "manifest", help="write a JSONL manifest (id, audio, text, duration) from any supported source",
        description="Read a LibriSpeech split folder, a datasets save_to_disk folder or a JSONL manifest "
                    "and write one {id, audio, text, duration} line per utterance. Audio stored inside a "
                    "dataset is written out beside the manifest in <manifest stem>_audio/.")
    manifest.add_argument("--source", required=True,
                          help="LibriSpeech split folder (or LibriSpeech/ with --split), save_to_disk "
                               "folder, or .jsonl manifest")
    manifest.add_argument("--split", default=None,
                          help="split name: a folder under a LibriSpeech root, or a DatasetDict split")
    manifest.add_argument("--out", required=True, help="manifest file to write (.jsonl)")
    manifest.add_argument("--text_column", default=None,
                          help="text column of a saved dataset (default: the first of text, sentence, "
                               "transcript)")
    manifest.add_argument("--skip_bad_audio", action="store_true",
                          help="leave out (and count in the log) missing, empty or corrupt audio files "
                               "instead of stopping at the first")
    manifest.add_argument("--min_duration", type=float, default=0.0,
                          help="leave out utterances shorter than this many seconds")
    manifest.add_argument("--max_duration", type=float, default=math.inf,
                          help="leave out utterances longer than this many seconds (default: no limit)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "synth":
        config = SynthConfig(train=args.train, dev=args.dev, test_clean=args.test_clean,
                             test_other=args.test_other, seed=args.seed, voices=tuple(args.voices),
                             heldout_voices=tuple(args.heldout_voices), speeds=tuple(args.speeds),
                             min_words=args.min_words, max_words=args.max_words)
        synthesize_corpus(args.out, config, workers=args.workers or None,
                          install_missing=not args.no_install, progress=not args.no_progress)
    else:
        utterances = load_corpus(args.source, args.split, text_column=args.text_column,
                                 skip_bad_audio=args.skip_bad_audio, min_duration=args.min_duration,
                                 max_duration=args.max_duration)
        path = write_manifest(utterances, args.out)
        hours = sum(u.duration for u in utterances) / 3600
        logging.getLogger("dataset2").info("wrote %s: %d utterances, %.2f hours", path, len(utterances),
                                           hours)


if __name__ == "__main__":
    main()
