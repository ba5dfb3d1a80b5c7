#!/bin/sh
# RWKV-ASR: speech recognition by state tuning (the SLAM-ASR recipe). A frozen speech encoder
# feeds a projector into a frozen RWKV-6 World model; only each layer's initial WKV state, the
# projector and (conv=1) the Con-RWKV convolutions are trained. Then corpus WER and transcripts.
#
# Hardware and time:
# - embedded default (load_model empty): a SMOKE configuration on CPU, about 1 minute on 2 cores
#   (58 s and 61 s from nothing, 2026-12-01; 4 to 6 minutes while other jobs share the cores). It makes
#   a small synthetic corpus (espeak-ng / flite; a complete one in data/asr-smoke is reused, so it
#   can be carried to a machine without them) and tiny random models, then runs
#   train -> eval -> predict. The models know no English: the WER only shows the pipeline works.
# - real run: set load_model (an official RWKV-6 World .pth), encoder (a HuggingFace folder,
#   e.g. hubert-large-ls960-ft) and the LibriSpeech folders; one or more GPUs.
#
# Usage:  sh demo/demo-state-tuning.sh [extra train.py flags, e.g. --dry_run]
#         OP=eval sh demo/demo-state-tuning.sh      (OP, like every variable, can come from the
#                                                    environment or be edited below)
# Output: $proj_dir/asr-step*.pth (trained tensors only) + .json, checkpoints/ (resume),
#         eval-asr-step*-beam*-tps*/ (one new folder per evaluation, never overwritten:
#         hypotheses, references, WER under two normalisers, docs/wer.md), logs/, tb/.
set -eu

OP=${OP:-all}                   # train | eval | predict | merge | all (train, eval, predict)

# ---- the frozen LLM: official RWKV-6 World .pth (empty: smoke run with a tiny random one) ----
load_model=${load_model:-}
# n_layer / n_embd are checked against the file. Known sizes:
#   RWKV-6 World 1.6B: 24 x 2048   3B: 32 x 2560   7B: 32 x 4096   14B: 61 x 4096
#   RWKV-5 World 0.4B (x052): 24 x 1024
n_layer=${n_layer:-}
n_embd=${n_embd:-}
conv=${conv:-0}                 # 1: add Con-RWKV causal convolutions (trained, identity at start)
kernel_size=${kernel_size:-3}

# ---- the frozen speech encoder and the data ----
encoder=${encoder:-}            # local HuggingFace folder (HuBERT / wav2vec 2.0 / WavLM)
train_data=${train_data:-}      # LibriSpeech split folder, save_to_disk folder or JSONL
val_data=${val_data:-}
eval_data=${eval_data:-}        # comma-separated, e.g. .../test-clean,.../test-other or
                                # data/LibriSpeech:test-clean,data/LibriSpeech:test-other
predict_audio=${predict_audio:-}  # files or folders to transcribe (OP=predict)

# ---- training ----
micro_bsz=${micro_bsz:-8}
epoch_count=${epoch_count:-2}
epoch_steps=${epoch_steps:-0}   # 0: computed from the data (utterances / micro_bsz / devices)
# Learning rates: the defaults won a small measured comparison (docs/results.md).
lr_state=${lr_state:-1.0}       # initial-state learning rate (decays to lr_state_final)
lr_state_final=${lr_state_final:-0.01}
lr_adapter=${lr_adapter:-1e-4}  # projector / conv learning rate
lr_adapter_final=${lr_adapter_final:-1e-5}
beam=${beam:-4}
device=${device:-auto}          # number of GPUs (auto: all, or one CPU process)
precision=${precision:-auto}    # auto: bf16-mixed on GPU, 32-true on CPU
grad_cp=${grad_cp:-0}           # 1: gradient checkpointing
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  strategy=${strategy:-deepspeed_stage_1}
else
  strategy=${strategy:-auto}
fi
# One run per folder: a rerun resumes it exactly; other training settings are refused (README,
# "Stopping, resuming"), so give a new experiment a new proj_dir.
proj_dir=${proj_dir:-output/asr}

if [ -z "$load_model" ]; then
  echo "demo-state-tuning: no load_model given: SMOKE configuration (tiny random models, synthetic speech)" >&2
  smoke=data/asr-smoke
  case " $* " in
    *" --dry_run "*) ;;
    *) python dataset2.py synth --out "$smoke/corpus" --train 200 --dev 20 --test_clean 20 \
         --test_other 20 --max_words 8 --no_progress
       python -m conrwkv.asr.tiny_models --out "$smoke/models" >/dev/null ;;
  esac
  load_model=$smoke/models/rwkv-tiny.pth
  encoder=$smoke/models/encoder
  train_data=$smoke/corpus/train
  val_data=$smoke/corpus/dev
  eval_data=$smoke/corpus/test-clean,$smoke/corpus/test-other
  predict_audio=$smoke/corpus/test-other
  micro_bsz=8
  epoch_count=8
  beam=2
  proj_dir=output/asr-smoke
fi

set -- --task asr --load_model "$load_model" --encoder "$encoder" \
  --data_file "$train_data" --val_file "$val_data" --eval_data "$eval_data" --audio "$predict_audio" \
  --micro_bsz "$micro_bsz" --epochs "$epoch_count" --epoch_steps "$epoch_steps" \
  --lr_state_init "$lr_state" --lr_state_final "$lr_state_final" \
  --lr_init "$lr_adapter" --lr_final "$lr_adapter_final" --warmup_steps 10 --beam "$beam" \
  --devices "$device" --precision "$precision" --strategy "$strategy" --proj_dir "$proj_dir" \
  ${n_layer:+--n_layer "$n_layer"} ${n_embd:+--n_embd "$n_embd"} \
  $( [ "$conv" = 1 ] && echo "--conv_kernel $kernel_size" ) \
  $( [ "$grad_cp" = 1 ] && echo "--grad_cp" ) "$@"

if [ "$OP" = all ]; then
  for op in train eval predict; do python train.py --op "$op" "$@"; done
else
  python train.py --op "$OP" "$@"
fi
if [ -n "${smoke:-}" ]; then
  echo "demo-state-tuning: that was the SMOKE configuration (tiny random models that know no" \
       "English): its WER only shows that train, eval and predict run; set load_model and encoder" \
       "for a real run" >&2
fi
