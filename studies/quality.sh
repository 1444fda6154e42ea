#!/usr/bin/env bash
# Quality of the three negative sources on SciFact (docs/results.md):
# zero-shot, in-batch only, static mined hard negatives, ANCE async negatives,
# each trained with configs/scifact-minilm-gpu.yaml and evaluated the same way
# (`ance retrieve` of the last checkpoint on dev, exact search, max length 256).
#   MODEL=all-MiniLM-L6-v2 DATA=../shared/data/scifact SEEDS="13 14" bash studies/quality.sh
# Env: MODEL, DATA, OUT (default runs/quality), SEEDS, METHODS (zeroshot inbatch static async),
# BACKEND (auto|faiss|torch), GPUS (trainer and inferencer GPU, default 0), WINDOW (ranks the hard
# negatives come from, static and async alike; default "0 30"), EXTRA (more overrides),
# STATIC (the static negatives file; mined into OUT when missing), CFG (default configs/scifact-minilm-gpu.yaml),
# EVAL_ARGS (more `ance retrieve` options for the evaluation, e.g. "--max-docs 800 --max-length 32" in the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-all-MiniLM-L6-v2}
DATA=${DATA:-../shared/data/scifact}
OUT=${OUT:-runs/quality}
SEEDS=${SEEDS:-"13 14"}
METHODS=${METHODS:-"zeroshot inbatch static async"}
BACKEND=${BACKEND:-auto}
GPU=${GPUS-0}   # empty: let ance launch place the processes (CPU here)
CFG=${CFG:-configs/scifact-minilm-gpu.yaml}
EXTRA=${EXTRA:-}
WINDOW=${WINDOW:-"0 30"}
read -r LO HI <<< "$WINDOW"
mkdir -p "$OUT"
common="model.name_or_path=$MODEL data.path=$DATA inferencer.backend=$BACKEND negatives.rank_window=[$LO,$HI] $EXTRA"

evaluate() {  # evaluate MODEL_DIR NAME
  ance retrieve --model "$1" --data "$DATA" --split dev --out "$OUT/$2.dev.trec" --max-length 256 \
      --query-max-length 64 --backend "$BACKEND" --quiet ${EVAL_ARGS:-}
  ance eval --run "$OUT/$2.dev.trec" --qrels "$DATA/qrels/dev.tsv" | tee "$OUT/$2.dev.json"
}
last_ckpt() { ls -d "$1"/checkpoints/step-* | sort | tail -1; }

STATIC=${STATIC:-$OUT/static-negatives.tsv}   # a file mined beforehand may be shared
if [[ " $METHODS " == *" static "* ]] && [ ! -s "$STATIC" ]; then
  t0=$EPOCHREALTIME
  MODEL="$MODEL" DATA="$DATA" BACKEND="$BACKEND" bash studies/mine_static.sh $LO $HI "$STATIC"
  echo "{\"mine_s\": $(python -c "print(round($EPOCHREALTIME - $t0, 1))")}" > "$OUT/mine.json"
fi
for m in $METHODS; do
  if [ "$m" = zeroshot ]; then evaluate "$MODEL" zeroshot; continue; fi
  for s in $SEEDS; do
    run="$OUT/$m-$s"; rm -rf "$run"
    t0=$EPOCHREALTIME
    case $m in
      inbatch) ance train $CFG $common seed=$s run_dir=$run negatives.source=inbatch ;;
      static)  ance train $CFG $common seed=$s run_dir=$run negatives.source=static negatives.static_file=$STATIC ;;
      async)   ance launch $CFG $common seed=$s run_dir=$run ${GPU:+--trainer-gpus $GPU --inferencer-gpus $GPU} --no-progress ;;
    esac
    echo "{\"train_wall_s\": $(python -c "print(round($EPOCHREALTIME - $t0, 1))")}" > "$run/wall.json"
    evaluate "$(last_ckpt "$run")" "$m-$s"
  done
done
python studies/summarize_runs.py --table "$OUT"
