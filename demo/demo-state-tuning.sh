#!/bin/sh
# RWKV-ASR: speech recognition by state tuning (the SLAM-ASR recipe). A frozen speech encoder
# feeds a projector into a frozen RWKV-6 World model; only each layer's initial WKV state, the
# projector and (conv=1) the Con-RWKV convolutions are trained. Then corpus WER and transcripts.
#
# Hardware and time:
# - embedded default (load_model empty): a SMOKE configuration on CPU, about 1 minute on 2 cores
#   (58 s and 61 s from nothing, 2026-12-01; 84 s and 88 s with about one core busy elsewhere;
#   4 to 6 minutes while other jobs share the cores). It makes a small synthetic corpus
#   (espeak-ng / flite; a complete one in $smoke_dir is reused, so it can be carried to a
#   machine without them) and tiny random models, then runs train -> eval -> predict. The models know no English: the WER only shows the pipeline works.
# - real run: set load_model (an official RWKV-6 World .pth), encoder (a HuggingFace folder,
#   e.g. hubert-large-ls960-ft) and the LibriSpeech folders; one or more GPUs.
#
# Usage:  sh demo/demo-state-tuning.sh [extra train.py flags, e.g. --dry_run]
#         OP=eval sh demo/demo-state-tuning.sh      (OP, like every variable, can come from the
#                                                    environment or be edited below)
# Each op gets only the flags it reads (python train.py --task asr --op OP --help). The extra
# flags go to every train.py call, so they must be valid for each op that runs: --dry_run is
# (it prints what each op will use, as JSON, and the smoke configuration makes nothing), and so
# are --precision and --wkv_backend; a training flag such as --max_steps only with OP=train.
# Output: $proj_dir/asr-step*.pth (trained tensors only) + .json, checkpoints/ (resume),
#         eval-asr-step*-beam*-tps*/ (one new folder per evaluation, never overwritten:
#         hypotheses, references, WER under two normalisers, docs/wer.md), logs/, tb/.
set -eu

OP=${OP:-all}                   # train | eval | predict | merge | all (train, eval, predict)

# ---- the frozen LLM: official RWKV-6 or RWKV-7 World .pth (empty: smoke run with a tiny random one) ----
load_model=${load_model:-}
# n_layer / n_embd are checked against the file (empty: read off it). Known sizes:
#   RWKV-6 World 1.6B: 24 x 2048   3B: 32 x 2560   7B: 32 x 4096   14B: 61 x 4096
#   RWKV-7 World (x070) 0.1B: 12 x 768   0.4B: 24 x 1024   1.5B: 24 x 2048   2.9B: 32 x 2560
#   RWKV-5 World 0.4B (x052): 24 x 1024
n_layer=${n_layer:-}
n_embed=${n_embed:-}            # the seed README's spelling of n_embd, used when n_embd is empty
n_embd=${n_embd:-$n_embed}
conv=${conv:-0}                 # 1: add Con-RWKV causal convolutions (trained, identity at start)
kernel_size=${kernel_size:-5}   # their kernel when conv=1 (5: the seed's suggestion)

# ---- the frozen speech encoder and the data ----
encoder=${encoder:-}            # local HuggingFace folder (HuBERT / wav2vec 2.0 / WavLM)
train_data=${train_data:-}      # LibriSpeech split folder, save_to_disk folder or JSONL
val_data=${val_data:-}
eval_data=${eval_data:-}        # comma-separated, e.g. .../test-clean,.../test-other or
                                # data/LibriSpeech:test-clean,data/LibriSpeech:test-other
                                # (empty: eval scores val_data)
predict_audio=${predict_audio:-}  # files or folders to transcribe (OP=predict; OP=all skips
                                  # predict when it is empty)

