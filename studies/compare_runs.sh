#!/usr/bin/env bash
# Paired comparisons of a study's dev TREC runs, one JSON line each, in the order given (they run side by side).
#   ROOT=runs/squad DATA=../shared/data/squad bash studies/compare_runs.sh NAME:A:B ...
# A and B are ROOT-relative runs without .dev.trec (base/async-13), or several joined by commas
# (base/async-13,base/async-14: seeds pooled per query, `ance eval --compare A1,A2 B1,B2`).
# A run that is missing gives {"NAME": "missing A or B"} instead of a comparison.
set -uo pipefail
runs() {  # runs A,B,...: comma-separated TREC files, or fail when one is missing
  local out="" r
  for r in ${1//,/ }; do [ -s "$ROOT/$r.dev.trec" ] || return 1; out="$out${out:+,}$ROOT/$r.dev.trec"; done
  echo "$out"
}
compare() {  # compare NAME A B -> ROOT/cmp-NAME.json
  local a b
  if a=$(runs "$2") && b=$(runs "$3"); then
    echo "{\"$1\": $(ance eval --compare "$a" "$b" --qrels "$DATA/qrels/dev.tsv")}"
  else
    echo "{\"$1\": \"missing $2 or $3\"}"
  fi > "$ROOT/cmp-$1.json"
}
names=()
for pair in "$@"; do
  IFS=: read -r name a b <<< "$pair"
  names+=("$name"); compare "$name" "$a" "$b" &
done
wait
for name in "${names[@]}"; do cat "$ROOT/cmp-$name.json"; done
