#!/usr/bin/env bash
# Issue 26: float8 projections in the encoder (inferencer.kernels=lean-fp8), one detached job on one H100/H200
# (first run 2026-12-06, docs/benchmarks.md "float8 projections"); set SKIP_* for what is done:
#  1. the GPU tests of the new kernels (tests/test_leanbert.py: lean-fp8 eager and compiled within float8's
#     rounding of bf16; tests/test_knn.py: the overlapped k-NN = the tiles);
#  2. the encoder's forward, side by side in one process (bench_encode_kernels.py): MiniLM with its real
#     weights (--pretrained: the cosine to transformers' forward is theirs), lean-tanh compiled against lean-fp8
#     eager and compiled, then the BERT-base shape (random weights); about two minutes;
#  3. what float8 costs in retrieval: SciFact dev with the real MiniLM, `ance retrieve` with lean-tanh and with
#     lean-fp8 (both compiled), `ance eval` of both and `ance eval --compare` (paired test); SKIP_QUALITY=1;
#  4. the k-NN at the MS MARCO shape, the tiles (6,144 queries) and the overlapped selection (--overlap),
#     side by side with their agreement (bench_knn.py); SKIP_KNN=1;
#  5. the MS MARCO-shaped refresh (issue26_next.sh FULL, about 5 minutes each), REFRESH_KINDS
#     (default "lean-fp8 on tiles|lean-tanh on tiles"); SKIP_REFRESH=1.
# The device call (kind nvidia-h200; carry .device-model, .whl, .devdata), then
# `bash scripts/detached.sh follow /tmp/job 530` call after call:
#   . scripts/device_env.sh > /tmp/envlog 2>&1; rm -rf /tmp/job && bash scripts/detached.sh start /tmp/job \
#       env PYTHONPATH=$PYTHONPATH PATH=$PATH ANCE_DEVICE_MODEL=$ANCE_DEVICE_MODEL HF_HUB_OFFLINE=1 PYTHONSAFEPATH=1 \
#       OUT_DIR=/tmp/job/out bash benchmarks/issue26_fp8_job.sh && bash scripts/detached.sh follow /tmp/job 530
set -uo pipefail
cd "$(dirname "$0")/.."
O=${OUT_DIR:?}; mkdir -p "$O"
TOK=${ANCE_DEVICE_MODEL:?needs scripts/device_env.sh (the MiniLM pack)}
log() { echo "=== $(date +%T) $*"; }
log "GPU tests"
timeout 300 python -m pytest -q -p no:cacheprovider tests/test_leanbert.py tests/test_knn.py 2>&1 | tail -4
log "encoder forward: lean-tanh compiled vs lean-fp8"
timeout 300 python benchmarks/bench_encode_kernels.py --tokenizer "$TOK" --shapes minilm --pretrained \
    --variants lean-tanh-compile lean-fp8 lean-fp8-compile --out "$O/encode-kernels-fp8-minilm.json" 2>&1 | grep -v Warn | tail -5
timeout 300 python benchmarks/bench_encode_kernels.py --tokenizer "$TOK" --shapes bert-base \
    --variants lean-tanh-compile lean-fp8-compile --out "$O/encode-kernels-fp8-bert-base.json" 2>&1 | grep -v Warn | tail -4
if [ -z "${SKIP_QUALITY:-}" ]; then
  log "SciFact dev, real MiniLM: lean-tanh vs lean-fp8"
  for k in lean-tanh lean-fp8; do
    timeout 200 ance retrieve --model "$TOK" --data /tmp/data/scifact --split dev --device cuda --kernels $k --compile on \
        --k 100 --max-length 256 --batch-size 256 --quiet --cache-dir /tmp/fp8cache --out "$O/scifact-dev-$k.trec" 2>&1 | tail -2
  done
  ance eval --run "$O/scifact-dev-lean-tanh.trec" "$O/scifact-dev-lean-fp8.trec" --qrels /tmp/data/scifact/qrels/dev.tsv \
      --out "$O/scifact-dev-fp8.md" 2>&1 | tail -6
  ance eval --compare "$O/scifact-dev-lean-fp8.trec" "$O/scifact-dev-lean-tanh.trec" \
      --qrels /tmp/data/scifact/qrels/dev.tsv 2>&1 | tee "$O/scifact-dev-fp8-compare.txt" | tail -8
fi
if [ -z "${SKIP_KNN:-}" ]; then
  log "k-NN, MS MARCO shape: tiles vs overlap"
  timeout 240 python benchmarks/bench_knn.py --queries 500000 --docs 8800000 --dim 384 --k 200 --skip-previous --overlap \
      --out "$O/knn-msmarco-overlap.json" 2>&1 | tail -3
fi
if [ -z "${SKIP_REFRESH:-}" ]; then
  log "MS MARCO-shaped refresh"
  KINDS="${REFRESH_KINDS:-lean-fp8 on tiles|lean-tanh on tiles}" SKIP_QUICK=1 FULL=1 SKIP_BERT=1 OUT_DIR="$O" \
      bash benchmarks/issue26_next.sh
fi
log "job done"
