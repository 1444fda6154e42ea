#!/usr/bin/env bash
# Issue 29, second sweep (2026-12-04): the levers the first one left untried, at the same 90 s budget on
# the same held-apart split. The first study's rates and sweep scores are taken as they are
# (KNOWN_RATES, SEED_SWEEP), so its recipes stay in the pick without running again. New: no gradient
# cache (the whole batch in one forward: train.chunk_size=null for ance, plain MNRL for
# sentence-transformers), batch 128 and 256, the bidirectional loss.
# On the GPU machine, after `. scripts/device_env.sh; tar -C /tmp/data -xzf .devdata/squad.tgz`:
#   DATA=/tmp/data/squad MODEL=$ANCE_DEVICE_MODEL ROOT=/tmp/eq2 OUT=/tmp/eq2/out bash studies/equal_time_wave2.sh
# MPS first, as the 2026-12-04 run did: export CUDA_MPS_PIPE_DIRECTORY=/tmp/ance-mps-wave
#   CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log; mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY; nvidia-cuda-mps-control -d
set -uo pipefail
cd "$(dirname "$0")/.."
export KNOWN_RATES=${KNOWN_RATES:-studies/results/equal-time-rates-h200.json}
export SEED_SWEEP=${SEED_SWEEP:-studies/results/equal-time-runs.tgz}
export EVAL_EVERY=${EVAL_EVERY:-200}
export ST_RECIPES="st64|--batch 64 --mini-batch 64 --lr 1e-4
st256|--batch 256 --mini-batch 64 --lr 2e-4
st64p|--batch 64 --mini-batch 0 --lr 1e-4
st128p|--batch 128 --mini-batch 0 --lr 1.5e-4"
export ANCE_RECIPES="a64|
a64r95|negatives.denoise_ratio=0.95
a64p|train.chunk_size=null
a128p|train.batch_size=128 train.chunk_size=null train.lr=1.5e-4
a256p|train.batch_size=256 train.chunk_size=null train.lr=2e-4
a128pb|train.batch_size=128 train.chunk_size=null train.lr=1.5e-4 train.loss=bidirectional"
exec bash studies/equal_time.sh
