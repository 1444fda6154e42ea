#!/usr/bin/env bash
# Issue 22: a decoder embedder on SQuAD, one GPU: SmolLM2-135M-Instruct with last-token pooling and an
# instruction on queries (configs/squad-smollm2-lora-gpu.yaml): ANCE vs static negatives with LoRA, two
# seeds each, plus one full fine-tuning run (ANCE), every run STEPS steps, evaluated on dev with
# `ance retrieve` + `ance eval` (studies/quality.sh) and every EVAL_EVERY steps in the loop; paired
# comparisons with seeds pooled. Static negatives: STATIC (mined by all-MiniLM-L6-v2: the zero-shot
# decoder is no retriever); ANCE starts from in-batch negatives and refreshes with its own model.
#   DATA=/tmp/data/squad DEC=/path/SmolLM2-135M-Instruct.Q4_1.gguf STATIC=static-0-30.tsv ROOT=/tmp/dec \
#     OUT=$OUT bash studies/squad_decoder.sh
# Env: STEPS (350), EVAL_EVERY (175), SEEDS ("13 14"), FULL ("train.lora.r=0 train.lr=5e-5 broker.send_weights=false"; empty: no full
# run; a full checkpoint is too large to ship: its inferencer reads it from the run dir), EXTRA_ALL (more overrides; CPU smoke: subsets), EVAL_ARGS, JOB_TIMEOUT (1500), BACKEND (torch), GPU (0),
# MINER (when STATIC is not there yet: mine it with this model, studies/mine_static.sh 0 30), MPS (1: every
# process under one CUDA MPS daemon of this script's own where a GPU and nvidia-cuda-mps-control are there and
# no daemon is named yet; 0: none).
set -uo pipefail
cd "$(dirname "$0")/.."
export DATA BACKEND=${BACKEND:-torch} CFG=${CFG:-configs/squad-smollm2-lora-gpu.yaml} GPUS=${GPU-0}
ROOT=${ROOT:-runs/squad-decoder}; OUT=${OUT:-$ROOT/out}; STEPS=${STEPS:-350}; EVAL_EVERY=${EVAL_EVERY:-175}
SEEDS=${SEEDS:-"13 14"}; FULL=${FULL-"train.lora.r=0 train.lr=5e-5 broker.send_weights=false"}
mkdir -p "$ROOT/lora" "$ROOT/full" "$OUT"
log() { echo "=== $(date +%T) $*"; }
if [ -n "${MINER:-}" ] && [ -n "${STATIC:-}" ] && [ ! -s "$STATIC" ]; then
  MODEL="$MINER" DATA="$DATA" BACKEND="$BACKEND" bash studies/mine_static.sh 0 30 "$STATIC" && log "static negatives mined by $MINER"
fi
if [ "${MPS:-1}" = 1 ] && [ -n "$GPUS" ] && [ -z "${CUDA_MPS_PIPE_DIRECTORY:-}" ] && command -v nvidia-cuda-mps-control > /dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/ance-mps-decoder-$$ CUDA_MPS_LOG_DIRECTORY=$ROOT/mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY" && nvidia-cuda-mps-control -d && log "MPS daemon up"
  trap 'echo quit | nvidia-cuda-mps-control' EXIT
fi
[ -s "${STATIC:-}" ] || { echo "squad_decoder: STATIC=${STATIC:-} is not a negatives file (make one with studies/mine_static.sh)"; exit 2; }
# convert a GGUF file once into an HF dir (ance's cache), which every run then loads
DEC=$(python -c "import sys; from ance.model.biencoder import resolve_model; print(resolve_model(sys.argv[1]))" "$DEC" \
    2> "$ROOT/convert.log") || { tail -3 "$ROOT/convert.log"; exit 1; }
log "model ready: $DEC"
common="model.name_or_path=$DEC telemetry.tensorboard=false train.max_steps=$STEPS eval.every=$EVAL_EVERY ${EXTRA_ALL:-}"
port=5800
job() {  # job DIR METHOD SEED [overrides] (call: port=$((port + 1)); job ... &)
  STATIC="$STATIC" OUT="$ROOT/$1" METHODS=$2 SEEDS=$3 MODEL="$DEC" \
    EXTRA="$common broker.address=tcp://127.0.0.1:$port ${4:-}" \
    timeout "${JOB_TIMEOUT:-1500}" bash studies/quality.sh > "$ROOT/$1/$2-$3.log" 2>&1
}
for s in $SEEDS; do
  port=$((port + 1)); job lora async "$s" &
  port=$((port + 1)); job lora static "$s" &
done
first=${SEEDS%% *}
port=$((port + 1)); [ -n "$FULL" ] && job full async "$first" "$FULL" &
wait
log "decoder runs done"
cmp=() a="" b=""
for s in $SEEDS; do
  a="$a${a:+,}lora/async-$s" b="$b${b:+,}lora/static-$s"; cmp+=("lora-async$s-static$s:lora/async-$s:lora/static-$s")
done
cmp+=("lora-async-static-pooled:$a:$b")
[ -n "$FULL" ] && cmp+=("full-lora-async$first:full/async-$first:lora/async-$first")
ROOT="$ROOT" DATA="$DATA" bash studies/compare_runs.sh "${cmp[@]}" > "$OUT/decoder-compare.jsonl"
cut -c1-400 "$OUT/decoder-compare.jsonl"
for f in "$ROOT"/*/*.dev.json; do echo "{\"$(basename "$(dirname "$f")")/$(basename "$f" .dev.json)\": $(cat "$f")}"; done \
    | tee "$OUT/decoder-runs.jsonl"
(cd "$ROOT" && tar -czf "$OUT/decoder-runs.tgz" --exclude=checkpoints --exclude=cache --exclude='*.trec' \
    --exclude='static-*.tsv' --exclude=negatives .)
log "decoder study done"
