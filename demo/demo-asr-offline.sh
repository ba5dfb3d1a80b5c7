#!/bin/sh
# RWKV-ASR offline: the SLAM-ASR recipe at small scale with nothing downloaded, to measure whether
# state tuning through a frozen encoder and a frozen RWKV-6 learns to transcribe, with an ablation.
#
#   prepare  (CPU with the Debian packages of setup.sh installed: about 11 minutes on 2 cores)
#            synthetic corpus (dataset2.py synth), its Opus pack for carrying (dataset2.py pack),
#            and 7.3M tokens of English LM text from WordNet, GCIDE, the Devil's Dictionary, the
#            Jargon File, FOLDOC and fortunes minus the dev/test sentences (dataset2.py lmtext)
#   encoder  (GPU, 450 s on an H100 with ENC_TIME_LIMIT=450) a small HuBERT trained with CTC on the training split (HubertForCTC,
#            save_pretrained): the stand-in for hubert-large-ls960-ft; greedy CTC WER per split
#   lm       (GPU, 100 s for 6x384) one RWKV-6 per size of LM_SIZES pretrained on the LM text
#            (train.py --task lm --compile), each in $RUN_DIR/lm/<size>/ (<size>-x070 with
#            LM_ARCH=x070), saved as an official .pth
#   slam     (GPU, 6 min with PARALLEL_RUNS=1) the encoder and the SLAM_LM language model, both
#            frozen; trained: projector only / projector + state / projector + state +
#            conv; corpus WER on test-clean (seen voices) and test-other (held-out voices), and
#            one table of all three (ablation.md, ablation.json)
#   grid     (GPU; not in the default STAGES) every LM of LM_SIZES x GRID_ARMS x GRID_SEEDS
#            (python -m conrwkv.asr.grid): one run folder per cell in $RUN_DIR/grid, resumable
#            across calls of GRID_BUDGET seconds; each call that scores cells writes a new
#            $RUN_DIR/grid/summary*/ with grid.md, grid.json and grid.png (WER against LM size,
#            one line per arm). Arms: projector, state, state-conv, lora (peft LoRA on the LLM),
#            full (the whole LLM trained), oracle (the transcript as the prefix: no speech)
#
# Usage:  STAGES="prepare" sh demo/demo-asr-offline.sh          (stages run in the order given)
#         STAGES="encoder lm slam" sh demo/demo-asr-offline.sh
#         sh demo/demo-asr-offline.sh --dry_run
# Every variable below can be edited here or set in the environment. The encoder and lm stages
# are independent and can run at the same time on one GPU. A stage whose result exists is
# skipped (delete its folder to redo it); a language model stopped part way resumes from its
# newest checkpoint (LM_SAVE_EVERY) when the stage runs again. Measured results, with what
# limits them at this scale: docs/results.md.
# --dry_run (the only argument): every train.py call gets --dry_run and prints what it will use
# (JSON); the commands that would make data, the encoder or the ablation table are printed
# instead of run; nothing is written.
set -eu

STAGES=${STAGES:-prepare encoder lm slam}
DATA=${DATA:-data/asr-offline}
RUN_DIR=${RUN_DIR:-output/asr-offline}

# ---- corpus (prepare) ----
N_TRAIN=${N_TRAIN-8000}           # utterances, seen voices (empty: SYNTH_ARGS gives --hours)
N_DEV=${N_DEV:-300}
N_TEST_CLEAN=${N_TEST_CLEAN:-500} # seen voices, unseen sentences
N_TEST_OTHER=${N_TEST_OTHER:-500} # held-out voices, unseen sentences
SYNTH_ARGS=${SYNTH_ARGS:-}        # more dataset2.py synth flags, e.g. "--voices all --hours 10 --tools DIR"

