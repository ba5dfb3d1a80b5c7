#!/bin/sh
# The second ASR proof on one GPU machine (docs/results.md, "ASR proof, second design"), in calls
# of at most 10 minutes that each leave what they made for the next (same machine, still warm)
# and copy their tables to $OUT. Everything runs through demo/demo-asr-offline.sh.
#
#   sh bench/asr_proof.sh build   synthesise the corpus from the carried synthesiser kit, train
#                                 two CTC encoders side by side (the one with the lower dev WER is
#                                 kept) while the LM ladder trains on the carried LM text
#   sh bench/asr_proof.sh grid    the grid (LM size x arm x seed) for what is left of the call;
#                                 run it again to go on. A machine that lost the build (cold)
#                                 rebuilds the corpus and LMs and restores the encoder from
#                                 .gpu/encoder.tar.* when that was carried back
#
# Carried (git-ignored, named in the device call's carry, 64 MiB in all): .whl (wheels the machine
# lacks: jiwer, rapidfuzz, whisper-normalizer and its needs, soundfile, cffi, pycparser, rwkv for
# the World tokenizer), .gpu (synthkit.tar.xz from `dataset2.py synthkit`; the LM text from
# `dataset2.py lmtext`, as the folder lm-text or as lm-text.tar.xz; encoder.tar.* from a build's
# $OUT) and the dev/test folders of data/asr-proof/plan (`dataset2.py synth --plan_only` with the
# corpus flags below: the LM text leaves out its dev and test sentences, which the build checks
# are those it speaks).
# Disk (64 GiB there): runs keep every checkpoint; a 24x1024 LM or full-LLM cell writes about
# 7 GB per save, so GRID_SAVE_EVERY is about an epoch and the grid starts no cell below 10 GiB free.
# Settings are the variables below (each can be set in the environment).
set -eu

PHASE=${1:-}
DEADLINE_S=${DEADLINE_S:-540}      # seconds of this call to use (the call's limit is 600)
R=${R:-output/asr-proof}
KIT=${KIT:-/tmp/synthkit}
PLAN=${PLAN:-data/asr-proof/plan}
OUT=${OUT:-$R/out}
export RUN_DIR="$R" CORPUS="$R/corpus" LM_TEXT=".gpu/lm-text" PACK=""
export N_TRAIN="" N_DEV=${N_DEV:-300} N_TEST_CLEAN=${N_TEST_CLEAN:-500} N_TEST_OTHER=${N_TEST_OTHER:-500}
export SYNTH_ARGS="${SYNTH_ARGS:---voices all --hours 10} --tools $KIT"
export LM_SIZES="${LM_SIZES:-6x384 12x768 24x1024}"
export LM_SAVE_EVERY=${LM_SAVE_EVERY:-200} PYTHONUNBUFFERED=1
# the two encoders: 6 x 256 (encoder v2 of issue 6) and a wider, deeper one
ENC_A_ARGS=${ENC_A_ARGS:---batch_size 64 --lr 1.5e-3}
ENC_B_ARGS=${ENC_B_ARGS:---batch_size 64 --lr 1e-3 --hidden_size 384 --layers 8 --heads 6 --ffn 1536 --conv_dim 384}
# the grid: trainable-LLM arms and the oracle first (the pipeline proof), then the recipe
export GRID_ARMS="${GRID_ARMS:-full,lora,oracle,state-conv,state,projector}" GRID_SEEDS=${GRID_SEEDS:-0,1}
export GRID_PARALLEL=${GRID_PARALLEL:-10} GRID_CONV_KERNELS=${GRID_CONV_KERNELS:-5,3}
export ASR_EPOCHS=${ASR_EPOCHS:-2} GRID_SAVE_EVERY=${GRID_SAVE_EVERY:-1000}
START=$(date +%s)
left() { echo $((DEADLINE_S - ($(date +%s) - START))); }
mkdir -p "$R" "$OUT"

