#!/usr/bin/env bash
# One detached job on one H200 for issues 26 and 29, most needed first (first run 2026-12-06, docs/benchmarks.md;
# set SKIP_* for what is done):
#  0. the encoder's forward with the pooling of 2026-12-06 against the pooling before (bench_encode_kernels.py,
#     best of three repeats each, about two minutes);
#  1. the GPU tests of what is new (tests/test_fused_knn.py, tests/test_train_compile.py), and SciFact's cold
#     encode (bench_encode_paths.py --cold): the BERT normaliser skipped for plain ASCII texts or not, and each
#     batch encoded as it is tokenized (ance.model.stream) or after the whole cache;
#  2. the k-NN at the MS MARCO shape: TorchIndex's tiles (6,144 queries since 2026-12-06) against 4,096 and 8,192,
#     and with each tile's selection on a second stream (--overlap), side by side with their agreement
#     (bench_knn.py, random unit vectors, about two minutes); SKIP_KNN=1;
#  3. issue 29's reproduction of the shipped SQuAD config (issue29_next.sh SKIP_WAVE=1 SKIP_SCIFACT=1), under MPS;
#     SKIP_REPRO=1 (done 2026-12-06: docs/results.md);
#  4. the MS MARCO-shaped refresh with the lean compiled encoder and the k-NN kernel auto (the overlapped tiles
#     on a GPU since 2026-12-06), the broker's per-chunk work halved since the last GPU refresh (issue26_next.sh
#     FULL, REFRESH_KINDS, default "lean-tanh on auto"; about 5 minutes each); before it the
#     broker's per-chunk host work on this machine's CPU (bench_broker_chunk.py, about 40 s); then the BERT-base-shaped
#     refresh, 1M passages x 128 tokens, 100k queries (never run yet; about 4 minutes; SKIP_BERT=1); SKIP_REFRESH=1;
#  5. the trainer against sentence-transformers with train.kernels=lean + train.compile=on (bench_train.py,
#     which now compiles through the trainer's compile_towers); SKIP_TRAIN=1;
#  6. issue 29's SciFact scrutiny (studies/scifact_scrutiny.sh), under MPS. SKIP_SCIFACT=1 leaves it out;
#  7. issue 29's fifth SQuAD sweep and its finals (studies/equal_time_wave5.sh: a refresh every 25 steps, the
#     temperature 0.033, sentence-transformers' scale 30 / 50), under MPS, about 10 minutes. SKIP_WAVE5=1.
# Run after `. scripts/device_env.sh > LOG` (not in a pipe: its exports must reach this shell) and
# `tar -C /tmp/data -xJf .devdata/squad.txz` (xz: the model pack, the wheels, SciFact, SQuAD and the tree fit in
# one call's 64 MiB only so), with OUT_DIR set (DIR/out). Here, before the first call:
#   ../shared/device/pack-gpu-extras.sh model && mv .device .device-model      # pyzmq + MiniLM (40 MB)
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl pytrec-eval-terrier \
#       ir-measures cwl-eval bm25s prometheus-client rich markdown-it-py mdurl pygments
#   mkdir -p .devdata && tar -czf .devdata/scifact.tgz -C ../shared/data scifact &&
#       tar -C ../shared/data -cf - squad | xz -9 > .devdata/squad.txz
# Done on an H100 (2026-12-06, docs/benchmarks.md): the GPU tests, the cold SciFact paths, the k-NN tiles and the
# overlap, the SciFact scrutiny, the reproduction; so the next call is SKIP_KNN=1 SKIP_COLD=1 SKIP_REPRO=1
# SKIP_TRAIN=1 SKIP_SCIFACT=1 (the refresh, then the fifth sweep). To end one step early without killing the
# job: `bash scripts/detached.sh skip /tmp/job PATTERN` (never `pkill -f PATTERN` in the call: it kills the
# call's own shell, the machine goes back idle and the job with it).
# The device call (carry .device-model, .whl, .devdata), then `bash scripts/detached.sh follow /tmp/job 540`
# call after call:
#   . scripts/device_env.sh > /tmp/envlog 2>&1; tar -C /tmp/data -xJf .devdata/squad.txz &&
#   bash scripts/detached.sh start /tmp/job env PYTHONPATH=$PYTHONPATH PATH=$PATH ANCE_DEVICE_MODEL=$ANCE_DEVICE_MODEL \
#       HF_HUB_OFFLINE=1 PYTHONSAFEPATH=1 SKIP_KNN=1 SKIP_COLD=1 SKIP_REPRO=1 SKIP_TRAIN=1 SKIP_SCIFACT=1 OUT_DIR=/tmp/job/out bash benchmarks/issue26_29_job.sh
set -uo pipefail
cd "$(dirname "$0")/.."
O=${OUT_DIR:?}; mkdir -p "$O"
log() { echo "=== $(date +%T) $*"; }
log "GPU tests"
timeout 300 python -m pytest -q -p no:cacheprovider -rf tests/test_fused_knn.py tests/test_train_compile.py tests/test_knn.py \
    tests/test_index.py tests/test_leanbert.py tests/test_encode_fast.py tests/test_decoders.py tests/test_encode.py 2>&1 | grep -E "^FAILED|passed|failed" | cut -c1-200
