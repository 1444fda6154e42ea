#!/usr/bin/env bash
# The SQuAD follow-up of docs/results.md: fewer recipes than squad_study.sh, so each of them gets
# more of the one GPU and trains longer (STEPS, default 1000): static and ANCE with a checkpoint
# every 25 steps (the best interval of the study), plain and with half of the negatives from the
# static file (negatives.mix_static=0.5), two seeds each, six runs side by side; then
# `ance eval --compare` of each ANCE recipe against static, seed by seed.
#   . scripts/device_env.sh; tar -C /tmp/data -xzf .devdata/squad.tgz
#   DATA=/tmp/data/squad MODEL=$ANCE_DEVICE_MODEL OUT=$OUT bash studies/squad_followup.sh
set -uo pipefail
cd "$(dirname "$0")/.."
# configs/squad-minilm-gpu.yaml took issue 29's pick on 2026-12-05; the recipes here start from the one before it:
export BASE_OVERRIDES=${BASE_OVERRIDES-"negatives.n_per_query=1 train.checkpoint_every=100 negatives.warmup=inbatch"}
export CFG=configs/squad-minilm-gpu.yaml BACKEND=${BACKEND:-torch} JOB_TIMEOUT=${JOB_TIMEOUT:-480}
ROOT=${ROOT:-runs/squad-followup}; OUT=${OUT:-runs/squad-followup-out}; mkdir -p "$ROOT" "$OUT"
S="train.max_steps=${STEPS:-1000} train.checkpoint_every=25 negatives.max_gap=100"
SWEEP="base|static async|13 14|$S
mix|async|13 14|$S negatives.mix_static=0.5 negatives.static_file=@STATIC@"
SWEEP="$SWEEP" ROOT="$ROOT" JOBS=${JOBS:-6} MODEL="$MODEL" DATA="$DATA" \
    bash studies/quality_sweep.sh 2>&1 | grep -v "INFO\|it/s\|text/s" | tail -20
cp "$ROOT/sweep.json" "$OUT/" 2>/dev/null
for s in 13 14; do
  for r in base/async mix/async; do
    a="$ROOT/$r-$s.dev.trec" b="$ROOT/base/static-$s.dev.trec"
    [ -s "$a" ] && [ -s "$b" ] && echo "{\"${r%/*}-$s vs static-$s\": $(ance eval --compare "$a" "$b" \
        --qrels "$DATA/qrels/dev.tsv" --measures ndcg@10 mrr@10 recall@100)}" &
  done
done > "$OUT/compare.jsonl"
wait
cut -c1-400 "$OUT/compare.jsonl"
(cd "$ROOT" && tar -czf "$OUT/squad-followup-runs.tgz" --exclude=checkpoints --exclude=cache --exclude='*.trec' \
    --exclude='static-*.tsv' --exclude='negatives' .)