# ---- training ----
micro_bsz=${micro_bsz:-8}       # utterances per device per micro-batch (also per decoding batch)
# Gradient accumulation: micro-batches per optimizer step (a step sees micro_bsz x this x devices
# utterances, the loss token-weighted over them all); epochs and steps count optimizer steps.
accumulate_grad_batches=${accumulate_grad_batches:-1}
epoch_count=${epoch_count:-2}
epoch_steps=${epoch_steps:-0}   # 0: computed from the data (utterances / micro_bsz / devices
                                # / accumulate_grad_batches, rounded up)
wandb=${wandb:-}                # Weights & Biases project to log training to as well (empty: off;
                                # pip install wandb; offline unless credentials or WANDB_MODE)
# Learning rates: the defaults won a small measured comparison (docs/results.md).
lr_state=${lr_state:-1.0}       # initial-state learning rate (decays to lr_state_final)
lr_state_final=${lr_state_final:-0.01}
lr_adapter=${lr_adapter:-1e-4}  # projector / conv learning rate
lr_adapter_final=${lr_adapter_final:-1e-5}
warmup_steps=${warmup_steps:-10}
grad_cp=${grad_cp:-0}           # 1: gradient checkpointing (slower, less memory)
compile=${compile:-0}           # 1: torch.compile the LLM (train: the step; eval, predict: prefill
                                # and token step)
compile_mode=${compile_mode:-default}  # train with compile=1: reduce-overhead replays the compiled
                                # step from CUDA graphs (a GPU only), max-autotune tunes kernels
length_bucket=${length_bucket:-0}  # train: pad the LLM input to a multiple of this (0: off), so a
                                # compiled LLM sees few lengths (64 is a fair choice with compile=1)
device=${device:-auto}          # GPUs to train on (auto: all, or one CPU process); eval, predict
                                # and merge run on one device (the first GPU, or the CPU)
precision=${precision:-auto}    # auto: bf16-mixed on GPU, 32-true on CPU
# auto: Lightning's choice, one device or DDP over several GPUs. On GPUs with deepspeed
# installed (pip install -e .[gpu]) deepspeed_stage_1 (... _2, _3) can be set instead; on one
# GPU stages 1 and 2 use less memory than auto at its speed, stage 3 is 3x slower
# (docs/benchmarks.md).
strategy=${strategy:-auto}
# One run per folder: a rerun resumes it exactly; other training settings are refused (README,
# "Stopping, resuming"), so give a new experiment a new proj_dir.
proj_dir=${proj_dir:-output/asr}

# ---- decoding (eval, predict) and merge ----
beam=${beam:-4}
merge_out=${merge_out:-}        # OP=merge: the .pth to write (empty: beside the trained weights)

# ---- the smoke configuration (load_model empty) ----
smoke_dir=${smoke_dir:-data/asr-smoke}  # its synthetic corpus and tiny models (made once, reused)
smoke_epochs=${smoke_epochs:-8}         # 200 utterances need more passes than a real corpus
smoke_beam=${smoke_beam:-2}             # quicker than beam; the random models gain nothing from it
smoke_arch=${smoke_arch:-x060}          # the tiny LLM: x060 (RWKV-6) or x070 (RWKV-7)

case $OP in
  train|eval|predict|merge) ops=$OP ;;
  all) ops="train eval predict" ;;
  *) echo "demo-state-tuning: OP must be train, eval, predict, merge or all, got $OP" >&2; exit 2 ;;
esac
case $conv in
  0) conv_kernel=0 ;;
  1) conv_kernel=$kernel_size ;;
  *) echo "demo-state-tuning: conv must be 0 or 1, got $conv" >&2; exit 2 ;;
esac
case $grad_cp in
  0) grad_cp_flag=--no-grad_cp ;;
  1) grad_cp_flag=--grad_cp ;;
  *) echo "demo-state-tuning: grad_cp must be 0 or 1, got $grad_cp" >&2; exit 2 ;;
esac
case $compile in
  0) compile_flag=--no-compile ;;
  1) compile_flag=--compile ;;
  *) echo "demo-state-tuning: compile must be 0 or 1, got $compile" >&2; exit 2 ;;
esac

