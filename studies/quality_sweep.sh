#!/usr/bin/env bash
# Several training recipes side by side on one GPU: every (setting, method, seed) is
# its own job, JOBS at a time, each async run with its own broker port. Each job is
# studies/quality.sh with one method and one seed, so it trains and evaluates
# exactly as docs/results.md describes. Results: ROOT/<setting>/*.dev.json and
# ROOT/sweep.json (`summarize_runs.py --sweep`).
#   SWEEP='n7|static async|13 14|negatives.n_per_query=7
#   lr5e-5|static async|13|train.lr=5e-5' ROOT=runs/sweep JOBS=4 bash studies/quality_sweep.sh
# A SWEEP line: NAME|METHODS|SEEDS|EXTRA overrides|WINDOW (ranks the hard negatives come from, static
# and async alike, default "0 30"; the static file of each window is mined once and shared). In EXTRA,
# @STATIC@ stands for that static file (e.g. negatives.mix_static=0.5 negatives.static_file=@STATIC@).
# CFG: the config every job starts from (default configs/scifact-minilm-gpu.yaml).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-runs/sweep}
JOBS=${JOBS:-4}
MODEL=${MODEL:-all-MiniLM-L6-v2}
DATA=${DATA:-../shared/data/scifact}
BACKEND=${BACKEND:-auto}
export MODEL DATA BACKEND
mkdir -p "$ROOT"
static_file() {  # static_file LO HI: the zero-shot model's negatives from ranks [LO, HI), mined once
  local f="$ROOT/static-$1-$2.tsv"
  [ -s "$f" ] || bash studies/mine_static.sh $1 $2 "$f" >&2
  echo "$f"
}
# every window's static file first, JOBS at a time, so no job waits behind another window's mining
declare -A mining=()
while IFS='|' read -r name methods seeds extra window; do
  [ -z "${name// }" ] && continue
  read -r LO HI <<< "${window:-"0 30"}"
  [[ " $methods " == *" static "* || "$extra" == *@STATIC@* ]] || continue
  [ -n "${mining[$LO-$HI]:-}" ] && continue
  mining[$LO-$HI]=1
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
  static_file $LO $HI >/dev/null &
done <<< "$SWEEP"
wait
port=5600
while IFS='|' read -r name methods seeds extra window; do
  [ -z "${name// }" ] && continue
  window=${window:-"0 30"}
  read -r LO HI <<< "$window"
  STATIC=""
  [[ " $methods " == *" static "* || "$extra" == *@STATIC@* ]] && STATIC=$(static_file $LO $HI)
  extra=${extra//@STATIC@/$STATIC}
  for m in $methods; do
    for s in $seeds; do
      while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
      port=$((port + 1))
      echo "=== $(date +%T) start $name $m seed $s"
      WINDOW="$window" STATIC="$STATIC" OUT="$ROOT/$name" METHODS=$m SEEDS=$s EXTRA="${BASE_OVERRIDES:-} $extra broker.address=tcp://127.0.0.1:$port" \
        timeout "${JOB_TIMEOUT:-540}" bash studies/quality.sh > "$ROOT/$name.$m-$s.log" 2>&1 &
    done
  done
done <<< "$SWEEP"
wait
echo "=== $(date +%T) all jobs done"
python studies/summarize_runs.py --sweep "$ROOT"
