#!/usr/bin/env bash
# Several training recipes side by side on one GPU: every (setting, method, seed) is
# its own job, JOBS at a time, each async run with its own broker port. Each job is
# benchmarks/quality.sh with one method and one seed, so it trains and evaluates
# exactly as docs/results.md describes. Results: ROOT/<setting>/*.dev.json and
# ROOT/sweep.json (summarize_runs.py per setting).
#   SWEEP='n7|static async|13 14|negatives.n_per_query=7
#   lr5e-5|static async|13|train.lr=5e-5' ROOT=runs/sweep JOBS=4 bash benchmarks/quality_sweep.sh
# A SWEEP line: NAME|METHODS|SEEDS|EXTRA overrides|WINDOW (ranks the hard negatives come from, static
# and async alike, default "0 30"; the static file of each window is mined once and shared).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-runs/sweep}
JOBS=${JOBS:-4}
MODEL=${MODEL:-all-MiniLM-L6-v2}
DATA=${DATA:-../shared/data/scifact}
BACKEND=${BACKEND:-auto}
mkdir -p "$ROOT"
static_file() {  # static_file LO HI: the zero-shot model's negatives from ranks [LO, HI), mined once
  local f="$ROOT/static-$1-$2.tsv" depth=$(( $2 > 100 ? $2 : 100 ))
  [ -s "$f" ] || ance mine --model "$MODEL" --data "$DATA" --split train --out "$f" --max-length 256 \
      --query-max-length 64 --depth $depth --rank-window $1 $2 --n $(($2 - $1)) --backend "$BACKEND" --quiet >&2
  echo "$f"
}
port=5600
while IFS='|' read -r name methods seeds extra window; do
  [ -z "${name// }" ] && continue
  window=${window:-"0 30"}
  read -r LO HI <<< "$window"
  STATIC=""
  [[ " $methods " == *" static "* ]] && STATIC=$(static_file $LO $HI)
  for m in $methods; do
    for s in $seeds; do
      while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
      port=$((port + 1))
      echo "=== $(date +%T) start $name $m seed $s"
      MODEL="$MODEL" DATA="$DATA" BACKEND="$BACKEND" WINDOW="$window" STATIC="$STATIC" \
        OUT="$ROOT/$name" METHODS=$m SEEDS=$s EXTRA="$extra broker.address=tcp://127.0.0.1:$port" \
        timeout "${JOB_TIMEOUT:-540}" bash benchmarks/quality.sh > "$ROOT/$name.$m-$s.log" 2>&1 &
    done
  done
done <<< "$SWEEP"
wait
echo "=== $(date +%T) all jobs done"
python - "$ROOT" <<'PY'
import json, statistics, subprocess, sys, pathlib
root = pathlib.Path(sys.argv[1])
summary = {}
for setting in sorted(p for p in root.iterdir() if p.is_dir()):
    out = subprocess.run([sys.executable, "benchmarks/summarize_runs.py", str(setting)],
                         capture_output=True, text=True).stdout
    try:
        summary[setting.name] = json.loads(out)
    except json.JSONDecodeError:
        summary[setting.name] = {"error": out[-500:]}
    by_method = {}
    for run, entry in summary[setting.name].items():
        if isinstance(entry, dict) and "dev" in entry:
            by_method.setdefault(run.split("-")[0], []).append((run, entry["dev"]["ndcg@10"]))
    for method, vals in sorted(by_method.items()):
        xs = [v for _, v in vals]
        print(f"{setting.name:14s} {method:8s} " + "  ".join(f"{n}={v:.4f}" for n, v in vals)
              + f"  mean={statistics.mean(xs):.4f}")
(root / "sweep.json").write_text(json.dumps(summary, indent=1))
PY