# ---- encoder: HubertForCTC trained from random weights ----
ENC_STEPS=${ENC_STEPS:-6000}
ENC_BATCH=${ENC_BATCH:-32}
ENC_LR=${ENC_LR:-1.5e-3}
ENC_TIME_LIMIT=${ENC_TIME_LIMIT:-0}   # seconds: stop early and keep the model, lr decayed by then (0: run all steps)
ENC_ARGS=${ENC_ARGS:-}            # more ctc_encoder flags, e.g. "--hidden_size 384 --layers 8";
                                  # "--save_every 500 --pause_after 480": train in parts that resume
ENCODER=${ENCODER:-$RUN_DIR/encoder}   # the encoder folder: written by the encoder stage, read by slam and grid

# ---- language models: a ladder of sizes, <layers>x<embedding>, each trained in turn ----
# The published World models' sizes, for a ladder that mirrors them (LM_ARCH picks the family):
#   RWKV-6 World 1.6B: 24x2048   3B: 32x2560   7B: 32x4096   14B: 61x4096
#   RWKV-7 World (x070) 0.1B: 12x768   0.4B: 24x1024   1.5B: 24x2048   2.9B: 32x2560
LM_SIZES=${LM_SIZES:-6x384 12x768 24x1024}
SLAM_LM=${SLAM_LM:-${LM_SIZES%% *}}   # the size the slam stage builds on (default: the first)
LM_ARCH=${LM_ARCH:-x060}          # x060: RWKV-6; x070: RWKV-7 (its LMs go to lm/<size>-x070; for the
                                  # lora arm give x070's own --lora_targets: README, "Using the model")
LM_HEAD_SIZE=${LM_HEAD_SIZE:-64}  # the official models' WKV head size (divides every embedding)
LM_CTX=${LM_CTX:-128}
LM_BSZ=${LM_BSZ:-64}
LM_STEPS=${LM_STEPS:-600}      # 4.9M tokens seen of 7.3M (WordNet alone, 1.77M: 1200 steps overfitted, docs/results.md)
LM_LR=${LM_LR:-1e-3}           # one rate for every size (tuned on 6x384 only)
LM_LR_FINAL=${LM_LR_FINAL:-1e-4}
LM_WARMUP=${LM_WARMUP:-50}
LM_VAL_EVERY=${LM_VAL_EVERY:-100}
LM_VAL_BATCHES=${LM_VAL_BATCHES:-4}
LM_SAVE_EVERY=${LM_SAVE_EVERY:-200}   # steps between resumable checkpoints
LM_COMPILE=${LM_COMPILE:-1}           # 1: torch.compile the model (--compile); 0: eager (e.g. on a CPU)
LM_SOURCES=${LM_SOURCES:-wordnet gcide devil jargon foldoc fortunes}   # dataset2.py lmtext --sources
LM_COPY_FRACTION=${LM_COPY_FRACTION:-0}   # >0: also "sentence # sentence" documents (lm_text.py); 0.5 did worse on WordNet

# ---- SLAM state tuning ----
ASR_BSZ=${ASR_BSZ:-16}
ASR_EPOCHS=${ASR_EPOCHS:-6}
ASR_LR_STATE=${ASR_LR_STATE:-1.0}
ASR_LR_ADAPTER=${ASR_LR_ADAPTER:-1e-3}
ASR_LR_ADAPTER_FINAL=${ASR_LR_ADAPTER_FINAL:-1e-5}
ASR_WARMUP=${ASR_WARMUP:-50}
ASR_BEAM=${ASR_BEAM:-1}
CONV_KERNEL=${CONV_KERNEL:-3}

