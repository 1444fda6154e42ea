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
. studies/squad_recipes.sh
exec bash studies/equal_time.sh
