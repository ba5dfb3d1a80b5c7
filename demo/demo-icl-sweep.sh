#!/bin/sh
# RWKV-ICL sweep: Markov order k x Con-RWKV conv kernel x depth, each model trained from
# scratch, scored by its final gap to the Bayes-optimal in-context estimator.
# The claim under test: kernel >= k+1 reaches within 0.01 nats of Bayes-optimal, smaller
# kernels plateau near the lower-order estimator.
#
# Hardware: one GPU. Measured on an H200 (2026-12-02): the 144 default runs (48 cells x 3 seeds)
# took 12.6 minutes, the 12 runs of each shape trained as one batched computation (the sweep's
# ensemble engine), 4 such groups at a time; on a CPU make STEPS and the grid much smaller.
# Resumable: finished runs are not repeated, an interrupted group resumes from its checkpoint.
# Output: $OUT/sweep.md (table: mean ± spread over the seeds), $OUT/sweep.png (heatmap),
# $OUT/curves.png (validation gap against steps), $OUT/sweep.json, $OUT/runs/*, $OUT/groups/*.
#
# Usage:  sh demo/demo-icl-sweep.sh [extra flags of python -m conrwkv.lm.sweep, e.g. --dry_run]
#         STEPS=50 ORDERS=1 sh demo/demo-icl-sweep.sh   (every variable below can be edited
#                                                        here or set in the environment)
# --dry_run prints the data folders and every run's train.py command (JSON; each command is
# checked against train.py's flags) and makes or trains nothing.
set -eu

ORDERS=${ORDERS:-1 2 3 4}
KERNELS=${KERNELS:-0 2 3 4 5 6}   # 0 = no conv (token shift alone)
DEPTHS=${DEPTHS:-1 2}
SEEDS=${SEEDS:-0 1 2}             # training seeds of every cell (the chains stay the same)
STEPS=${STEPS:-1500}
M_BSZ=${M_BSZ:-32}                # chains per step (the name of demo-training-run.sh)
MODEL_TYPE=${MODEL_TYPE:-x060}    # x060: RWKV-6; x070: RWKV-7; x052: RWKV-5.2
N_EMBD=${N_EMBD:-64}
SEQ_LEN=${SEQ_LEN:-513}           # 512 predictions per chain
N_TRAIN=${N_TRAIN:-50000}
ENGINE=${ENGINE:-ensemble}        # ensemble: a shape's runs as one batched computation; process: one train.py each
PARALLEL=${PARALLEL:-4}           # processes on the GPU at the same time: groups (ensemble) or runs
# Another architecture gets its own folder (x060 keeps the name it always had): a finished run
# in the folder is kept, whatever it was trained as.
case $MODEL_TYPE in
  x060) OUT=${OUT:-output/icl-sweep} ;;
  *) OUT=${OUT:-output/icl-sweep-$MODEL_TYPE} ;;
esac

# shellcheck disable=SC2086  # the grids are meant to split into words
python -m conrwkv.lm.sweep --orders $ORDERS --kernels $KERNELS --depths $DEPTHS --seeds $SEEDS \
  --steps "$STEPS" --micro-bsz "$M_BSZ" --arch "$MODEL_TYPE" --n-embd "$N_EMBD" --seq-len "$SEQ_LEN" \
  --n-train "$N_TRAIN" --engine "$ENGINE" --parallel "$PARALLEL" --out "$OUT" "$@"