# ---- the grid (stage grid): LM size x arm x seed, with the SLAM settings above ----
GRID_ARMS=${GRID_ARMS:-projector,state,state-conv,lora,full,oracle}
GRID_SEEDS=${GRID_SEEDS:-0}       # comma-separated training seeds
GRID_BUDGET=${GRID_BUDGET:-0}     # seconds for one call (0: no limit); the next call goes on
GRID_SAVE_EVERY=${GRID_SAVE_EVERY:-100}   # steps between checkpoints: what a stopped call redoes
GRID_PARALLEL=${GRID_PARALLEL:-1}         # cells trained at the same time on the one GPU
GRID_CONV_KERNELS=${GRID_CONV_KERNELS:-$CONV_KERNEL}   # comma-separated: one state-conv cell per kernel
PARALLEL_RUNS=${PARALLEL_RUNS:-0}   # 1: train the three configurations at the same time
PRECISION=${PRECISION:-auto}

CORPUS=${CORPUS:-$DATA/corpus}
PACK=${PACK-$DATA/corpus.tar}         # the corpus as one Opus archive, to carry it elsewhere (empty: none)
LM_TEXT=${LM_TEXT:-$DATA/lm-text}

case "$*" in
  "") dry_run= ;;
  --dry_run) dry_run=--dry_run ;;
  *) echo "usage: sh demo/demo-asr-offline.sh [--dry_run] (settings: the variables at its top)" >&2
     exit 2 ;;
esac

# A command that writes files (data, the encoder, a folder): run it, or in a dry run print it.
run_or_print() {
  if [ -n "$dry_run" ]; then echo "demo-asr-offline: dry run: would run: $*"; else "$@"; fi
}

ensure_corpus() {
  if [ -f "$CORPUS/meta.json" ]; then return; fi
  if [ -z "$PACK" ] || [ ! -f "$PACK" ]; then
    if [ -n "$dry_run" ]; then
      echo "demo-asr-offline: dry run: no corpus in $CORPUS yet and no pack $PACK: the prepare stage makes them"
      return
    fi
    echo "demo-asr-offline: no corpus in $CORPUS and no pack $PACK: run STAGES=prepare first" >&2
    exit 1
  fi
  run_or_print python dataset2.py unpack --pack "$PACK" --out "$CORPUS" --no_progress
}

stage_prepare() {
  # shellcheck disable=SC2086 # SYNTH_ARGS is a list of flags
  run_or_print python dataset2.py synth --out "$CORPUS" ${N_TRAIN:+--train "$N_TRAIN"} --dev "$N_DEV" \
    --test_clean "$N_TEST_CLEAN" --test_other "$N_TEST_OTHER" --no_progress $SYNTH_ARGS
  [ -z "$PACK" ] || [ -f "$PACK" ] || run_or_print python dataset2.py pack --corpus "$CORPUS" \
    --out "$PACK" --no_progress
  # shellcheck disable=SC2086 # LM_SOURCES is a list of words
  [ -f "$LM_TEXT/train.idx" ] || run_or_print python dataset2.py lmtext --corpus "$CORPUS" \
    --out "$LM_TEXT" --sources $LM_SOURCES --copy_fraction "$LM_COPY_FRACTION"
}

stage_encoder() {
  if [ -f "$ENCODER/ctc_results.json" ]; then echo "encoder: $ENCODER exists, kept"; return; fi
  ensure_corpus
  # What a stopped run left (no ctc_results.json yet) is removed, unless it holds resumable
  # training states (--save_every or --pause_after in ENC_ARGS): then the run continues from them.
  if ! ls "$ENCODER"/training/step*.pt > /dev/null 2>&1; then run_or_print rm -rf "$ENCODER"; fi
  # shellcheck disable=SC2086 # ENC_ARGS is a list of flags
  run_or_print python -m conrwkv.asr.ctc_encoder --train_data "$CORPUS/train" \
    --eval_data "$CORPUS/dev,$CORPUS/test-clean,$CORPUS/test-other" --out "$ENCODER" \
    --steps "$ENC_STEPS" --batch_size "$ENC_BATCH" --lr "$ENC_LR" --time_limit "$ENC_TIME_LIMIT" \
    --no_progress $ENC_ARGS
}

