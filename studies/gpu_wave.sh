#!/usr/bin/env bash
# One GPU, one detached call: the equal-time study (issue 29, studies/equal_time.sh) and, once its
# probes have had the GPU alone, the decoder study (issue 22, studies/squad_decoder.sh) beside it,
# every process under one CUDA MPS daemon. Results in OUT (budgets, picks, tables, comparisons, runs).
#   PACK=.device-model . scripts/device_env.sh; tar -C /tmp/data -xzf .devdata/squad.tgz
#   DATA=/tmp/data/squad MODEL=$ANCE_DEVICE_MODEL DEC=/tmp/keep/SmolLM2-135M-Instruct.Q4_1.gguf \
#     ROOT=/tmp/wave OUT=/tmp/wave-out bash studies/gpu_wave.sh
# Env: as equal_time.sh and squad_decoder.sh (DEC_STEPS and DEC_EXTRA are the decoder's STEPS and EXTRA_ALL); MPS (1).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-runs/wave}; OUT=${OUT:-$ROOT/out}; mkdir -p "$ROOT" "$OUT"
if [ "${MPS:-1}" = 1 ]; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/ance-mps-wave CUDA_MPS_LOG_DIRECTORY=$ROOT/mps-log
  mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY && nvidia-cuda-mps-control -d && echo "MPS daemon up"
  trap 'echo quit | nvidia-cuda-mps-control' EXIT
fi
ROOT="$ROOT/eq" OUT="$OUT" bash studies/equal_time.sh > "$OUT/equal-time.log" 2>&1 &
eq=$!
while [ ! -s "$OUT/budgets.json" ] && kill -0 $eq 2>/dev/null; do sleep 5; done
dec=""
if [ -n "${DEC:-}" ] && [ -s "$OUT/budgets.json" ]; then
  EXTRA_ALL="${DEC_EXTRA-${EXTRA_ALL:-}}" STATIC="$ROOT/eq/final/static-0-30.tsv" ROOT="$ROOT/dec" OUT="$OUT" STEPS=${DEC_STEPS:-600} \
    bash studies/squad_decoder.sh > "$OUT/decoder.log" 2>&1 &
  dec=$!
fi
wait $eq; echo "equal-time study: rc $?"
[ -n "$dec" ] && { wait $dec; echo "decoder study: rc $?"; }
tail -n 30 "$OUT/equal-time.log" "$OUT/decoder.log" 2>/dev/null | cut -c1-300
