#!/usr/bin/env bash
# Issue 29, third sweep (prepared 2026-12-04, not yet run): the levers the second sweep left untried,
# around its picks (ance a64p, sentence-transformers st64p: no gradient cache, batch 64, lr 1e-4), at the
# same 90 s budget on the same held-apart split. The first two sweeps' rates and held-apart scores are
# reused (KNOWN_RATES, SEED_SWEEP): every earlier recipe stays in the pick without running again. A
# recipe whose step is the same shape as a probed one takes that probe's rate (loss temperature or
# scale, rank window, refresh interval: studies/results/equal-time-3-known-rates.json says which);
# more negatives per question change the step, so a64pn3 is probed. A refresh every 50 steps costs the
# inferencer twice the GPU time: check its wall clock alone (the reproduction call of docs/results.md)
# before calling its row equal time. If a64pw50 is picked, its static finals read the 0-30 mined file.
# a64pws / a64pe50ws (added 2026-12-05): the async run starts from the static mined negatives
# (negatives.warmup=static) instead of in-batch ones until its first refresh lands (~150 of 1,255 steps).
# On the GPU machine, after `. scripts/device_env.sh; tar -C /tmp/data -xzf .devdata/squad.tgz`, under MPS:
#   DATA=/tmp/data/squad MODEL=$ANCE_DEVICE_MODEL ROOT=/tmp/eq3/runs OUT=/tmp/eq3/out bash studies/equal_time_wave3.sh
# MPS first, as the 2026-12-04 run did: export CUDA_MPS_PIPE_DIRECTORY=/tmp/ance-mps-wave
#   CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log; mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY; nvidia-cuda-mps-control -d
set -uo pipefail
cd "$(dirname "$0")/.."
export KNOWN_RATES=${KNOWN_RATES:-studies/results/equal-time-3-known-rates.json}
export SEED_SWEEP=${SEED_SWEEP:-studies/results/equal-time-2-runs.tgz}
export EVAL_EVERY=${EVAL_EVERY:-200}
export ST_RECIPES="st64|--batch 64 --mini-batch 64 --lr 1e-4
st256|--batch 256 --mini-batch 64 --lr 2e-4
st64p|--batch 64 --mini-batch 0 --lr 1e-4
st128p|--batch 128 --mini-batch 0 --lr 1.5e-4
st64ps30|--batch 64 --mini-batch 0 --lr 1e-4 --scale 30
st64ps50|--batch 64 --mini-batch 0 --lr 1e-4 --scale 50"
export ANCE_RECIPES="a64|
a64r95|negatives.denoise_ratio=0.95
a64p|train.chunk_size=null
a128p|train.batch_size=128 train.chunk_size=null train.lr=1.5e-4
a256p|train.batch_size=256 train.chunk_size=null train.lr=2e-4
a128pb|train.batch_size=128 train.chunk_size=null train.lr=1.5e-4 train.loss=bidirectional
a64pt3|train.chunk_size=null model.temperature=0.033
a64pt2|train.chunk_size=null model.temperature=0.02
a64pw50|train.chunk_size=null negatives.rank_window=[0,50] negatives.keep=50
a64pe50|train.chunk_size=null train.checkpoint_every=50
a64pn3|train.chunk_size=null negatives.n_per_query=3
a64pws|train.chunk_size=null negatives.warmup=static negatives.static_file=@STATIC@
a64pe50ws|train.chunk_size=null train.checkpoint_every=50 negatives.warmup=static negatives.static_file=@STATIC@"
exec bash studies/equal_time.sh