# The weights a finished LM run of size $1 writes (its last step's file).
lm_folder() {
  if [ "$LM_ARCH" = x060 ]; then echo "$RUN_DIR/lm/$1"; else echo "$RUN_DIR/lm/$1-$LM_ARCH"; fi
}
lm_weights() {
  echo "$(lm_folder "$1")/rwkv-step$(printf %06d "$LM_STEPS").pth"
}

# size "<layers>x<embedding>" -> "<layers> <embedding>", or exit naming LM_SIZES / SLAM_LM
lm_shape() {
  case $1 in
    *[!0-9x]*|x*|*x|*x*x*|"") ;;
    *x*) echo "${1%x*} ${1#*x}"; return ;;
  esac
  echo "demo-asr-offline: LM size '$1' in LM_SIZES or SLAM_LM is not <layers>x<embedding> (e.g. 12x768)" >&2
  exit 2
}

# file, then a command: show the command's output as it comes and keep it in the file (only when
# the command succeeds), and fail when it fails. `command | tee file` would have tee's exit status,
# and sh (dash) has no pipefail, so the command's status travels through a temporary file.
tee_to() {
  file=$1; shift
  status_file=$(mktemp)
  { rc=0; "$@" || rc=$?; echo "$rc" > "$status_file"; } | tee "$file.partial"
  rc=$(cat "$status_file"); rm -f "$status_file"
  if [ "$rc" = 0 ]; then mv "$file.partial" "$file"; else rm -f "$file.partial"; fi
  return "$rc"
}

stage_lm() {
  for size in $LM_SIZES; do lm_shape "$size" > /dev/null; done   # every size checked before any run
  compile=; [ "$LM_COMPILE" = 0 ] || compile=--compile
  for size in $LM_SIZES; do
    shape=$(lm_shape "$size")
    if [ -f "$(lm_weights "$size")" ]; then echo "lm: $(lm_weights "$size") exists, kept"; continue; fi
    # --devices 1: every stage is sized for one GPU (PARALLEL_RUNS shares it between runs); a
    # folder holding a checkpoint of this run is resumed by train.py itself
    python train.py --task lm --op train --data_file "$LM_TEXT/train" --val_file "$LM_TEXT/val" \
      --n_layer "${shape% *}" --n_embd "${shape#* }" --head_size "$LM_HEAD_SIZE" --ctx_len "$LM_CTX" \
      --micro_bsz "$LM_BSZ" --max_steps "$LM_STEPS" --lr_init "$LM_LR" --lr_final "$LM_LR_FINAL" \
      --warmup_steps "$LM_WARMUP" --val_every "$LM_VAL_EVERY" --val_batches "$LM_VAL_BATCHES" \
      --save_every "$LM_SAVE_EVERY" ${compile} --precision "$PRECISION" --devices 1 \
      --arch "$LM_ARCH" --proj_dir "$(lm_folder "$size")" $dry_run
  done
}

# name, then the training flags of this configuration
slam_run() {
  name=$1; shift
  python train.py --task asr --op train --load_model "$(lm_weights "$SLAM_LM")" --encoder "$ENCODER" \
    --data_file "$CORPUS/train" --val_file "$CORPUS/dev" --micro_bsz "$ASR_BSZ" --epochs "$ASR_EPOCHS" \
    --lr_state_init "$ASR_LR_STATE" --lr_init "$ASR_LR_ADAPTER" --lr_final "$ASR_LR_ADAPTER_FINAL" \
    --warmup_steps "$ASR_WARMUP" --precision "$PRECISION" --devices 1 \
    --proj_dir "$RUN_DIR/slam-$name" $dry_run "$@"
  # eval rebuilds the model (LLM, encoder, conv) from the record training wrote beside the weights
  python train.py --task asr --op eval --eval_data "$CORPUS/test-clean,$CORPUS/test-other" \
    --micro_bsz "$ASR_BSZ" --beam "$ASR_BEAM" --precision "$PRECISION" \
    --proj_dir "$RUN_DIR/slam-$name" $dry_run
}

