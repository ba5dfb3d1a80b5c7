#!/bin/sh
# The RWKV-ICL runs on one GPU machine (docs/results.md, "RWKV-ICL: the grid settled"), in device
# calls of at most 10 minutes. Each phase leaves its sweeps resumable on the machine and copies
# their small results to $OUT as one tar per sweep (tables, figures, every run's ICL evaluation
# and training record with its gap curve, the group logs); the weights stay on the machine.
#
#   sh bench/icl_gpu.sh bench          bench/bench_icl_sweep.py --gpu (the engines' speed)
#                                      (BENCH_FLAGS=--steps-only: the batched step alone)
#   sh bench/icl_gpu.sh sweep NAME...  the sweeps named, one after another, until DEADLINE_S:
#     grid      k = 1..4 x kernels {0,2,3,4,5,6} x depth 1, 2 x seeds 0-2, RWKV-6, 1500 steps
#     noshift   the same at depth 1 without the token shift
#     long      k = 4, depth 1, every kernel, seeds 0-2, 6000 steps (is k = 4 settled?)
#     x070      the grid as RWKV-7
#   sh bench/icl_gpu.sh collect NAME...  only the tars of those sweeps (what a sweep makes last)
#
# Run the sweeps one after another with 4-6 groups at a time: the groups' steps are host-bound, so
# more at once run no faster in total (2026-12-02: 12 at once finished none in 430 s).
# A machine that went cold lost the runs in flight; the tars from earlier calls can be carried
# back as .gpu/icl-<name>.tar (git-ignored) and are unpacked first, so finished runs are kept.
# A grid run in parts (SEEDS, DEPTHS) becomes one table with python -m conrwkv.lm.sweep_merge.
set -eu

PHASE=${1:-}
DEADLINE_S=${DEADLINE_S:-540}
OUT=${OUT:-output/icl-gpu-out}
ROOT=${ROOT:-output}
PARALLEL=${PARALLEL:-4}            # groups at the same time
EXTRA=${EXTRA:-}                   # more sweep flags for every sweep, e.g. --cuda-graphs
SEEDS=${SEEDS:-0 1 2}              # the seeds of every sweep
DEPTHS=${DEPTHS:-1 2}              # the depths of grid and x070 (a grid run in parts)
START=$(date +%s)
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$ROOT"

sweep_flags() {
  all="--orders 1 2 3 4 --kernels 0 2 3 4 5 6 --seeds $SEEDS --steps 1500 --accelerator gpu"
  case $1 in
    grid) echo "$all --depths $DEPTHS" ;;
    noshift) echo "$all --depths 1 --no-token-shift" ;;
    long) echo "--orders 4 --kernels 0 2 3 4 5 6 --seeds $SEEDS --steps 6000 --accelerator gpu --depths 1" ;;
    x070) echo "$all --depths $DEPTHS --arch x070" ;;
    *) echo "icl_gpu: unknown sweep $1" >&2; exit 2 ;;
  esac
}

collect() {   # one tar of what a sweep has made so far (small files only)
  name=$1
  [ -d "$ROOT/icl-$name" ] || return 0
  # each listing may find nothing yet (no run has finished, no group has started): under set -e a
  # failing find would end the list and leave the group logs out of the tar
  (cd "$ROOT" && { ls -d "icl-$name"/sweep.* "icl-$name"/curves.png 2> /dev/null || true
     find "icl-$name/runs" -name 'rwkv-step*.json' 2> /dev/null || true
     find "icl-$name/groups" -name 'train-*.log' -o -name 'spec.json' 2> /dev/null || true; } \
   | tar -cf "$OUT/icl-$name.tar" -T -)
}

case $PHASE in
bench)
  python3 bench/bench_icl_sweep.py --gpu ${BENCH_FLAGS:-} --json "$OUT/icl-speed.json" 2>&1 | grep -v "chains:" | tee "$OUT/bench.log"
  ;;
sweep)
  shift
  for name in "$@"; do
    [ ! -f ".gpu/icl-$name.tar" ] || [ -d "$ROOT/icl-$name" ] || tar -C "$ROOT" -xf ".gpu/icl-$name.tar"
    left=$((DEADLINE_S - ($(date +%s) - START)))
    [ "$left" -gt 30 ] || { echo "icl_gpu: no time left for $name"; break; }
    echo "icl_gpu: sweep $name for at most $left s"
    # at the deadline the sweep gets SIGTERM and stops its training processes with it (they
    # resume from their last checkpoint in the next call); a process that does not stop within
    # 20 s (one blocked in a GPU wait) is killed, so the tar below is still made
    # shellcheck disable=SC2046  # the flags are meant to split into words
    timeout -k 20 -s TERM "$left" python3 -m conrwkv.lm.sweep $(sweep_flags "$name") $EXTRA --parallel "$PARALLEL" \
      --out "$ROOT/icl-$name" > "$OUT/sweep-$name.log" 2>&1 \
      || echo "icl_gpu: $name stopped (exit $?); the next call resumes it"
    grep -v "chains:" "$OUT/sweep-$name.log" | tail -n 25
    collect "$name"
  done
  ;;
collect)
  shift
  for name in "$@"; do collect "$name"; done
  ;;
*)
  echo "usage: sh bench/icl_gpu.sh bench | sweep NAME... | collect NAME... (see its header)" >&2
  exit 2
  ;;
esac