# the demos call `python`; this machine may have python3 only
# (a script, not a link: a link to a virtual environment's python leaves the environment)
mkdir -p /tmp/bin && rm -f /tmp/bin/python && printf '#!/bin/sh\nexec python3 "$@"\n' > /tmp/bin/python && chmod +x /tmp/bin/python
export PATH="/tmp/bin:$PATH"
WHEELS=${WHEELS-.whl}   # wheels to install first (empty: none, where the packages are installed)
if [ -n "$WHEELS" ] && [ ! -f /tmp/site/.done ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$WHEELS"/*.whl && touch /tmp/site/.done
fi
export PYTHONPATH="$PWD/src:/tmp/site:${PYTHONPATH:-}"
# the LM text may travel as one archive (smaller: the tokens compress about twofold)
[ -d "$LM_TEXT" ] || [ ! -f "$LM_TEXT.tar.xz" ] || tar -C "$(dirname "$LM_TEXT")" -xJf "$LM_TEXT.tar.xz"

corpus() {
  [ -f "$KIT/kit.json" ] || python dataset2.py synthkit --unpack .gpu/synthkit.tar.xz --out "$KIT"
  t=$(date +%s)
  STAGES=prepare sh demo/demo-asr-offline.sh
  echo "asr_proof: corpus ready in $(($(date +%s) - t)) s"
  # the LM text left out the plan's dev and test sentences: they must be the ones spoken here
  python - "$PLAN" "$CORPUS" <<'EOF'
import sys
from conrwkv.data.offline.lm_text import corpus_transcripts
splits = ["dev", "test-clean", "test-other"]
planned, spoken = (corpus_transcripts(p, splits) for p in sys.argv[1:])
if planned != spoken:
    sys.exit(f"asr_proof: the corpus's dev/test sentences differ from the plan's ({len(planned ^ spoken)})")
print(f"asr_proof: {len(spoken)} dev/test sentences, the same as the plan's (left out of the LM text)")
EOF
}

case $PHASE in
build)
  # its own process group, so that what is still training at the end of the call can be stopped
  # as a whole (safe: the lm stage resumes from its last checkpoint in the next call)
  STAGES=lm setsid sh demo/demo-asr-offline.sh > "$R/lm.log" 2>&1 & lm=$!
  corpus
  limit=$(($(left) - 90))     # scoring three splits and saving, after training
  echo "asr_proof: encoders train for $limit s"
  ENCODER="$R/encoder-a" ENC_STEPS=100000 ENC_TIME_LIMIT=$limit ENC_ARGS="$ENC_A_ARGS" \
    STAGES=encoder sh demo/demo-asr-offline.sh > "$R/encoder-a.log" 2>&1 & a=$!
  ENCODER="$R/encoder-b" ENC_STEPS=100000 ENC_TIME_LIMIT=$limit ENC_ARGS="$ENC_B_ARGS" \
    STAGES=encoder sh demo/demo-asr-offline.sh > "$R/encoder-b.log" 2>&1 & b=$!
  rc=0
  wait "$a" || rc=1; wait "$b" || rc=1
  tail -n 5 "$R/encoder-a.log" "$R/encoder-b.log"
  python - "$R" <<'EOF'
import json, os, sys
root = sys.argv[1]
scores = {}
for name in ("encoder-a", "encoder-b"):
    path = os.path.join(root, name, "ctc_results.json")
    if os.path.exists(path):
        r = json.load(open(path))
        scores[name] = r["eval"]["dev"]["wer"]
        print(name, "steps", r["steps_done"], "s", r["train_seconds"],
              {k: round(100 * v["wer"], 2) for k, v in r["eval"].items()})
best = min(scores, key=scores.get)
os.symlink(best, os.path.join(root, "encoder"))
print("asr_proof: the grid uses", best)
EOF
  # in parts of 15 MiB: a file that comes back through $OUT is at most 16 MiB
  tar -C "$R" -cf - "$(readlink "$R/encoder")" | split -b 15M -d - "$OUT/encoder.tar."
  for e in encoder-a encoder-b; do cp "$R/$e/ctc_results.json" "$OUT/$e-results.json" || true; done
  echo "asr_proof: waiting for the LM ladder ($(left) s left)"
  while kill -0 "$lm" 2> /dev/null && [ "$(left)" -gt 15 ]; do sleep 5; done
  if kill -0 "$lm" 2> /dev/null; then
    pkill -KILL -g "$lm"; echo "asr_proof: the LM ladder is not finished; the grid call resumes it"
  fi
  wait "$lm" || true
  ls "$R"/lm/*/rwkv-step*.pth 2> /dev/null || true
  cp "$R/lm.log" "$OUT/lm.log"
  exit $rc
  ;;
grid)
  STAGES=lm sh demo/demo-asr-offline.sh > "$R/lm-again.log" 2>&1 & lm=$!   # beside the corpus
  [ -f "$CORPUS/meta.json" ] || corpus
  if [ ! -e "$R/encoder" ] && [ -f .gpu/encoder.tar.00 ]; then
    cat .gpu/encoder.tar.* | tar -C "$R" -xf -
    ln -s "$(cat .gpu/encoder.tar.* | tar -tf - | head -n 1 | cut -d/ -f1)" "$R/encoder"
  fi
  wait "$lm"
  # ten training processes share 16 cores: one or two threads each
  OMP_NUM_THREADS=2 GRID_BUDGET=$(($(left) - 40)) STAGES=grid sh demo/demo-asr-offline.sh || true
  summary=$(ls -d "$R"/grid/summary* 2>/dev/null | sort -V | tail -n 1)
  [ -n "$summary" ] && cp "$summary/grid.md" "$summary/grid.json" "$summary/grid.png" "$OUT/"
  # every cell's scores and hypotheses (small), for the tables of docs/results.md
  find "$R/grid" -path '*eval-*' -name '*.json' | tar -cf "$OUT/cells.tar" -T - 2>/dev/null || true
  ;;
*)
  echo "usage: sh bench/asr_proof.sh build|grid (settings: the variables at its top)" >&2
  exit 2
  ;;
esac
