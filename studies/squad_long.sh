#!/usr/bin/env bash
# The SQuAD study at a longer budget on ONE GPU (docs/results.md): runs side by side under one CUDA MPS
# daemon (kernels of all runs run side by side instead of time-sliced; `ance launch --mps` does the same
# for one run). The budget is set by a probe: JOBS static trainers for 60 steps side by side, then
# STEPS = their median steps/s x TRAIN_S, rounded down to 100 (at most MAX_STEPS), printed and saved.
# Layout as studies/squad_study.sh (ROOT/<setting>/<method>-<seed>), so plot_squad.py reads it.
#   . scripts/device_env.sh; tar -C /tmp/data -xzf .devdata/squad.tgz
#   DATA=/tmp/data/squad MODEL=$ANCE_DEVICE_MODEL OUT=$OUT SWEEP=... bash studies/squad_long.sh
# Env: SWEEP (quality_sweep.sh lines; default base static+async seeds 13 14, inbatch 13 14), JOBS (6),
# TRAIN_S (360), MAX_STEPS (4000), STEPS (skip the probe), JOB_TIMEOUT (480), MPS (1), KEEP_TREC (20), ROOT, OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
# configs/squad-minilm-gpu.yaml took issue 29's pick on 2026-12-05; the recipes here start from the one before it:
export BASE_OVERRIDES=${BASE_OVERRIDES-"negatives.n_per_query=1 train.checkpoint_every=100 negatives.warmup=inbatch"}
export CFG=configs/squad-minilm-gpu.yaml BACKEND=${BACKEND:-torch} JOB_TIMEOUT=${JOB_TIMEOUT:-480}
ROOT=${ROOT:-runs/squad-long}; OUT=${OUT:-runs/squad-long-out}; mkdir -p "$ROOT" "$OUT"
JOBS=${JOBS:-6}
if [ "${MPS:-1}" = 1 ]; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/ance-mps-study CUDA_MPS_LOG_DIRECTORY=$ROOT/mps-log
  mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY && nvidia-cuda-mps-control -d && echo "MPS daemon up"
  trap 'echo quit | nvidia-cuda-mps-control' EXIT
fi
STATIC="$ROOT/static-0-30.tsv"; mkdir -p "$ROOT"
[ -s "$STATIC" ] || MODEL=$MODEL DATA=$DATA bash studies/mine_static.sh 0 30 "$STATIC" 2>&1 | tail -1
common="model.name_or_path=$MODEL data.path=$DATA telemetry.tensorboard=false ${BASE_OVERRIDES:-}"
if [ -z "${STEPS:-}" ]; then
  t0=$SECONDS
  for i in $(seq $JOBS); do
    ance train $CFG $common run_dir=/tmp/probe-$$-$i negatives.source=static negatives.static_file=$STATIC \
        train.max_steps=60 train.checkpoint_every=1000 > /tmp/probe-$$-$i.log 2>&1 &
  done
  wait
  STEPS=$(python - "$JOBS" "${TRAIN_S:-360}" "${MAX_STEPS:-4000}" /tmp/probe-$$-* <<'PY'
import json, statistics, sys
jobs, train_s, cap, runs = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
rates = []
for r in runs:
    try:
        ev = [json.loads(x) for x in open(f"{r}/metrics.jsonl")]
    except OSError:
        continue
    s = [e["step_s"] for e in ev if e.get("event") == "step" and e["step"] > 20]
    if s:
        rates.append(1 / statistics.mean(s))
rate = statistics.median(rates) if rates else 1.0
print(max(100, min(cap, int(rate * train_s / 1.1) // 100 * 100)))
print(json.dumps({"probe_steps_per_s": rates, "jobs": jobs}), file=sys.stderr)
PY
)
  echo "probe: $((SECONDS - t0)) s; STEPS=$STEPS"
fi
echo "{\"steps\": $STEPS, \"jobs\": $JOBS, \"mps\": \"${MPS:-1}\"}" > "$OUT/budget.json"
S="train.max_steps=$STEPS ${EXTRA_ALL:-}"
SWEEP=${SWEEP:-"base|static async|13 14|$S
inbatch|inbatch|13 14|$S"}
SWEEP="${SWEEP//@S@/$S}" ROOT="$ROOT" JOBS=$JOBS MODEL="$MODEL" DATA="$DATA" \
    bash studies/quality_sweep.sh 2>&1 | grep -v "INFO\|it/s\|text/s" | tail -30
cp "$ROOT/sweep.json" "$OUT/" 2>/dev/null
COMPARE=${COMPARE:-"ance13-static13:base/async-13:base/static-13 ance14-static14:base/async-14:base/static-14
static13-inbatch13:base/static-13:inbatch/inbatch-13 static14-inbatch14:base/static-14:inbatch/inbatch-14"}
ROOT="$ROOT" DATA="$DATA" bash studies/compare_runs.sh $COMPARE > "$OUT/compare.jsonl"   # NAME:A:B, whitespace-separated
cut -c1-300 "$OUT/compare.jsonl"
# the dev TREC runs cut at rank KEEP_TREC (default 20: enough for nDCG@10 and MRR@10), one archive, so
# further comparisons (e.g. seeds pooled: `ance eval --compare A13,A14 B13,B14`) can run off the device
(cd "$ROOT" && for f in */*.dev.trec; do awk -v k="${KEEP_TREC:-20}" '$4 <= k' "$f" > "$f.top"; done
 tar -czf "$OUT/trec-top${KEEP_TREC:-20}.tgz" */*.dev.trec.top && rm -f */*.dev.trec.top)
(cd "$ROOT" && tar -czf "$OUT/squad-runs.tgz" --exclude=checkpoints --exclude=cache --exclude='*.trec' \
    --exclude='static-*.tsv' --exclude='negatives' .)
ls -la "$OUT"
