"""Speech data command line for RWKV-ASR: a synthetic LibriSpeech-format corpus for offline runs,
its compact Opus pack for carrying to another machine, a folder of the synthesisers that runs
without installation (synthkit), English LM text from Debian packages, and JSONL manifests
from any supported speech source. The logic lives in conrwkv.data.offline.synth, synthkit,
corpus_pack, text_sources, lm_text, digits and speech; this file only reads flags.

    python dataset2.py synth --out data/synth --train 200 --dev 40 --test_clean 40 --test_other 40
    python dataset2.py synth --out data/synth40h --voices all --hours 40 --pitches -2 0 2 --snr_db 5 30
    python dataset2.py synthkit --out data/synthkit --archive data/synthkit.tar.xz
    python dataset2.py synthkit --unpack data/synthkit.tar.xz --out /tmp/synthkit   (elsewhere)
    python dataset2.py synth --out data/synth --tools /tmp/synthkit ...
    python dataset2.py pack --corpus data/synth --out data/synth.tar
    python dataset2.py unpack --pack data/synth.tar --out data/synth
    python dataset2.py lmtext --corpus data/synth --out data/lm-text --copy_fraction 0.2
    python dataset2.py synth --out data/digits --text digits --min_words 3 --max_words 8
    python dataset2.py digitlm --corpus data/digits --out data/digits-lm
    python dataset2.py manifest --source data/LibriSpeech --split test-clean --out test-clean.jsonl
"""

from __future__ import annotations

import argparse
import logging
import math
import sys

