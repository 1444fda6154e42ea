#!/usr/bin/env bash
# Issue 29 in one detached job on one H200, under one MPS daemon started beforehand, one step after another
# (2026-12-05 ran the SciFact scrutiny beside the third sweep: about 50 CUDA processes under one daemon, and
# runs of both failed at random):
#  1. the fourth SQuAD sweep (studies/equal_time_wave4.sh: every rate known, no probe; sweep, then finals);
#     SKIP_WAVE=1: none, the pick and budgets read from PICK (default studies/results/equal-time-4.json, the
#     sweep of 2026-12-05) and the static negatives mined;
#  2. the shipped config's reproduction with the picked recipe's overrides (the exact `ance launch` a user
#     runs), seeds 13 and 14 side by side, evaluated by the launcher;
#  3. the SciFact GPU config's scrutiny (studies/scifact_scrutiny.sh, equal steps); SKIP_SCIFACT=1: not run.
# On the GPU machine, after `. scripts/device_env.sh; tar -C /tmp/data -xzf .devdata/squad.tgz` and
# `nvidia-cuda-mps-control -d` with CUDA_MPS_PIPE_DIRECTORY exported:
#   DATA=/tmp/data/squad SCIFACT=/tmp/data/scifact MODEL=$ANCE_DEVICE_MODEL ROOT=/tmp/i29 OUT=/tmp/job/out \
#     bash studies/issue29_next.sh
set -uo pipefail
cd "$(dirname "$0")/.."
R=${ROOT:-runs/issue29}; O=${OUT:-$R/out}; SCIFACT=${SCIFACT:-../shared/data/scifact}; GPUS=${GPU-0}
# CPU smoke: GPU= BACKEND=faiss MODEL=tiny-bert's path, T (seconds a recipe; 0.3 gives 4 steps), EXTRA_ALL,
# ST_EXTRA, EVAL_ARGS, MINE_ARGS, HOLD_N, SEEDS, MAX_PAR as studies/equal_time.sh takes them, STEPS (SciFact).
mkdir -p "$O/eq4" "$O/sf" "$O/repro"
log() { echo "=== $(date +%T) $*"; }

if [ -n "${SKIP_WAVE:-}" ]; then  # the sweep done before: its pick and budgets from PICK (an equal-time-N.json)
  PICK=${PICK:-studies/results/equal-time-4.json}
  python -c "import json,sys; d=json.load(open(sys.argv[1])); json.dump(d['pick'], open(sys.argv[2], 'w')); json.dump(d['budgets'], open(sys.argv[3], 'w'))" \
      "$PICK" "$O/eq4/pick.json" "$O/eq4/budgets.json" || exit 1
  mkdir -p "$R/eq4/final"
  [ -s "$R/eq4/final/static-0-30.tsv" ] || bash studies/mine_static.sh 0 30 "$R/eq4/final/static-0-30.tsv" 2>&1 | tail -1
  log "SQuAD pick from $PICK"
else
  log "SQuAD wave 4"
  ROOT="$R/eq4" OUT="$O/eq4" bash studies/equal_time_wave4.sh > "$O/eq4.log" 2>&1; echo "rc $?" >> "$O/eq4.log"
  log "SQuAD wave done: $(tail -1 "$O/eq4.log")"
fi

scifact_scrutiny() {
  log "SciFact scrutiny starts"
  DATA="$SCIFACT" ROOT="$R/sf" OUT="$O/sf" PORT_BASE=5900 bash studies/scifact_scrutiny.sh > "$O/sf.log" 2>&1
  echo "rc $?" >> "$O/sf.log"; log "SciFact scrutiny done"
}
pick=$(python -c "import json; print(json.load(open('$O/eq4/pick.json'))['best']['ance'])") || { scifact_scrutiny; exit 1; }
steps=$(python -c "import json; print(json.load(open('$O/eq4/budgets.json'))['$pick']['steps'])")
args=$(python -c "import json; print(json.load(open('$O/eq4/budgets.json'))['$pick']['args'])")
static="$R/squad-static-0-30.tsv"; cp "$R/eq4/final/static-0-30.tsv" "$static"
args=${args//@STATIC@/$static}
log "reproduction of $pick: $steps steps, $args"
echo "{\"pick\": \"$pick\", \"steps\": $steps, \"args\": \"$args\"}" > "$O/repro/pick.json"
for s in 13 14; do
  timeout 900 ance launch configs/squad-minilm-gpu.yaml ${EXTRA_ALL:-} $args train.max_steps="$steps" \
      eval.every="$steps" seed=$s model.name_or_path="$MODEL" data.path="$DATA" run_dir="$R/repro-$s" \
      broker.address=tcp://127.0.0.1:$((5680 + s)) ${GPUS:+--trainer-gpus $GPUS --inferencer-gpus $GPUS --mps auto} \
      --no-progress > "$O/repro/launch-$s.log" 2>&1 &
done
wait
for s in 13 14; do cp "$R/repro-$s/metrics.jsonl" "$O/repro/metrics-$s.jsonl" 2>/dev/null; done
log "reproduction done"
[ -n "${SKIP_SCIFACT:-}" ] || scifact_scrutiny
log "issue 29 job done"
