#!/usr/bin/env bash
# Issue 26 on one GPU (docs/benchmarks.md, "Encoding at the hardware's limit"): what each part runs.
#   PARTS="paths train" bash benchmarks/speed_suite.sh          # in one call, then:
#   PARTS=msmarco DIR=/tmp/msm bash benchmarks/speed_suite.sh    # detached (scripts/detached.sh)
# paths:   bench_encode_paths.py: previous / half / compiled encode, MiniLM and BERT-base shapes,
#          SQuAD's real-length passages, SciFact cold (tokenization included)
# train:   bench_train.py: ance (and ance with compiled towers) vs sentence-transformers, bf16
# msmarco: bench_refresh.py --msmarco-shape with MiniLM, the compile setting the paths part found faster
# On the lent machine, with the model pack carried (../shared/device/README.md) and
# .devdata/{scifact,squad}.tgz; elsewhere set M (a model dir) and DATA / SQUAD (BEIR folders).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .device-model ] && [ -z "${M:-}" ]; then . scripts/device_env.sh; fi
OUT=${OUT:-runs/speed}; mkdir -p "$OUT"
M=${M:-$ANCE_DEVICE_MODEL}
DATA=${DATA:-../shared/data/scifact}
SQUAD=${SQUAD:-}
if [ -z "$SQUAD" ] && [ -f .devdata/squad.tgz ]; then
  mkdir -p /tmp/data && tar -C /tmp/data -xzf .devdata/squad.tgz && SQUAD=/tmp/data/squad
fi
SQUAD=${SQUAD:-../shared/data/squad}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1
step() { echo "=== $1 $(date +%T)"; }
for part in ${PARTS:-paths train}; do
  step "$part"
  case $part in
    paths)
      timeout ${PATHS_TIMEOUT:-330} python benchmarks/bench_encode_paths.py --tokenizer "$M" --docs ${DOCS:-102400} \
          --text "$SQUAD" --cold "$DATA" --out "$OUT/encode-paths.json" 2>&1 | grep -v "^ \|Warning\|warn(" | tail -14 ;;
    train)   # the plain comparison first; the compiled variant (minutes of compiling) in its own run
      timeout 150 python benchmarks/bench_train.py --model "$M" --data "$DATA" --device cuda \
          --batch 64 --chunk 32 --precisions bf16 --out "$OUT/bench_train.json" 2>&1 | tail -3
      timeout ${TRAIN_TIMEOUT:-200} python benchmarks/bench_train.py --model "$M" --data "$DATA" --device cuda \
          --batch 64 --chunk 32 --compiled --precisions bf16 --repeats 1 --out "$OUT/bench_train_compiled.json" \
          2>&1 | tail -3 ;;
    msmarco)
      compile=$(python - "$OUT/encode-paths.json" <<'EOF'
import json, sys
try:
    m = json.load(open(sys.argv[1]))["shapes"]["minilm"]
    print("on" if m["compile"]["docs_per_s"] > 1.05 * m["half"]["docs_per_s"] else "off")
except Exception:
    print("off")
EOF
)
      echo "inferencer.compile=$compile"
      timeout ${MSMARCO_TIMEOUT:-1500} python benchmarks/bench_refresh.py --msmarco-shape --model-config minilm \
          --tokenizer "$M" --device cuda --backend torch --batch-size 1024 --chunk-queries 4096 --workers 1 \
          --repeat 1 --timeout 900 --start-timeout 900 --set inferencer.compile=$compile \
          --work-dir /tmp/msm-work --out "$OUT/msmarco-shape-minilm-1gpu.json" 2>&1 | grep -v "^\[synthetic" | tail -40 ;;
  esac
done
step done