from conrwkv.data.offline.corpus_pack import pack_corpus, unpack_corpus
from conrwkv.data.offline.digits import write_digit_lm_text
from conrwkv.data.offline.lm_text import corpus_transcripts, write_lm_text
from conrwkv.data.offline.synth import (
    ALL_VOICES,
    DEFAULT_HELDOUT_VOICES,
    DEFAULT_SPEEDS,
    DEFAULT_VOICES,
    ENGINES,
    HELDOUT_EVERY,
    TEXTS,
    SynthConfig,
    synthesize_corpus,
)
from conrwkv.data.offline.synthkit import (
    DEFAULT_FESTIVAL_VOICE_PACKAGES,
    build_kit,
    check_kit,
    pack_kit,
    unpack_kit,
)
from conrwkv.data.offline.text_sources import SOURCES
from conrwkv.data.speech import load_corpus, write_manifest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser(
        "synth", help="write a synthetic corpus in the LibriSpeech layout with espeak-ng, flite and festival",
        description="Speak WordNet example sentences with espeak-ng, flite and festival voices at several "
                    "speeds (and optionally pitches, with noise) into "
                    "<out>/{train,dev,test-clean,test-other}/<speaker>/<chapter>/*.flac (16 kHz) with "
                    "LibriSpeech transcripts; utterances.tsv records each utterance's voice, speed, pitch "
                    "and noise. test-other uses held-out voices. An existing folder is resumed when its "
                    "meta.json has the same parameters and refused otherwise; a complete one is reused "
                    "without the synthesisers. Needs the Debian packages espeak-ng, flite, festival (for "
                    "festival voices) and wordnet-base (never installed from here), or --tools.")
    defaults = SynthConfig()
    synth.add_argument("--out", required=True, help="output folder (created; resumed if made with the "
                       "same parameters)")
    synth.add_argument("--train", type=int, default=None,
                       help=f"utterances in train (default {defaults.train}; not with --hours)")
    synth.add_argument("--hours", type=float, default=0.0,
                       help="hours of training speech instead of --train (estimated from the words per "
                            "sentence; meta.json records the measured hours). Past the ~23 h the distinct "
                            "sentences give, train speaks sentences again with other voices")
    synth.add_argument("--dev", type=int, default=defaults.dev, help="utterances in dev")
    synth.add_argument("--test_clean", type=int, default=defaults.test_clean,
                       help="utterances in test-clean (seen voices, unseen sentences)")
    synth.add_argument("--test_other", type=int, default=defaults.test_other,
                       help="utterances in test-other (held-out voices, unseen sentences)")
    synth.add_argument("--seed", type=int, default=defaults.seed,
                       help="seed for the choice of sentences, voices, speeds, pitches and noise")
    synth.add_argument("--voices", nargs="+", default=list(DEFAULT_VOICES),
                       help="voices of train, dev and test-clean: espeak:<voice>[+<variant>] "
                            "(espeak-ng --voices=en, --voices=variant), flite:<voice> (flite -lv), "
                            f"festival:<voice> (e.g. kal_diphone), or {ALL_VOICES}: every English voice "
                            "of the synthesisers there (117 with the three festival voices of Debian)")
    synth.add_argument("--heldout_voices", nargs="*", default=None,
                       help="voices of test-other only, none of them in --voices (default: "
                            f"{' '.join(DEFAULT_HELDOUT_VOICES)}; with --voices {ALL_VOICES}, one voice in "
                            f"{HELDOUT_EVERY} of each engine)")
    synth.add_argument("--speeds", nargs="+", type=float, default=list(DEFAULT_SPEEDS),
                       help="speaking-rate factors (1.0: the synthesiser's normal rate)")
    synth.add_argument("--pitches", nargs="+", type=float, default=list(defaults.pitches),
                       help="pitch shifts in semitones, spread evenly over the utterances (made by "
                            "resampling: formants move with the pitch)")
    synth.add_argument("--snr_db", nargs=2, type=float, default=None, metavar=("LOW", "HIGH"),
                       help="add white or pink noise at a signal-to-noise ratio drawn from [LOW, HIGH] dB")
    synth.add_argument("--noise_fraction", type=float, default=defaults.noise_fraction,
                       help="share of the utterances that get noise (with --snr_db)")
    synth.add_argument("--min_words", type=int, default=defaults.min_words,
                       help="fewest words per utterance (digits with --text digits)")
    synth.add_argument("--max_words", type=int, default=defaults.max_words,
                       help="most words per utterance (digits with --text digits)")
    synth.add_argument("--text", default=defaults.text, choices=TEXTS,
                       help="what the utterances say: WordNet's example sentences, or digit strings "
                            "said one word per digit (e.g. --text digits --min_words 3 --max_words 8)")
    synth.add_argument("--tools", default=None,
                       help="run the synthesisers from this folder made by synthkit (default: the "
                            "installed ones)")
    synth.add_argument("--workers", type=int, default=0,
                       help="synthesiser processes run at once (0: one per CPU core)")
    synth.add_argument("--plan_only", action="store_true",
                       help="write meta.json, utterances.tsv and the transcripts but no audio (e.g. for "
                            "lmtext --corpus where the audio is made elsewhere); run again without it "
                            "to speak the audio into the same folder")
    synth.add_argument("--no_progress", action="store_true", help="hide the progress bar")

    synthkit = commands.add_parser(
        "synthkit", help="bundle espeak-ng, flite, festival and WordNet into a folder that runs without "
                         "installation",
        description="Download the Debian packages of the synthesisers and of WordNet (apt-get download), "
                    "unpack them into --out with the shared libraries they need beyond glibc and "
                    "libstdc++, and check that each engine speaks from the folder alone; --archive also "
                    "writes it as "
                    "one .tar.xz to carry. On the other machine, --unpack restores and checks it, and "
                    "synth --tools <folder> uses it.")
    synthkit.add_argument("--out", required=True, help="new folder for the kit")
    synthkit.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES,
                          help="engines to bundle")
    synthkit.add_argument("--festival_voices", nargs="+", default=list(DEFAULT_FESTIVAL_VOICE_PACKAGES),
                          help="Debian packages of the festival voices to bundle, two by default so that "
                               "one is held out and one trained on (festvox-us-slt-hts: "
                               "1.7 MB; festvox-kallpc16k: 6 MB; festvox-kdlpc16k: 5.5 MB)")
    synthkit.add_argument("--archive", default=None, help="also write the kit as this .tar.xz (new file)")
    synthkit.add_argument("--unpack", default=None, metavar="ARCHIVE",
                          help="instead of building: restore the kit in this .tar.xz into --out and check it")

    pack = commands.add_parser(
        "pack", help="pack a LibriSpeech-layout corpus into one tar of Opus audio (about 20x smaller)",
        description="Encode every FLAC of a corpus as Opus (lossy, about 10 kbit/s at compression "
                    "level 1) into one tar with its transcripts and meta.json, to carry a corpus "
                    "where its FLAC files would not fit; unpack restores the layout.")
    pack.add_argument("--corpus", required=True, help="corpus folder (e.g. made by synth)")
    pack.add_argument("--out", required=True, help="tar file to write (must not exist)")
    pack.add_argument("--compression_level", type=float, default=1.0,
                      help="Opus compression level in [0, 1] as libsndfile takes it (1: smallest)")
    pack.add_argument("--workers", type=int, default=0, help="encoder processes (0: one per CPU core)")
    pack.add_argument("--no_progress", action="store_true", help="hide the progress bar")

    unpack = commands.add_parser(
        "unpack", help="restore a packed corpus as 16-bit FLAC in the LibriSpeech layout",
        description="Decode a tar written by pack into a new folder; its meta.json records the "
                    "lossy round trip under 'transport'.")
    unpack.add_argument("--pack", required=True, help="tar file written by pack")
    unpack.add_argument("--out", required=True, help="new (or empty) corpus folder")
    unpack.add_argument("--workers", type=int, default=0, help="decoder processes (0: one per CPU core)")
    unpack.add_argument("--no_progress", action="store_true", help="hide the progress bar")

    lmtext = commands.add_parser(
        "lmtext", help="write English text from Debian packages as LM training text (binidx, World tokens)",
        description="Write <out>/train.{bin,idx}: the paragraphs, definitions and quotations of "
                    "--sources, normalised like the recogniser's targets (lowercase words, no "
                    "punctuation), deduplicated, one document each ending in token 0; documents equal "
                    "to or containing a transcript of --exclude_splits of --corpus are left out, and "
                    "those of --val_splits become <out>/val.{bin,idx}. Documents and tokens per source "
                    "are printed and written to <out>/lmtext-meta.json. Sources (Debian package): "
                    + ", ".join(f"{name} ({s.package})" for name, s in SOURCES.items())
                    + "; install them with setup.sh (as root) or apt-get.")
    lmtext.add_argument("--corpus", required=True, help="speech corpus whose test text must stay unseen")
    lmtext.add_argument("--out", required=True,
                        help="output folder for train/val binidx files and lmtext-meta.json")
    lmtext.add_argument("--sources", nargs="+", default=list(SOURCES), choices=list(SOURCES),
                        metavar="SOURCE", help="text sources to read, in this order (default: all: "
                                               f"{' '.join(SOURCES)})")
    lmtext.add_argument("--source_dir", action="append", default=[], metavar="SOURCE=FOLDER",
                        help="read SOURCE from FOLDER (the package's files in the same format) instead "
                             "of where its Debian package installs them; repeatable")
    lmtext.add_argument("--exclude_splits", nargs="+", default=["dev", "test-clean", "test-other"],
                        help="splits of --corpus whose transcripts are left out of the LM text")
    lmtext.add_argument("--val_splits", nargs="*", default=["dev"],
                        help="splits of --corpus whose transcripts become the LM validation text")
    lmtext.add_argument("--copy_fraction", type=float, default=0.0,
                        help="share of documents one of whose sentences is also written as "
                             "'sentence # sentence', the recogniser's layout, so that a small LM learns "
                             "to repeat what it read (0: none)")
    lmtext.add_argument("--separator", default="#",
                        help="separator of the copy documents (AsrConfig.separator)")
    lmtext.add_argument("--seed", type=int, default=0, help="seed for the choice of copy documents")

    digitlm = commands.add_parser(
        "digitlm", help="write digit strings (with copy documents) as LM training text (binidx, "
                        "World tokens)",
        description="Write <out>/train.{bin,idx}: --documents digit strings said one word per digit "
                    "(lowercase, one document each ending in token 0), none of them a transcript of "
                    "--exclude_splits of --corpus, each followed with probability --copy_fraction by "
                    "'string # string'; the transcripts of --val_splits become <out>/val.{bin,idx}; "
                    "the counts go to <out>/digits-lm-meta.json. The LM text of a corpus made with "
                    "synth --text digits.")
    digitlm.add_argument("--corpus", required=True, help="digits corpus whose test strings must stay unseen")
    digitlm.add_argument("--out", required=True, help="output folder for the binidx files and the meta file")
    digitlm.add_argument("--documents", type=int, default=50000, help="digit-string documents")
    digitlm.add_argument("--min_digits", type=int, default=3, help="fewest digits per string")
    digitlm.add_argument("--max_digits", type=int, default=8, help="most digits per string")
    digitlm.add_argument("--exclude_splits", nargs="+", default=["dev", "test-clean", "test-other"],
                         help="splits of --corpus whose transcripts are left out of the LM text")
    digitlm.add_argument("--val_splits", nargs="*", default=["dev"],
                         help="splits of --corpus whose transcripts become the LM validation text")
    digitlm.add_argument("--copy_fraction", type=float, default=0.5,
                         help="probability that a string is followed by 'string # string'")
    digitlm.add_argument("--separator", default="#",
                         help="separator of the copy documents (AsrConfig.separator)")
    digitlm.add_argument("--seed", type=int, default=0, help="seed of the strings and of the copies")

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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(args)
    except (ValueError, OSError) as err:
        # Bad input and file problems (a missing tool, an existing or malformed file) are the
        # user's to fix: a one-line message naming the file or flag, not a traceback.
        print(f"dataset2.py: error: {err}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace) -> None:
    if args.command == "synth":
        if args.hours and args.train is not None:
            raise ValueError("give the training split as --train or as --hours, not both")
        train = 0 if args.hours else SynthConfig.train if args.train is None else args.train
        heldout = args.heldout_voices
        if heldout is None:
            heldout = () if args.voices == [ALL_VOICES] else DEFAULT_HELDOUT_VOICES
        config = SynthConfig(train=train, dev=args.dev, test_clean=args.test_clean,
                             test_other=args.test_other, seed=args.seed, voices=tuple(args.voices),
                             heldout_voices=tuple(heldout), speeds=tuple(args.speeds),
                             min_words=args.min_words, max_words=args.max_words, hours=args.hours,
                             pitches=tuple(args.pitches),
                             snr_db=None if args.snr_db is None else tuple(args.snr_db),
                             noise_fraction=args.noise_fraction, text=args.text)
        synthesize_corpus(args.out, config, workers=args.workers or None, progress=not args.no_progress,
                          plan_only=args.plan_only,
                          tools=args.tools)
    elif args.command == "synthkit":
        log = logging.getLogger("dataset2")
        if args.unpack:
            log.info("kit unpacked in %s; seconds spoken per engine: %s", args.out,
                     unpack_kit(args.unpack, args.out))
            return
        kit = build_kit(args.out, tuple(args.engines), tuple(args.festival_voices))
        log.info("kit checked, seconds spoken per engine from %s alone: %s", args.out, check_kit(args.out))
        if args.archive:
            size = pack_kit(args.out, args.archive)
            log.info("wrote %s: %.1f MiB (the folder: %.1f MiB)", args.archive, size / 2 ** 20,
                     kit["size_bytes"] / 2 ** 20)
    elif args.command == "pack":
        pack_corpus(args.corpus, args.out, args.compression_level, workers=args.workers or None,
                    progress=not args.no_progress)
    elif args.command == "unpack":
        unpack_corpus(args.pack, args.out, workers=args.workers or None, progress=not args.no_progress)
    elif args.command == "lmtext":
        folders = {}
        for item in args.source_dir:
            name, equals, folder = item.partition("=")
            if not equals or not folder:
                raise ValueError(f"--source_dir {item!r}: expected SOURCE=FOLDER")
            folders[name] = folder
        meta = write_lm_text(args.out, args.sources,
                             exclude=corpus_transcripts(args.corpus, args.exclude_splits),
                             val_texts=corpus_transcripts(args.corpus, args.val_splits)
                             if args.val_splits else (), folders=folders,
                             copy_fraction=args.copy_fraction, separator=args.separator, seed=args.seed)
        for name, counts in (*meta["sources"].items(), ("total", meta["total"])):
            print(f"{name:>9}: {counts['documents']:>8} documents {counts['tokens']:>10} tokens, "
                  f"{counts['copy_documents']:>7} copies {counts['copy_tokens']:>9} tokens, "
                  f"{counts['duplicates']} duplicates, "
                  f"{counts['excluded_exact'] + counts['excluded_containing']} excluded")
        print(f"lmtext: {meta['train_tokens']} train tokens in {args.out}/train (lmtext-meta.json beside it)")
    elif args.command == "digitlm":
        meta = write_digit_lm_text(args.out, args.documents,
                                   exclude=corpus_transcripts(args.corpus, args.exclude_splits),
                                   val_texts=corpus_transcripts(args.corpus, args.val_splits)
                                   if args.val_splits else (), min_digits=args.min_digits,
                                   max_digits=args.max_digits, copy_fraction=args.copy_fraction,
                                   separator=args.separator, seed=args.seed)
        print(f"digitlm: {meta['documents']} strings and {meta['copy_documents']} copies, "
              f"{meta['train_tokens']} train tokens in {args.out}/train ({meta['excluded']} drawn strings "
              f"were test strings and left out)")
    else:
        utterances = load_corpus(args.source, args.split, text_column=args.text_column,
                                 skip_bad_audio=args.skip_bad_audio, min_duration=args.min_duration,
                                 max_duration=args.max_duration)
        path = write_manifest(utterances, args.out)
        hours = sum(u.duration for u in utterances) / 3600
        logging.getLogger("dataset2").info("wrote %s: %d utterances, %.2f hours", path, len(utterances),
                                           hours)


if __name__ == "__main__":
    sys.exit(main())
