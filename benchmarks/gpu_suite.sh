#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md and docs/results.md, as run on the
# lent H100 (one call, everything side by side). Results go to $OUT (default
# $OUT from the device tool, else runs/gpu). Sections: PARTS="zeroshot encode train profile memory quality sweep refresh stref"
#   PACK=.device-model PARTS="zeroshot encode train memory quality" bash benchmarks/gpu_suite.sh
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/device_env.sh
OUT=${OUT:-runs/gpu}; mkdir -p "$OUT"
M=${ANCE_DEVICE_MODEL:-all-MiniLM-L6-v2}
PARTS=${PARTS:-"zeroshot encode train memory quality"}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
step() { echo "=== $1 $(date +%T)"; }
for part in $PARTS; do
  step "$part"
  case $part in
    zeroshot)
      ance retrieve --model "$M" --data "$DATA" --split dev --out "$OUT/zeroshot.trec" --max-length 256 \
          --device cuda --backend "${BACKEND:-auto}" --quiet 2>&1 | tail -2
      ance eval --run "$OUT/zeroshot.trec" --qrels "$DATA/qrels/dev.tsv" | tee "$OUT/zeroshot.json" ;;
    encode)
      timeout 300 python benchmarks/bench_encode.py --model "$M" --data "$DATA" --device cuda \
          --out "$OUT/bench_encode.json" 2>&1 | tail -15 ;;
    train)
      timeout 300 python benchmarks/bench_train.py --model "$M" --data "$DATA" --device cuda \
          --batch 64 --chunk 32 --out "$OUT/bench_train.json" 2>&1 | tail -12 ;;
    profile)
      timeout 200 python benchmarks/profile_train.py --model "$M" --data "$DATA" --device cuda \
          --batch 64 --chunks ${CHUNKS:-32,64} --out "$OUT/profile_train.json" 2>&1 | grep -v "^USDT" | tail -80 ;;
    memory)
      timeout 300 python benchmarks/bench_train.py --model "$M" --data "$DATA" --device cuda \
          --chunk 32 --memory-sweep 64,256,1024,4096 --out "$OUT/bench_memory.json" 2>&1 | tail -12 ;;
    quality)
      MODEL="$M" OUT="$OUT/${QNAME:-quality}" BACKEND=${BACKEND:-auto} timeout ${QUALITY_TIMEOUT:-420} \
          bash studies/quality.sh 2>&1 | grep -v "INFO\|it/s\|text/s" | tail -40
      for r in "$OUT"/${QNAME:-quality}/*/; do [ -d "$r/logs" ] && tail -3 "$r"/logs/*.log; done 2>/dev/null | tail -30
      python studies/summarize_runs.py "$OUT/${QNAME:-quality}" | tee "$OUT/${QNAME:-quality}-summary.json"
      # one archive of metrics, configs and logs; drop checkpoints, caches and runs (too many files to fetch)
      (cd "$OUT/${QNAME:-quality}" && tar -czf "../${QNAME:-quality}-runs.tgz" --exclude=checkpoints --exclude=cache --exclude='*.trec' .)
      rm -rf "$OUT/${QNAME:-quality}" ;;
    stref)   # the sentence-transformers reference recipe, evaluated like ance's runs (not yet run on the GPU)
      ance mine --model "$M" --data "$DATA" --split train --out "$OUT/st-static.tsv" --max-length 256 \
          --query-max-length 64 --depth 100 --rank-window 0 30 --n 30 --quiet
      for neg in none static; do
        timeout 300 python studies/st_reference.py --model "$M" --data "$DATA" --negatives $neg \
            --static-file "$OUT/st-static.tsv" --seed ${SEED:-13} --out "$OUT/stref-$neg" 2>&1 | tail -1
        rm -rf "$OUT/stref-$neg/model" "$OUT/stref-$neg/dev.trec"
      done ;;
    sweep)   # recipes side by side (studies/quality_sweep.sh); SWEEP lines NAME|METHODS|SEEDS|EXTRA|WINDOW
      ROOT="$OUT/sweep" BACKEND=${BACKEND:-auto} MODEL="$M" JOBS=${JOBS:-4} timeout ${SWEEP_TIMEOUT:-540} \
          bash studies/quality_sweep.sh 2>&1 | grep -v "INFO\|it/s\|text/s" | tail -40
      (cd "$OUT/sweep" && tar -czf ../sweep-runs.tgz --exclude=checkpoints --exclude=cache --exclude='*.trec' \
          --exclude='static-*.tsv' .)
      cp "$OUT/sweep/sweep.json" "$OUT/sweep.json" 2>/dev/null; rm -rf "$OUT/sweep" ;;
    refresh)
      timeout 420 bash benchmarks/refresh_suite.sh "$OUT" 2>&1 | tail -30 ;;
  esac
done
step done
