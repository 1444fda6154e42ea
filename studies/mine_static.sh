#!/usr/bin/env bash
# Static hard negatives for the quality runs: the non-positives among MODEL's ranks [LO, HI) of the
# training queries, all of them (quality.sh and quality_sweep.sh both mine with this).
#   MODEL=all-MiniLM-L6-v2 DATA=../shared/data/scifact bash studies/mine_static.sh 0 30 static.tsv
# MINE_ARGS: more `ance mine` options, e.g. "--max-docs 800 --max-queries 80" (the runs' data.* subset).
set -euo pipefail
LO=$1 HI=$2 OUTFILE=$3
ance mine --model "${MODEL:-all-MiniLM-L6-v2}" --data "${DATA:-../shared/data/scifact}" --split train \
    --eval-split "${EVAL_SPLIT:-dev}" \
    --out "$OUTFILE" --max-length 256 --query-max-length 64 --depth $(( HI > 100 ? HI : 100 )) \
    --rank-window "$LO" "$HI" --n $(( HI - LO )) --backend "${BACKEND:-auto}" --quiet ${MINE_ARGS:-}
