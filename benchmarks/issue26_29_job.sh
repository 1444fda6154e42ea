#!/usr/bin/env bash
# One detached job on one H200 for the 2026-12-05 evening session (issues 26 and 29), most needed first:
#  1. the GPU tests of what is new (tests/test_train_compile.py, tests/test_fused_knn.py);
#  2. the MS MARCO-shaped refresh with the lean compiled encoder (issue26_next.sh FULL, KINDS "lean-tanh on
#     tiles", no BERT-base);
#  3. issue 29's reproduction of the shipped SQuAD config (issue29_next.sh SKIP_WAVE=1 SKIP_SCIFACT=1), under MPS;
#  4. the trainer against sentence-transformers with train.kernels=lean + train.compile=on (bench_train.py).
# Run after `. scripts/device_env.sh; tar -C /tmp/data -xzf .devdata/squad.tgz` with OUT_DIR set (DIR/out).
set -uo pipefail
cd "$(dirname "$0")/.."
O=${OUT_DIR:?}; mkdir -p "$O"
log() { echo "=== $(date +%T) $*"; }
log "GPU tests"
timeout 300 python -m pytest -q -p no:cacheprovider tests/test_train_compile.py tests/test_fused_knn.py 2>&1 | tail -4
log "MS MARCO-shaped refresh, lean compiled encoder"
KINDS="lean-tanh on tiles" SKIP_QUICK=1 FULL=1 SKIP_BERT=1 OUT_DIR="$O" bash benchmarks/issue26_next.sh
log "issue 29 reproduction"
export CUDA_MPS_PIPE_DIRECTORY=/tmp/ance-mps-wave CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY" && nvidia-cuda-mps-control -d
SKIP_WAVE=1 SKIP_SCIFACT=1 PICK=studies/results/equal-time-4.json DATA=/tmp/data/squad SCIFACT=/tmp/data/scifact \
    MODEL="$ANCE_DEVICE_MODEL" ROOT=/tmp/i29 OUT="$O/i29" bash studies/issue29_next.sh
echo quit | nvidia-cuda-mps-control
log "trainer vs sentence-transformers, lean + compile"
timeout 300 python benchmarks/bench_train.py --model "$ANCE_DEVICE_MODEL" --data /tmp/data/scifact --device cuda \
    --batch 64 --chunk 0 --precisions bf16 --repeats 2 --steps 30 --warmup 8 --lean --compiled \
    --out "$O/train-chunk0-lean-compiled-h200.json" 2>&1 | grep -v Warning | tail -3
log "job done"
