#!/usr/bin/env bash
# Issue 29, fourth sweep: the third's (2026-12-05, studies/results/equal-time-3-sweep.json) held-apart
# scores stand (PRIOR_PICK), its finals were lost with the machine. Its best ance lever was three negatives a
# question (a64pn3, 0.8121 held apart, 1,079 steps at its probed 13.3 steps/s); the temperature 0.033 was
# next (0.8101). Here: a64pn3 with each of the other levers that helped (temperature 0.033, static warm-up,
# a refresh every 50 steps), and the four third-sweep runs that failed under the overload (sentence-
# transformers' scale 30 / 50, temperature 0.02, rank window 0-50), at most MAX_PAR at once. Every rate is
# known (studies/results/equal-time-4-known-rates.json): a recipe with a64pn3's step shape takes its rate.
# Then the finals of the picks on dev, two seeds, seeds pooled.
# On the GPU machine, after `. scripts/device_env.sh; tar -C /tmp/data -xzf .devdata/squad.tgz`, under MPS:
#   DATA=/tmp/data/squad MODEL=$ANCE_DEVICE_MODEL ROOT=/tmp/eq4/runs OUT=/tmp/eq4/out bash studies/equal_time_wave4.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export KNOWN_RATES=${KNOWN_RATES:-studies/results/equal-time-4-known-rates.json}
export PRIOR_PICK=${PRIOR_PICK:-studies/results/equal-time-3-sweep.json} SEED_SWEEP=""
export EVAL_EVERY=${EVAL_EVERY:-200} MAX_PAR=${MAX_PAR:-8}
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
a64pe50ws|train.chunk_size=null train.checkpoint_every=50 negatives.warmup=static negatives.static_file=@STATIC@
a64pn3t3|train.chunk_size=null negatives.n_per_query=3 model.temperature=0.033
a64pn3ws|train.chunk_size=null negatives.n_per_query=3 negatives.warmup=static negatives.static_file=@STATIC@
a64pn3e50ws|train.chunk_size=null negatives.n_per_query=3 train.checkpoint_every=50 negatives.warmup=static negatives.static_file=@STATIC@"
exec bash studies/equal_time.sh
