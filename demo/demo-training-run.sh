#!/bin/sh
# RWKV-ICL: train Con-RWKV from scratch on binary Markov chains (each chain with its own
# transition table) and compare its loss with the Bayes-optimal in-context estimator.
#
# Hardware: the default below runs on a CPU (2 cores) in about 3 minutes, making its data
# first if missing (a few seconds), and ends within ~0.01 nats of Bayes-optimal for ORDER=1.
# For the order x kernel sweep on a GPU see demo/demo-icl-sweep.sh.
#
# Usage:  sh demo/demo-training-run.sh [extra train.py flags, e.g. --dry_run or --max_steps 50]
# Output: $PROJ_DIR/rwkv-step*.pth (official layout), *-icl.json / *-icl.png (loss by
#         position against Bayes-optimal, oracle and lower-order estimators), logs/, tb/.
set -eu

# ---- data: k-th order binary Markov chains (datanew.py) ----
ORDER=1             # Markov order k
BETA=1              # Dirichlet(beta) prior of each transition probability
SEQ_LEN=513         # symbols per chain (512 predictions, as in docs/reference.md, "Expected losses")
N_TRAIN=20000       # training chains
N_VAL=500           # validation chains (their Bayes-optimal loss is computed exactly)
DATA_SEED=0

# ---- model ----
N_LAYER=2
N_EMBD=64
HEAD_SIZE=16        # WKV head size (official models use 64)
CONV_KERNEL=2       # Con-RWKV causal conv kernel (0 = off); the claim under test: >= ORDER+1

# ---- training ----
CTX_LEN=512         # tokens per sample (chains are sampled whole, one per sample)
MICRO_BSZ=16        # chains per device per step
STEPS=500
LR_INIT=3e-3
LR_FINAL=3e-4
WARMUP=20
DEVICES=auto        # GPUs per node (auto: all, or one CPU process)
PRECISION=auto      # auto: bf16-mixed on GPU, 32-true on CPU
STRATEGY=auto       # auto | ddp | deepspeed_stage_1 | deepspeed_stage_2 | deepspeed_stage_3
# One run per folder: a rerun resumes it exactly (raise STEPS to extend it); other settings are
# refused with the list of differences, so a changed experiment needs another PROJ_DIR.
PROJ_DIR=output/icl-k${ORDER}-conv${CONV_KERNEL}-L${N_LAYER}

DATA=$(python datanew.py --order "$ORDER" --beta "$BETA" --seq-len "$SEQ_LEN" \
       --n-train "$N_TRAIN" --n-val "$N_VAL" --seed "$DATA_SEED" --print-folder)
case " $* " in
  *" --dry_run "*) ;;                         # a dry run only prints the configuration
  *) python datanew.py --order "$ORDER" --beta "$BETA" --seq-len "$SEQ_LEN" \
       --n-train "$N_TRAIN" --n-val "$N_VAL" --seed "$DATA_SEED" --out "$DATA" ;;
esac

python train.py --task lm --op train --data_file "$DATA" --vocab_size 2 \
  --n_layer "$N_LAYER" --n_embd "$N_EMBD" --head_size "$HEAD_SIZE" --conv_kernel "$CONV_KERNEL" \
  --ctx_len "$CTX_LEN" --micro_bsz "$MICRO_BSZ" --max_steps "$STEPS" \
  --lr_init "$LR_INIT" --lr_final "$LR_FINAL" --warmup_steps "$WARMUP" \
  --devices "$DEVICES" --precision "$PRECISION" --strategy "$STRATEGY" \
  --proj_dir "$PROJ_DIR" --val_every 100 --val_batches 8 "$@"