log "encoder forward: pooling now (float32 accumulation, no mask when unpadded) vs the float32 copy before"
timeout 300 python benchmarks/bench_encode_kernels.py --tokenizer "$ANCE_DEVICE_MODEL" --shapes minilm bert-base \
    --variants lean-tanh-compile lean-tanh-compile-f32pool \
    --out "$O/encode-kernels-pool.json" 2>&1 | grep -E "docs/s|failed"
if [ -z "${SKIP_COLD:-}" ]; then
log "cold SciFact encode: normalised / prenorm / stream (tokenize while encoding), side by side"
timeout 240 python benchmarks/bench_encode_paths.py --tokenizer "$ANCE_DEVICE_MODEL" --shapes --cold /tmp/data/scifact \
    --out "$O/cold-scifact-stream-h200.json" 2>&1 | grep '^cold'
fi
if [ -z "${SKIP_KNN:-}" ]; then
log "k-NN, MS MARCO shape"
B="python benchmarks/bench_knn.py --queries 500000 --docs 8800000 --dim 384 --k 200 --skip-previous"
timeout 240 $B --also-qblocks 4096,8192 --overlap --out "$O/knn-msmarco-qblocks-overlap.json" 2>&1 | tail -1
fi
mps_on() {
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/ance-mps-wave CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY" && nvidia-cuda-mps-control -d
}
mps_off() { echo quit | nvidia-cuda-mps-control; sleep 2; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY; }
if [ -z "${SKIP_REPRO:-}" ]; then
log "issue 29 reproduction"
mps_on
SKIP_WAVE=1 SKIP_SCIFACT=1 PICK=studies/results/equal-time-4.json DATA=/tmp/data/squad SCIFACT=/tmp/data/scifact \
    MODEL="$ANCE_DEVICE_MODEL" ROOT=/tmp/i29 OUT="$O/i29" bash studies/issue29_next.sh
mps_off
fi
if [ -z "${SKIP_REFRESH:-}" ]; then
  log "the broker's per-chunk host work on this CPU, before and now"
  timeout 120 python benchmarks/bench_broker_chunk.py --queries 500000 --docs 8800000 \
      --out "$O/broker-chunk-msmarco-device-cpu.json" 2>&1 | tail -2
  log "MS MARCO-shaped refresh, lean compiled encoder"
  KINDS="${REFRESH_KINDS:-lean-tanh on auto}" SKIP_QUICK=1 FULL=1 SKIP_BERT="${SKIP_BERT:-}" OUT_DIR="$O" \
      bash benchmarks/issue26_next.sh
fi
if [ -z "${SKIP_TRAIN:-}" ]; then
  log "trainer vs sentence-transformers, lean + compile"
  timeout 300 python benchmarks/bench_train.py --model "$ANCE_DEVICE_MODEL" --data /tmp/data/scifact --device cuda \
      --batch 64 --chunk 0 --precisions bf16 --repeats 2 --steps 30 --warmup 8 --lean --compiled \
      --out "$O/train-chunk0-lean-compiled-h200.json" 2>&1 | grep -v Warning | tail -3
fi
if [ -z "${SKIP_SCIFACT:-}" ]; then
  log "issue 29 SciFact scrutiny"
  mps_on
  mkdir -p "$O/i29/sf"
  DATA=/tmp/data/scifact ROOT=/tmp/i29/sf OUT="$O/i29/sf" PORT_BASE=5900 MODEL="$ANCE_DEVICE_MODEL" \
      bash studies/scifact_scrutiny.sh > "$O/i29/sf.log" 2>&1; echo "rc $?" >> "$O/i29/sf.log"
  mps_off
fi
if [ -z "${SKIP_WAVE5:-}" ]; then
  log "issue 29 fifth SQuAD sweep"
  mps_on
  mkdir -p "$O/i29/eq5"
  DATA=/tmp/data/squad MODEL="$ANCE_DEVICE_MODEL" ROOT=/tmp/i29/eq5 OUT="$O/i29/eq5" PORT_BASE=6100 \
      bash studies/equal_time_wave5.sh > "$O/i29/eq5.log" 2>&1; echo "rc $?" >> "$O/i29/eq5.log"
  mps_off
  log "fifth sweep: $(tail -1 "$O/i29/eq5.log")"
fi
log "job done"
