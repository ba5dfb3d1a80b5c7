#!/bin/sh
# RWKV-ICL: train Con-RWKV from scratch on binary Markov chains (each chain with its own
# transition table) and compare its loss with the Bayes-optimal in-context estimator.
#
# Hardware: the default below runs on a CPU (2 cores) in about 3 minutes, making its data
# first if missing (a few seconds), and ends within ~0.01 nats of Bayes-optimal for ORDER=1.
# For the order x kernel sweep on a GPU see demo/demo-icl-sweep.sh.
#
# Usage:  sh demo/demo-training-run.sh [extra train.py flags, e.g. --dry_run or --max_steps 50]
#         N_LAYER=4 CONV_KERNEL=3 sh demo/demo-training-run.sh   (every variable below can be
#                                                  edited here or set in the environment)
# --dry_run prints what train.py will use (JSON) and makes no data.
# Output: $PROJ_DIR/rwkv-step*.pth (official layout), *-icl.json / *-icl.png (loss by
#         position against Bayes-optimal, oracle and lower-order estimators), logs/, tb/.
# The upper-case names are RWKV-LM's (demo-training-run.sh) where one applies here.
set -eu

# ---- data: k-th order binary Markov chains (datanew.py) ----
ORDER=${ORDER:-1}               # Markov order k
BETA=${BETA:-1}                 # Dirichlet(beta) prior of each transition probability
SEQ_LEN=${SEQ_LEN:-513}         # symbols per chain (512 predictions, docs/reference.md, "Expected losses")
N_TRAIN=${N_TRAIN:-20000}       # training chains
N_VAL=${N_VAL:-500}             # validation chains (their Bayes-optimal loss is computed exactly)
DATA_SEED=${DATA_SEED:-0}
DATA=${DATA:-}                  # the data folder (empty: datanew.py's folder named by the values above)

# ---- model ----
MODEL_TYPE=${MODEL_TYPE:-x060}  # x060: RWKV-6; x070: RWKV-7; x052: RWKV-5.2
N_LAYER=${N_LAYER:-2}
N_EMBD=${N_EMBD:-64}
# Published World sizes (N_LAYER x N_EMBD), head size 64: RWKV-6 1.6B 24x2048, 3B 32x2560,
# 7B 32x4096, 14B 61x4096; RWKV-7 0.1B 12x768, 0.4B 24x1024, 1.5B 24x2048, 2.9B 32x2560.
HEAD_SIZE=${HEAD_SIZE:-16}      # WKV head size (official models use 64)
CONV_KERNEL=${CONV_KERNEL:-2}   # Con-RWKV causal conv kernel (0 = off); the claim under test: >= ORDER+1
TOKEN_SHIFT=${TOKEN_SHIFT:-1}   # 0: no token shift (time and channel mix see the token itself): the ablation

# ---- training ----
CTX_LEN=${CTX_LEN:-512}         # tokens per sample (chains are sampled whole, one per sample)
M_BSZ=${M_BSZ:-${MICRO_BSZ:-16}}  # chains per device per step (MICRO_BSZ: this script's former name)
STEPS=${STEPS:-500}             # optimizer steps (RWKV-LM counts epochs; a run here is short)
# Gradient accumulation (RWKV-LM's scripts have no variable for it): micro-batches per optimizer
# step, so a step sees M_BSZ x GRAD_ACCUM x devices x nodes chains; every step count stays in steps.
GRAD_ACCUM=${GRAD_ACCUM:-1}
WANDB=${WANDB:-}                # Weights & Biases project to log to as well (empty: off; pip install
                                # wandb; offline unless credentials or WANDB_MODE say otherwise)
LR_INIT=${LR_INIT:-3e-3}
LR_FINAL=${LR_FINAL:-3e-4}
WARMUP=${WARMUP:-20}            # warmup steps
GRAD_CP=${GRAD_CP:-0}           # 1: gradient checkpointing (slower, less memory)
VAL_EVERY=${VAL_EVERY:-100}     # validate every this many steps
VAL_BATCHES=${VAL_BATCHES:-8}   # batches per validation (0: the whole validation set)
N_NODE=${N_NODE:-1}             # machines
GPU_PER_NODE=${GPU_PER_NODE:-${DEVICES:-auto}}  # auto: all GPUs, or one CPU process (DEVICES: former name)
PRECISION=${PRECISION:-auto}    # auto: bf16-mixed on GPU, 32-true on CPU
STRATEGY=${STRATEGY:-auto}      # auto | ddp | deepspeed_stage_1 | deepspeed_stage_2 | deepspeed_stage_3
# One run per folder: a rerun resumes it exactly (raise STEPS to extend it); other settings are
# refused with the list of differences, so a changed experiment needs another PROJ_DIR.
case $TOKEN_SHIFT in
  1) token_shift=--token_shift; shift_name= ;;
  0) token_shift=--no-token_shift; shift_name=-noshift ;;
  *) echo "demo-training-run: TOKEN_SHIFT must be 0 or 1, got $TOKEN_SHIFT" >&2; exit 2 ;;
esac
# Another architecture gets its own folder (x060 keeps the name it always had).
case $MODEL_TYPE in
  x060) arch_name= ;;
  *) arch_name=-$MODEL_TYPE ;;
esac
PROJ_DIR=${PROJ_DIR:-output/icl-k${ORDER}-conv${CONV_KERNEL}-L${N_LAYER}${shift_name}${arch_name}}

case $GRAD_CP in
  0) grad_cp=--no-grad_cp ;;
  1) grad_cp=--grad_cp ;;
  *) echo "demo-training-run: GRAD_CP must be 0 or 1, got $GRAD_CP" >&2; exit 2 ;;
esac

# datanew.py with the data settings, then its other flags
markov_data() {
  python datanew.py --order "$ORDER" --beta "$BETA" --seq-len "$SEQ_LEN" --n-train "$N_TRAIN" \
    --n-val "$N_VAL" --seed "$DATA_SEED" "$@"
}
DATA=${DATA:-$(markov_data --print-folder)}
case " $* " in
  *" --dry_run "*) ;;                         # a dry run only prints the configuration
  *) markov_data --out "$DATA" ;;             # an existing complete folder is reused as it is
esac

python train.py --task lm --op train --data_file "$DATA" --vocab_size 2 --arch "$MODEL_TYPE" \
  --n_layer "$N_LAYER" --n_embd "$N_EMBD" --head_size "$HEAD_SIZE" --conv_kernel "$CONV_KERNEL" \
  --ctx_len "$CTX_LEN" --micro_bsz "$M_BSZ" --accumulate_grad_batches "$GRAD_ACCUM" \
  --max_steps "$STEPS" \
  --lr_init "$LR_INIT" --lr_final "$LR_FINAL" --warmup_steps "$WARMUP" "$grad_cp" "$token_shift" \
  --val_every "$VAL_EVERY" --val_batches "$VAL_BATCHES" --num_nodes "$N_NODE" \
  --devices "$GPU_PER_NODE" --precision "$PRECISION" --strategy "$STRATEGY" \
  ${WANDB:+--wandb "$WANDB"} --proj_dir "$PROJ_DIR" "$@"