stage_slam() {
  lm_shape "$SLAM_LM" > /dev/null
  ensure_corpus
  if [ -z "$dry_run" ] && { [ ! -f "$(lm_weights "$SLAM_LM")" ] || [ ! -f "$ENCODER/config.json" ]; }; then
    echo "demo-asr-offline: the slam stage needs the encoder and the lm stage's $SLAM_LM model first" >&2
    exit 1
  fi
  if [ "$PARALLEL_RUNS" = 1 ] && [ -z "$dry_run" ]; then   # (a dry run writes no logs)
    slam_run projector --no-train_state > "$RUN_DIR/slam-projector.log" 2>&1 & p1=$!
    slam_run state > "$RUN_DIR/slam-state.log" 2>&1 & p2=$!
    slam_run state-conv --conv_kernel "$CONV_KERNEL" > "$RUN_DIR/slam-state-conv.log" 2>&1 & p3=$!
    failed=0
    for p in $p1 $p2 $p3; do wait "$p" || failed=1; done
    if [ "$failed" = 1 ]; then
      echo "demo-asr-offline: a SLAM run failed; see $RUN_DIR/slam-*.log" >&2
      exit 1
    fi
  else
    slam_run projector --no-train_state
    slam_run state
    slam_run state-conv --conv_kernel "$CONV_KERNEL"
  fi
  if [ -n "$dry_run" ]; then
    echo "demo-asr-offline: dry run: would tabulate the three runs into $RUN_DIR/ablation.md and .json"
    return
  fi
  tee_to "$RUN_DIR/ablation.md" python -m conrwkv.asr.ablation \
    --run "projector only=$RUN_DIR/slam-projector" \
    --run "projector + state=$RUN_DIR/slam-state" \
    --run "projector + state + conv (k=$CONV_KERNEL)=$RUN_DIR/slam-state-conv" \
    --json "$RUN_DIR/ablation.json"
}

stage_grid() {
  ensure_corpus
  lms=
  for size in $LM_SIZES; do
    lm_shape "$size" > /dev/null
    if [ -z "$dry_run" ] && [ ! -f "$(lm_weights "$size")" ]; then
      echo "demo-asr-offline: the grid stage needs the lm stage's $size model first ($(lm_weights "$size"))" >&2
      exit 1
    fi
    lms="$lms --lm $size=$(lm_weights "$size")"
  done
  if [ -z "$dry_run" ] && [ ! -f "$ENCODER/config.json" ]; then
    echo "demo-asr-offline: the grid stage needs the encoder stage first" >&2
    exit 1
  fi
  # $lms holds "--lm SIZE=PATH" pairs: word splitting is wanted (sizes and paths have no spaces)
  # shellcheck disable=SC2086
  run_or_print python -m conrwkv.asr.grid $lms --encoder "$ENCODER" --corpus "$CORPUS" \
    --arms "$GRID_ARMS" --seeds "$GRID_SEEDS" --conv_kernels "$GRID_CONV_KERNELS" --out "$RUN_DIR/grid" \
    --budget_s "$GRID_BUDGET" --parallel "$GRID_PARALLEL" \
    --train_args "--micro_bsz $ASR_BSZ --epochs $ASR_EPOCHS --lr_state_init $ASR_LR_STATE --lr_init $ASR_LR_ADAPTER --lr_final $ASR_LR_ADAPTER_FINAL --warmup_steps $ASR_WARMUP --precision $PRECISION --devices 1 --save_every $GRID_SAVE_EVERY" \
    --eval_args "--micro_bsz $ASR_BSZ --beam $ASR_BEAM --precision $PRECISION"
}

run_or_print mkdir -p "$RUN_DIR"
for stage in $STAGES; do
  case $stage in
    prepare|encoder|lm|slam|grid) "stage_$stage" ;;
    *) echo "demo-asr-offline: unknown stage $stage (prepare, encoder, lm, slam, grid)" >&2; exit 1 ;;
  esac
done
