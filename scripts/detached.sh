#!/usr/bin/env bash
# A study longer than one 10-minute call of the lent GPU machine: start it in its own process
# session, so it runs on between calls while the machine stays warm (a machine goes back after
# 30 s idle: make the next call at once), and follow it call after call.
#   start:  bash scripts/detached.sh start DIR CMD...   # runs CMD in a copy of the repo (DIR/src)
#   follow: bash scripts/detached.sh follow DIR SECONDS [ROOT]
#   skip:   bash scripts/detached.sh skip DIR PATTERN      # end the step whose command matches PATTERN
# follow prints the log's tail every minute until CMD ends or SECONDS pass, then packs into $OUT
# what is there so far: DIR/out/* (CMD's own results, write them there) and ROOT's metrics without
# checkpoints, caches or TREC runs (so a machine lost between calls loses only the rest).
# Exit 0 when CMD has ended (its exit status in DIR/rc), 3 while it still runs.
set -uo pipefail
what=$1 dir=$2; shift 2
case "$what" in
  start)
    mkdir -p "$dir/out"
    rm -rf "$dir/src" && mkdir -p "$dir/src"   # a copy: a tree re-sent by the next call cannot move under it
    tar --exclude=./.git --exclude=./.venv --exclude=./runs --exclude=./.big -cf - . | tar -C "$dir/src" -xf -
    (cd "$dir/src" && setsid bash -c '"$@"; echo $? > "'"$dir"'/rc"' _ "$@" > "$dir/log" 2>&1 < /dev/null &)
    echo "started in $dir (log $dir/log)";;
  follow)
    secs=$1 root=${2:-}
    end=$((SECONDS + secs))
    while [ ! -e "$dir/rc" ] && [ $SECONDS -lt $end ]; do
      sleep $(( end - SECONDS < 60 ? (end - SECONDS > 0 ? end - SECONDS : 1) : 60 ))
      echo "--- $(date +%T)"; tail -n 4 "$dir/log" | cut -c1-200
    done
    cp "$dir/log" "$OUT/detached.log" 2>/dev/null
    [ -n "$(ls -A "$dir/out" 2>/dev/null)" ] && tar -C "$dir/out" -czf "$OUT/out.tgz" .
    [ -n "$root" ] && [ -d "$root" ] && tar -C "$root" -czf "$OUT/partial.tgz" --exclude=checkpoints \
        --exclude=cache --exclude='*.trec' --exclude='static-*.tsv' --exclude=negatives . 2>/dev/null
    if [ -e "$dir/rc" ]; then echo "ended, rc $(cat "$dir/rc")"; exit 0; fi
    echo "still running"; exit 3;;
  skip)
    # end the job's step whose command line matches PATTERN (SIGTERM; the job goes on to its next step). Not
    # `pkill -f PATTERN` in the device call: the call's own shell holds PATTERN in its command line and dies.
    pattern=$1
    [ -d "$dir" ] || { echo "no job in $dir (a fresh machine?)" >&2; exit 2; }
    pids=$(pgrep -f -- "$pattern" | grep -vx -e $$ -e $PPID)
    [ -n "$pids" ] && { kill -TERM $pids 2>/dev/null; echo "stopped: $(echo $pids)"; } || echo "nothing matches $pattern";;
  *) echo "usage: detached.sh start DIR CMD... | follow DIR SECONDS [ROOT] | skip DIR PATTERN" >&2; exit 2;;
esac
