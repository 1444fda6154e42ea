#!/usr/bin/env bash
# One detached job on one H200 for issues 26 and 29, most needed first (2026-12-06):
#  1. the GPU tests of what is new (tests/test_groupmax.py, tests/test_fused_knn.py, tests/test_train_compile.py);
#  2. the k-NN at the MS MARCO shape: the Triton group maxima against torch's amax, side by side, and
#     score tiles of 8,192 queries (bench_knn.py, random unit vectors, about a minute);
#  3. issue 29's reproduction of the shipped SQuAD config (issue29_next.sh SKIP_WAVE=1 SKIP_SCIFACT=1), under MPS;
#  4. the MS MARCO-shaped refresh with the lean compiled encoder and the Triton group maxima
#     (issue26_next.sh FULL, KINDS "lean-tanh on tiles", no BERT-base);
#  5. the trainer against sentence-transformers with train.kernels=lean + train.compile=on (bench_train.py,
#     which now compiles through the trainer's compile_towers);
#  6. issue 29's SciFact scrutiny (studies/scifact_scrutiny.sh), under MPS. SKIP_SCIFACT=1 leaves it out.
# Run after `. scripts/device_env.sh; tar -C /tmp/data -xzf .devdata/squad.tgz` with OUT_DIR set (DIR/out).
set -uo pipefail
cd "$(dirname "$0")/.."
O=${OUT_DIR:?}; mkdir -p "$O"
log() { echo "=== $(date +%T) $*"; }
log "GPU tests"
timeout 300 python -m pytest -q -p no:cacheprovider tests/test_groupmax.py tests/test_fused_knn.py \
    tests/test_train_compile.py 2>&1 | tail -4
if [ -z "${SKIP_KNN:-}" ]; then
log "k-NN, MS MARCO shape"
B="python benchmarks/bench_knn.py --queries 500000 --docs 8800000 --dim 384 --k 200 --skip-previous"
timeout 150 $B --gmax both --out "$O/knn-msmarco-gmax-h200.json" 2>&1 | tail -1
timeout 90 $B --qblock 8192 --out "$O/knn-msmarco-q8192-h200.json" 2>&1 | tail -1
timeout 90 $B --profile 2>&1 | tail -24   # where a tile's time goes now (4 query blocks)
fi
mps_on() {
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/ance-mps-wave CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY" && nvidia-cuda-mps-control -d
}
mps_off() { echo quit | nvidia-cuda-mps-control; sleep 2; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY; }
log "issue 29 reproduction"
mps_on
SKIP_WAVE=1 SKIP_SCIFACT=1 PICK=studies/results/equal-time-4.json DATA=/tmp/data/squad SCIFACT=/tmp/data/scifact \
    MODEL="$ANCE_DEVICE_MODEL" ROOT=/tmp/i29 OUT="$O/i29" bash studies/issue29_next.sh
mps_off
log "MS MARCO-shaped refresh, lean compiled encoder, Triton group maxima"
KINDS="lean-tanh on tiles" SKIP_QUICK=1 FULL=1 SKIP_BERT=1 OUT_DIR="$O" bash benchmarks/issue26_next.sh
log "trainer vs sentence-transformers, lean + compile"
timeout 300 python benchmarks/bench_train.py --model "$ANCE_DEVICE_MODEL" --data /tmp/data/scifact --device cuda \
    --batch 64 --chunk 0 --precisions bf16 --repeats 2 --steps 30 --warmup 8 --lean --compiled \
    --out "$O/train-chunk0-lean-compiled-h200.json" 2>&1 | grep -v Warning | tail -3
if [ -z "${SKIP_SCIFACT:-}" ]; then
  log "issue 29 SciFact scrutiny"
  mps_on
  mkdir -p "$O/i29/sf"
  DATA=/tmp/data/scifact ROOT=/tmp/i29/sf OUT="$O/i29/sf" PORT_BASE=5900 MODEL="$ANCE_DEVICE_MODEL" \
      bash studies/scifact_scrutiny.sh > "$O/i29/sf.log" 2>&1; echo "rc $?" >> "$O/i29/sf.log"
  mps_off
fi
log "job done"
