#!/usr/bin/env bash
# Issue 26, GPU measurements in one detached job. Always (about 3 minutes on one H200):
#  1. cold tokenization of SciFact: the batch call's threads against forked single-thread shards (bench_tokenize.py);
#  2. the trainer against sentence-transformers, bf16, batch 64 + 64 hard negatives: neither caching
#     (chunk 0: ance's plain step, their MNRL) and both caching (chunk 32: GradCache, CachedMNRL);
#  3. where an encoder forward's time goes, MiniLM and BERT-base shapes (profile_encode.py).
#  0. the encoder's forward in fewer kernels (bench_encode_kernels.py: lean / tanh epilogue / compiled);
# With FULL=1 also (about 12 minutes more; SKIP_QUICK=1 leaves out 1-3):
#  4. the MS MARCO-shaped refresh again, the worker now searching two 2,048-query chunks per call
#     (search_spans), with the lean compiled encoder (inferencer.kernels=lean-tanh, compile=on) and the fused
#     k-NN kernel (inferencer.knn_kernel=fused), then with neither: against
#     benchmarks/results/msmarco-shape-minilm-1gpu.json (133.5 s, k-NN 22.0 s);
#  5. a BERT-base-shaped refresh at 1M passages x 128 tokens, 100k queries, lean compiled (the 8.8M one takes
#     ~9 min a refresh).
# On the GPU machine, after `. scripts/device_env.sh` (carry .device-model, .whl, .devdata):
#   bash scripts/detached.sh start /tmp/n26 env PYTHONPATH=$PYTHONPATH PATH=$PATH OUT_DIR=/tmp/n26/out bash benchmarks/issue26_next.sh
#   bash scripts/detached.sh follow /tmp/n26 540
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT_DIR:-runs/issue26}; mkdir -p "$OUT_DIR"
TOK=${ANCE_DEVICE_MODEL:?needs scripts/device_env.sh (the MiniLM pack) or ANCE_DEVICE_MODEL}
SCIFACT=${SCIFACT:-/tmp/data/scifact}
if [ -z "${SKIP_QUICK:-}" ]; then   # SKIP_QUICK=1 FULL=1: the two refreshes alone
python benchmarks/bench_encode_kernels.py --tokenizer "$TOK" --shapes minilm --ragged \
    --out "$OUT_DIR/encode-kernels-minilm-h200.json" 2>&1 | tail -12
python benchmarks/bench_encode_kernels.py --tokenizer "$TOK" --shapes bert-base --variants hf lean lean-tanh lean-compile \
    --out "$OUT_DIR/encode-kernels-bert-base-h200.json" 2>&1 | tail -8
python benchmarks/bench_tokenize.py --tokenizer "$TOK" --data "$SCIFACT" --procs 4,8,16 --repeats 3 \
    --out "$OUT_DIR/tokenize-scifact-h200.json" 2>&1 | tail -25
for chunk in 0 32; do
  python benchmarks/bench_train.py --model "$TOK" --data "$SCIFACT" --device cuda --batch 64 --chunk $chunk \
      --precisions bf16 --repeats 3 --steps 30 --warmup 8 --lean --out "$OUT_DIR/train-chunk$chunk-h200.json" 2>&1 | tail -4
done
for shape in minilm bert-base; do
  python benchmarks/profile_encode.py --tokenizer "$TOK" --shape $shape --batch 1024 --length 128 \
      --out "$OUT_DIR/profile-encode-$shape-h200.json" 2>&1 | tail -22
done
fi
[ -n "${FULL:-}" ] || exit 0
# the MS MARCO-shaped refresh with the lean, compiled encoder, then as before (kernels hf, compile off), same work dir
# KINDS: "encoder-kernels compile knn-kernel" triples split by '|' (default: the new path, then the previous one);
# SKIP_BERT=1 leaves out step 5
IFS='|' read -ra kinds <<< "${KINDS:-lean-tanh on fused|hf off tiles}"
for kv in "${kinds[@]}"; do
  set -- $kv
  timeout 560 python benchmarks/bench_refresh.py --msmarco-shape --model-config minilm --tokenizer "$TOK" --device cuda \
      --backend torch --batch-size 1024 --chunk-queries 2048 --workers 1 --repeat 1 --work-dir /tmp/mmw \
      --start-timeout 600 --timeout 500 --set inferencer.kernels=$1 inferencer.compile=$2 inferencer.knn_kernel=$3 \
      --out "$OUT_DIR/msmarco-shape-minilm-1gpu-$1-$3.json" 2>&1 | tail -30
done
[ -z "${SKIP_BERT:-}" ] || exit 0
timeout 400 python benchmarks/bench_refresh.py --synthetic-docs 1000000 --doc-tokens 128 --synthetic-queries 100000 \
    --model-config bert-base --tokenizer "$TOK" --device cuda --backend torch --batch-size 1024 --chunk-queries 2048 \
    --workers 1 --repeat 1 --work-dir /tmp/bbw --set inferencer.kernels=lean inferencer.compile=on inferencer.knn_kernel=auto \
    --out "$OUT_DIR/refresh-1m-bert-base-1gpu.json" 2>&1 | tail -30
