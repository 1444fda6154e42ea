#!/usr/bin/env bash
# Issue 29: ance against sentence-transformers on SQuAD at EQUAL GPU TIME, on one GPU.
#  1. held-apart split: studies/holdout_split.py (2,000 training questions, fixed; never dev);
#     static negatives (MODEL's ranks [0, 30)) mined on it and on the full data;
#  2. probes, each recipe ALONE on the GPU: PROBE steps/s (ance: `ance train` static; ST:
#     st_reference.py --probe-steps) -> step budgets for T seconds of GPU time each
#     (studies/equal_time.py budget; async ance is charged ASYNC_SHARE of it for its refreshes);
#  3. sweep on the held-apart split, seed 13, all recipes side by side (their budgets are steps);
#  4. each system's best recipe on dev, seeds 13 and 14: ST, ance async and ance static (same steps
#     as async), ance with eval.every for the learning curves; paired comparisons, seeds pooled.
#   . scripts/device_env.sh; tar -C /tmp/data -xzf .devdata/squad.tgz
#   DATA=/tmp/data/squad MODEL=$ANCE_DEVICE_MODEL ROOT=/tmp/eq OUT=$OUT bash studies/equal_time.sh
# Env: T (GPU seconds per run, 90), ASYNC_SHARE (0.1), PROBE (40), HOLD_N (2000), SEEDS ("13 14"),
# ST_RECIPES / ANCE_RECIPES (lines NAME|args: st_reference.py options / ance overrides), EVAL_EVERY (100),
# EXTRA_ALL (ance overrides for every run), ST_EXTRA, EVAL_ARGS, MINE_ARGS (CPU smoke: subsets),
# REUSE_BUDGETS, JOB_TIMEOUT (900), BACKEND (torch), GPU (0; empty on CPU), PORT_BASE (5700: the brokers take the
# ports above it; two studies at once need bases apart). OUT/budgets.json appears once the probes are done.
# MAX_PAR (8): runs at once in the sweep and the finals (about 50 CUDA processes under one MPS daemon failed
# runs at random on 2026-12-05). PRIOR_PICK: an earlier study's pick.json on the same split and budgets: the
# recipes it scored join the pick without running again. Each result's dev.json is copied to OUT/scores/ as
# it lands, so a machine lost mid-study loses only the runs still going.
# A recipe's args may name @STATIC@: the static negatives file of the split it runs on (negatives.warmup=static).
# KNOWN_RATES: a rates.json of an earlier study on the same machine kind; recipes named there are not
# probed again. SEED_SWEEP: an earlier study's runs.tgz; its sweep results (sweep/NAME/*-13.dev.json)
# are taken as they are, so those recipes join the pick without running again (same split, same budgets).
set -uo pipefail
cd "$(dirname "$0")/.."
export MODEL DATA BACKEND=${BACKEND:-torch} JOB_TIMEOUT=${JOB_TIMEOUT:-900}
# configs/squad-minilm-gpu.yaml took issue 29's pick on 2026-12-05; the recipes here start from the one before it:
export BASE_OVERRIDES=${BASE_OVERRIDES-"negatives.n_per_query=1 train.checkpoint_every=100 negatives.warmup=inbatch"}
export CFG=${CFG:-configs/squad-minilm-gpu.yaml} GPUS=${GPU-0}
ROOT=${ROOT:-runs/equal-time}; OUT=${OUT:-$ROOT/out}; T=${T:-90}; PROBE=${PROBE:-40}
SEEDS=${SEEDS:-"13 14"}; EVAL_EVERY=${EVAL_EVERY:-100}
ST_RECIPES=${ST_RECIPES:-"st64|--batch 64 --mini-batch 64 --lr 1e-4
st256|--batch 256 --mini-batch 64 --lr 2e-4"}
ANCE_RECIPES=${ANCE_RECIPES:-"a64|
a64r95|negatives.denoise_ratio=0.95
a256|train.batch_size=256 train.lr=2e-4"}
mkdir -p "$ROOT/sweep" "$ROOT/final" "$ROOT/probe" "$OUT"
[ -n "${SEED_SWEEP:-}" ] && tar -C "$ROOT" -xzf "$SEED_SWEEP" --wildcards '*sweep/*/*-13.dev.json' && ls "$ROOT"/sweep/*/
known() {  # known NAME: prints the earlier study's rates.json entry for NAME, fails when there is none
  [ -n "${KNOWN_RATES:-}" ] && python -c "import json,sys; e=json.load(open(sys.argv[1])).get(sys.argv[2]); print(json.dumps(e)) if e else sys.exit(1)" "$KNOWN_RATES" "$1"
}
log() { echo "=== $(date +%T) $*"; }
common="model.name_or_path=$MODEL telemetry.tensorboard=false ${BASE_OVERRIDES:-} ${EXTRA_ALL:-}"

# 1. the held-apart split and the static negatives of both
HOLD="$ROOT/hold-data"
python studies/holdout_split.py "$DATA" "$HOLD" --n "${HOLD_N:-2000}" | tee "$OUT/holdout.txt"
[ -s "$ROOT/sweep/static-0-30.tsv" ] || DATA="$HOLD" bash studies/mine_static.sh 0 30 "$ROOT/sweep/static-0-30.tsv" 2>&1 | tail -1 &
[ -s "$ROOT/final/static-0-30.tsv" ] || bash studies/mine_static.sh 0 30 "$ROOT/final/static-0-30.tsv" 2>&1 | tail -1
wait
log "mined"

# 2. probes, one at a time (REUSE_BUDGETS=1 and OUT/budgets.json there: skipped, e.g. on a restart)
if [ -n "${REUSE_BUDGETS:-}" ] && [ -s "$OUT/budgets.json" ]; then log "budgets of $OUT/budgets.json"; else
echo "{" > "$ROOT/rates.json"; sep=""
while IFS='|' read -r name args; do
  [ -z "${name// }" ] && continue
  if e=$(known "$name"); then echo "$sep\"$name\": $e" >> "$ROOT/rates.json"; sep=","; log "known $name"; continue; fi
  timeout "$JOB_TIMEOUT" python studies/st_reference.py --model "$MODEL" --data "$DATA" --negatives static \
      --static-file "$ROOT/final/static-0-30.tsv" --precision bf16 --probe-steps "$PROBE" --out "$ROOT/probe/$name" \
      $args ${ST_EXTRA:-} > "$ROOT/probe/$name.log" 2>&1
  rate=$(tail -1 "$ROOT/probe/$name.log" | python -c "import json,sys; print(json.loads(sys.stdin.read())['steps_per_s'])") || rate=0
  echo "$sep\"$name\": {\"system\": \"st\", \"rate\": $rate, \"args\": \"$args\"}" >> "$ROOT/rates.json"; sep=","
  log "probe $name: $rate steps/s"
done <<< "$ST_RECIPES"
while IFS='|' read -r name args; do
  [ -z "${name// }" ] && continue
  if e=$(known "$name"); then echo "$sep\"$name\": $e" >> "$ROOT/rates.json"; sep=","; log "known $name"; continue; fi
  timeout "$JOB_TIMEOUT" ance train $CFG $common data.path=$DATA run_dir="$ROOT/probe/$name" negatives.source=static \
      negatives.static_file="$ROOT/final/static-0-30.tsv" train.max_steps=$((PROBE + 20)) train.checkpoint_every=100000 \
      eval.every=null ${GPUS:+train.device=cuda:$GPUS} ${args//@STATIC@/$ROOT/final/static-0-30.tsv} > "$ROOT/probe/$name.log" 2>&1
  rate=$(python studies/equal_time.py rate-ance "$ROOT/probe/$name") || rate=0
  echo "$sep\"$name\": {\"system\": \"ance\", \"rate\": $rate, \"args\": \"$args\"}" >> "$ROOT/rates.json"; sep=","
  log "probe $name: $rate steps/s"
done <<< "$ANCE_RECIPES"
echo "}" >> "$ROOT/rates.json"
python studies/equal_time.py budget "$ROOT/rates.json" "$T" --async-share "${ASYNC_SHARE:-0.1}" > "$OUT/budgets.json" \
    || { cat "$ROOT/rates.json"; exit 1; }
fi
cat "$OUT/budgets.json"

steps_of() { python -c "import json,sys; print(json.load(open('$OUT/budgets.json'))['$1']['steps'])"; }
args_of() { python -c "import json,sys; print(json.load(open('$OUT/budgets.json'))['$1']['args'])"; }
port=${PORT_BASE:-5700}
throttle() { while [ "$(jobs -rp | wc -l)" -ge "${MAX_PAR:-8}" ]; do wait -n; done; }
keep_score() { [ -s "$1" ] && mkdir -p "$OUT/scores" && cp "$1" "$OUT/scores/$(basename "$(dirname "$1")")-$(basename "$1")"; return 0; }
prior() { [ -n "${PRIOR_PICK:-}" ] && python studies/equal_time.py has "$PRIOR_PICK" "$1"; }
run_st() {  # run_st NAME SEED DATA STATIC DIR (a result already there is kept: restarts)
  [ -s "$5/st-$2.dev.json" ] && return 0
  local steps; steps=$(steps_of "$1")
  timeout "$JOB_TIMEOUT" python studies/st_reference.py --model "$MODEL" --data "$3" --negatives static \
      --static-file "$4" --precision bf16 --max-steps "$steps" --seed "$2" --out "$5/st-$2" $(args_of "$1") \
      ${ST_EXTRA:-} > "$5/st-$2.log" 2>&1
  cp "$5/st-$2/dev.trec" "$5/st-$2.dev.trec" 2>/dev/null
  tail -1 "$5/st-$2.log" | python -c "import json,sys; d=json.loads(sys.stdin.read()); print(json.dumps(d))" \
      > "$5/st-$2.dev.json" 2>/dev/null || rm -f "$5/st-$2.dev.json"
  keep_score "$5/st-$2.dev.json"
}
run_ance() {  # run_ance NAME METHOD SEED DATA STATIC DIR [more overrides] (call: port=$((port + 1)); run_ance ... &)
  [ -s "$6/$2-$3.dev.json" ] && return 0
  local steps args; steps=$(steps_of "$1"); args=$(args_of "$1")  # read before OUT is set for quality.sh
  args=${args//@STATIC@/$5}
  WINDOW="0 30" STATIC="$5" OUT="$6" METHODS=$2 SEEDS=$3 DATA="$4" \
    EXTRA="$common $args train.max_steps=$steps broker.address=tcp://127.0.0.1:$port ${7:-}" \
    timeout "$JOB_TIMEOUT" bash studies/quality.sh > "$6/$2-$3.log" 2>&1
  keep_score "$6/$2-$3.dev.json"
}

# 3. the sweep on the held-apart split, every recipe side by side
while IFS='|' read -r name args; do
  [ -z "${name// }" ] && continue
  prior "$name" && continue
  throttle; mkdir -p "$ROOT/sweep/$name"; run_st "$name" 13 "$HOLD" "$ROOT/sweep/static-0-30.tsv" "$ROOT/sweep/$name" &
done <<< "$ST_RECIPES"
while IFS='|' read -r name args; do
  [ -z "${name// }" ] && continue
  port=$((port + 1)); prior "$name" && continue
  throttle; mkdir -p "$ROOT/sweep/$name"; run_ance "$name" async 13 "$HOLD" "$ROOT/sweep/static-0-30.tsv" "$ROOT/sweep/$name" &
done <<< "$ANCE_RECIPES"
wait
python studies/equal_time.py pick "$ROOT/sweep" "$OUT/budgets.json" ${PRIOR_PICK:+--prior "$PRIOR_PICK"} | tee "$OUT/pick.json"
best() { python -c "import json; print(json.load(open('$OUT/pick.json'))['best'].get('$1', ''))"; }
BST=$(best st) BANCE=$(best ance)
log "sweep done: sentence-transformers $BST, ance $BANCE"
[ -n "$BST" ] && [ -n "$BANCE" ] || { echo "the sweep gave no pick"; exit 1; }

# 4. the chosen recipes on dev, two seeds each (static gets async's steps: the same recipe)
F="$ROOT/final"; S="$F/static-0-30.tsv"
for s in $SEEDS; do
  throttle; run_st "$BST" "$s" "$DATA" "$S" "$F" &
  port=$((port + 1)); throttle; run_ance "$BANCE" async "$s" "$DATA" "$S" "$F" "eval.every=$EVAL_EVERY" &
  port=$((port + 1)); throttle; run_ance "$BANCE" static "$s" "$DATA" "$S" "$F" "eval.every=$EVAL_EVERY" &
done
wait
log "final runs done"
cmp=()
a="" st="" stat=""
for s in $SEEDS; do
  a="$a${a:+,}async-$s" st="$st${st:+,}st-$s" stat="$stat${stat:+,}static-$s"
  cmp+=("async$s-st$s:async-$s:st-$s" "async$s-static$s:async-$s:static-$s")
done
cmp+=("ance-st-pooled:$a:$st" "ance-static-pooled:$a:$stat" "static-st-pooled:$stat:$st")
ROOT="$F" DATA="$DATA" bash studies/compare_runs.sh "${cmp[@]}" > "$OUT/compare.jsonl"
python studies/equal_time.py table "$F" "$OUT/budgets.json" "$OUT/pick.json" --compare "$OUT/compare.jsonl" \
    | tee "$OUT/table.md"
cp "$ROOT/rates.json" "$OUT/" 2>/dev/null  # none where REUSE_BUDGETS gave the budgets
(cd "$ROOT" && for f in final/*.dev.trec sweep/*/*.dev.trec; do awk '$4 <= 20' "$f" > "$f.top"; done
 tar -czf "$OUT/trec-top20.tgz" final/*.dev.trec.top sweep/*/*.dev.trec.top && rm -f final/*.top sweep/*/*.top)
(cd "$ROOT" && tar -czf "$OUT/runs.tgz" --exclude=checkpoints --exclude=cache --exclude='*.trec' \
    --exclude='static-*.tsv' --exclude=negatives --exclude=hold-data --exclude=model --exclude='*.safetensors' .)
log "equal-time study done"
