#!/usr/bin/env bash
# Issue 29 in one detached job on one H200 (2026-12-05), under one MPS daemon started beforehand:
#  1. the third SQuAD sweep (studies/equal_time_wave3.sh: its probe alone, then the sweep and the finals);
#  2. once that sweep's probe is done (OUT/eq3/budgets.json), the SciFact GPU config's scrutiny beside it
#     (studies/scifact_scrutiny.sh, equal steps, its own ports);
#  3. once the SQuAD finals are done, the shipped config's reproduction with the picked recipe's overrides
#     (the exact `ance launch` a user runs), seeds 13 and 14 side by side, evaluated by the launcher.
# On the GPU machine, after `. scripts/device_env.sh; tar -C /tmp/data -xzf .devdata/squad.tgz` and
# `nvidia-cuda-mps-control -d` with CUDA_MPS_PIPE_DIRECTORY exported:
#   DATA=/tmp/data/squad SCIFACT=/tmp/data/scifact MODEL=$ANCE_DEVICE_MODEL ROOT=/tmp/i29 OUT=/tmp/job/out \
#     bash studies/issue29_next.sh
set -uo pipefail
cd "$(dirname "$0")/.."
R=${ROOT:-runs/issue29}; O=${OUT:-$R/out}; SCIFACT=${SCIFACT:-../shared/data/scifact}
mkdir -p "$O/eq3" "$O/sf" "$O/repro"
log() { echo "=== $(date +%T) $*"; }

(ROOT="$R/eq3" OUT="$O/eq3" bash studies/equal_time_wave3.sh > "$O/eq3.log" 2>&1; echo "rc $?" >> "$O/eq3.log") &
wave=$!
(while [ ! -s "$O/eq3/budgets.json" ] && kill -0 "$wave" 2>/dev/null; do sleep 5; done
 log "SciFact scrutiny starts"
 DATA="$SCIFACT" ROOT="$R/sf" OUT="$O/sf" PORT_BASE=5900 bash studies/scifact_scrutiny.sh > "$O/sf.log" 2>&1
 echo "rc $?" >> "$O/sf.log"; log "SciFact scrutiny done") &
sf=$!
wait "$wave"; log "SQuAD wave done: $(tail -1 "$O/eq3.log")"

pick=$(python -c "import json; print(json.load(open('$O/eq3/pick.json'))['best']['ance'])") || { wait "$sf"; exit 1; }
steps=$(python -c "import json; print(json.load(open('$O/eq3/budgets.json'))['$pick']['steps'])")
args=$(python -c "import json; print(json.load(open('$O/eq3/budgets.json'))['$pick']['args'])")
static="$R/squad-static-0-30.tsv"; cp "$R/eq3/final/static-0-30.tsv" "$static"
args=${args//@STATIC@/$static}
log "reproduction of $pick: $steps steps, $args"
echo "{\"pick\": \"$pick\", \"steps\": $steps, \"args\": \"$args\"}" > "$O/repro/pick.json"
for s in 13 14; do
  timeout 900 ance launch configs/squad-minilm-gpu.yaml $args train.max_steps="$steps" eval.every="$steps" seed=$s \
      model.name_or_path="$MODEL" data.path="$DATA" run_dir="$R/repro-$s" broker.address=tcp://127.0.0.1:$((5680 + s)) \
      --trainer-gpus 0 --inferencer-gpus 0 --mps auto --no-progress > "$O/repro/launch-$s.log" 2>&1 &
done
wait
for s in 13 14; do cp "$R/repro-$s/metrics.jsonl" "$O/repro/metrics-$s.jsonl" 2>/dev/null; done
log "issue 29 job done"