smoke=
if [ -z "$load_model" ]; then
  smoke=1
  echo "demo-state-tuning: no load_model given: SMOKE configuration (tiny random models, synthetic speech)" >&2
  case " $* " in
    *" --dry_run "*) ;;                     # a dry run makes nothing
    *) python dataset2.py synth --out "$smoke_dir/corpus" --train 200 --dev 20 --test_clean 20 \
         --test_other 20 --max_words 8 --no_progress
       python -m conrwkv.asr.tiny_models --out "$smoke_dir/models" --arch "$smoke_arch" >/dev/null ;;
  esac
  case $smoke_arch in
    x060) load_model=$smoke_dir/models/rwkv-tiny.pth; smoke_name= ;;
    x070) load_model=$smoke_dir/models/rwkv7-tiny.pth; smoke_name=-x070 ;;
    *) echo "demo-state-tuning: smoke_arch must be x060 or x070, got $smoke_arch" >&2; exit 2 ;;
  esac
  encoder=$smoke_dir/models/encoder
  train_data=$smoke_dir/corpus/train
  val_data=$smoke_dir/corpus/dev
  eval_data=$smoke_dir/corpus/test-clean,$smoke_dir/corpus/test-other
  predict_audio=$smoke_dir/corpus/test-other
  epoch_count=$smoke_epochs
  beam=$smoke_beam
  proj_dir=$proj_dir-smoke$smoke_name   # never mixed into a real run's folder, nor x060 with x070
fi
if [ "$OP" = all ] && [ -z "$predict_audio" ]; then
  ops="train eval"
  echo "demo-state-tuning: predict_audio is empty: OP=all skips predict" >&2
fi

# One function per op, each passing the flags that op reads, then the extra flags ("$@").
# eval, predict and merge rebuild the model from the record training wrote beside the weights
# in proj_dir (the LLM, the encoder, the conv, the projector), so they take no model settings;
# should the LLM or the encoder have moved, name them again with --load_model / --encoder.
op_train() {
  python train.py --task asr --op train --load_model "$load_model" --encoder "$encoder" \
    --data_file "$train_data" --val_file "$val_data" ${n_layer:+--n_layer "$n_layer"} \
    ${n_embd:+--n_embd "$n_embd"} --conv_kernel "$conv_kernel" "$grad_cp_flag" \
    --micro_bsz "$micro_bsz" --accumulate_grad_batches "$accumulate_grad_batches" \
    --epochs "$epoch_count" --epoch_steps "$epoch_steps" ${wandb:+--wandb "$wandb"} \
    --lr_state_init "$lr_state" --lr_state_final "$lr_state_final" \
    --lr_init "$lr_adapter" --lr_final "$lr_adapter_final" --warmup_steps "$warmup_steps" \
    --devices "$device" --precision "$precision" --strategy "$strategy" --proj_dir "$proj_dir" \
    "$compile_flag" --compile_mode "$compile_mode" --length_bucket "$length_bucket" "$@"
}
op_eval() {
  python train.py --task asr --op eval --eval_data "$eval_data" --val_file "$val_data" \
    --beam "$beam" --micro_bsz "$micro_bsz" --precision "$precision" --proj_dir "$proj_dir" \
    "$compile_flag" "$@"
}
op_predict() {
  python train.py --task asr --op predict --audio "$predict_audio" --beam "$beam" \
    --micro_bsz "$micro_bsz" --precision "$precision" --proj_dir "$proj_dir" "$compile_flag" "$@"
}
op_merge() {
  python train.py --task asr --op merge --precision "$precision" --proj_dir "$proj_dir" \
    ${merge_out:+--merge_out "$merge_out"} "$@"
}

for op in $ops; do "op_$op" "$@"; done
if [ -n "$smoke" ]; then
  echo "demo-state-tuning: that was the SMOKE configuration (tiny random models that know no" \
       "English): its WER only shows that train, eval and predict run; set load_model and encoder" \
       "for a real run" >&2
fi
