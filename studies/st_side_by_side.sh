#!/usr/bin/env bash
# Issue 11 item 5: the sentence-transformers reference (CachedMultipleNegativesRankingLoss, one static
# hard negative a pair, lr 1e-4, every (query, positive) pair once a pass, 110 steps of 64, fp32) beside
# ance's static recipe, in one call on one GPU, two seeds each, every run evaluated the same way
# (`ance retrieve` + `ance eval` on SciFact dev) and compared with `ance eval --compare`.
# ance's variants isolate the differences: how positives are sampled (train.sample_by), precision
# (train.precision) and step count (100 = 10 passes over 648 queries; 110 = 10 passes over 734 pairs).
#   . scripts/device_env.sh; MODEL=$ANCE_DEVICE_MODEL DATA=$DATA ROOT=$OUT/side bash studies/st_side_by_side.sh
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-runs/st-side}; mkdir -p "$ROOT"
export MODEL=${MODEL:-all-MiniLM-L6-v2} DATA=${DATA:-../shared/data/scifact} BACKEND=${BACKEND:-torch}
STATIC="$ROOT/static-0-30.tsv"   # the name quality_sweep.sh uses: mined once, shared by every run
bash studies/mine_static.sh 0 30 "$STATIC"
for s in 13 14; do
  timeout "${JOB_TIMEOUT:-300}" python studies/st_reference.py --model "$MODEL" --data "$DATA" \
      --negatives static --static-file "$STATIC" --lr 1e-4 --seed $s --out "$ROOT/stref-$s" \
      > "$ROOT/stref-$s.log" 2>&1 &
done
SWEEP="query-auto-100|static|13 14|
pair-fp32-110|static|13 14|train.sample_by=pair train.precision=fp32 train.max_steps=110
pair-auto-110|static|13 14|train.sample_by=pair train.max_steps=110
query-fp32-100|static|13 14|train.precision=fp32" ROOT="$ROOT" JOBS=${JOBS:-8} \
    bash studies/quality_sweep.sh 2>&1 | grep -v "INFO\|it/s\|text/s" | tail -20
wait
for s in 13 14; do cat "$ROOT/stref-$s/result.json" 2>/dev/null || tail -3 "$ROOT/stref-$s.log"; echo; done
for s in 13 14; do
  for v in query-auto-100 pair-fp32-110 pair-auto-110 query-fp32-100; do
    a="$ROOT/stref-$s/dev.trec" b="$ROOT/$v/static-$s.dev.trec"
    [ -s "$a" ] && [ -s "$b" ] && echo "{\"stref-$s vs $v\": $(ance eval --compare "$a" "$b" --qrels "$DATA/qrels/dev.tsv")}"
  done
  a="$ROOT/pair-fp32-110/static-$s.dev.trec" b="$ROOT/query-auto-100/static-$s.dev.trec"
  [ -s "$a" ] && [ -s "$b" ] && echo "{\"pair-fp32-110 vs query-auto-100 seed $s\": $(ance eval --compare "$a" "$b" --qrels "$DATA/qrels/dev.tsv")}"
done | tee "$ROOT/compare.jsonl" | cut -c1-400
