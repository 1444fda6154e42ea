#!/usr/bin/env bash
# A Slurm cluster on this machine, each node a Linux network namespace (root; idempotent).
#
#   scripts/slurm-testbed.sh up        install slurm-wlm + munge if missing, start munged, slurmctld, one slurmd per node
#   scripts/slurm-testbed.sh status    namespaces, daemons, `sinfo`, `squeue`
#   scripts/slurm-testbed.sh down      cancel jobs, stop every daemon by PID, remove namespaces, bridge, state
#   scripts/slurm-testbed.sh exec CMD  run a Slurm client command (sbatch, squeue, scancel...) against the testbed
#   scripts/slurm-testbed.sh link NODE up|down   cut or restore a node's cable (fault injection)
#   scripts/slurm-testbed.sh local NODE CMD...    run CMD in NODE's mount namespace (sees its local disk)
#
# Network: a bridge (ance-sbr0) with NO address on the host; namespaces ance-ctl (slurmctld, 198.18.0.1)
# and ance-n1..N (198.18.0.11...) each on a veth pair, addresses from 198.18.0.0/15 (the range set aside
# for network test beds) and no default route: the nodes reach each other and nothing else.
# Each node also gets its own hostname (UTS namespace) and /etc/hosts (/etc/netns/<ns>/hosts, which
# `ip netns exec` mounts over /etc/hosts), so node names resolve to testbed addresses only.
# Files: the nodes share this machine's file system (shared run dirs), except $ANCE_SLURM_LOCAL
# (/var/tmp/ance-slurm-local), a tmpfs of each node's own (runs without a shared file system);
# state under $ANCE_SLURM_DIR.
# Slurm and munge are private to the testbed: own munge key and socket, own slurm.conf (SLURM_CONF),
# no system service started (policy-rc.d during apt-get install).
set -euo pipefail

DIR=${ANCE_SLURM_DIR:-/var/lib/ance-slurm-testbed}
N=${ANCE_SLURM_NODES:-3}
NET=198.18.0
BR=ance-sbr0
# every node's own disk (a tmpfs in its mount namespace, seen by its slurmd and jobs only): runs without a
# shared file system put run_dir here
LOCAL=${ANCE_SLURM_LOCAL:-/var/tmp/ance-slurm-local}
NODES=(); for i in $(seq 1 "$N"); do NODES+=("ance-n$i"); done
export SLURM_CONF=$DIR/slurm.conf

say() { echo "slurm-testbed: $*" >&2; }
addr_of() { [ "$1" = ance-ctl ] && echo "$NET.1" || echo "$NET.$((10 + ${1#ance-n}))"; }
veth_of() { [ "$1" = ance-ctl ] && echo ance-vctl || echo "ance-v${1#ance-}"; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
# A node's daemon: its network namespace only (nsenter; `ip netns exec` would also remount /sys, hiding the
# cgroup mounts slurmd needs), plus a private mount namespace with the node's /etc/hosts and a UTS
# namespace with its hostname.
in_node() {
  local ns=$1; shift
  nsenter --net="/run/netns/$ns" unshare --mount --uts sh -c \
    'ns=$1; shift; mount --bind /etc/netns/$ns/hosts /etc/hosts &&
     { [ ! -e /etc/resolv.conf ] || mount --bind /etc/netns/$ns/resolv.conf /etc/resolv.conf; } &&
     if [ -n "${ANCE_NODE_LOCAL:-}" ]; then mkdir -p "$ANCE_NODE_LOCAL" && mount -t tmpfs -o size=2g,mode=755 tmpfs "$ANCE_NODE_LOCAL"; fi &&
     hostname "$ns" && exec "$@"' sh "$ns" "$@"
}

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then return; fi
  say "installing slurm-wlm and munge (Debian packages)"
  local had_policy=0 policy=/usr/sbin/policy-rc.d saved
  if [ -e $policy ]; then had_policy=1; saved=$(mktemp); cp -p $policy "$saved"; fi
  printf '#!/bin/sh\nexit 101\n' > $policy; chmod 755 $policy   # install only: start no system service
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm munge || { rc=$?; }
  if [ $had_policy = 1 ]; then cp -p "$saved" $policy; rm -f "$saved"; else rm -f $policy; fi
  return ${rc:-0}
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
pid_in() { [ -f "$1" ] && cat "$1" || true; }

stop_pid() {  # stop_pid PID NAME: SIGTERM, up to 10 s, SIGKILL
  local pid=$1 name=$2
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do alive "$pid" || { say "stopped $name (pid $pid)"; return 0; }; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
  say "killed $name (pid $pid)"
}

write_conf() {
  local cpus; cpus=$(nproc)
  mkdir -p "$DIR"/{ctld,spool,run,log,munge}
  {
    cat <<EOF
# written by scripts/slurm-testbed.sh: a private test cluster (network namespaces on one machine)
ClusterName=ancetb
SlurmctldHost=ance-ctl($NET.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
MinJobAge=60
EOF
    for n in "${NODES[@]}"; do
      echo "NodeName=$n NodeAddr=$(addr_of "$n") CPUs=$cpus RealMemory=1 State=UNKNOWN"
    done
    echo "PartitionName=tb Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4"
  } > "$DIR/slurm.conf.new"
  mv "$DIR/slurm.conf.new" "$DIR/slurm.conf"
}

net_up() {
  if ! ip link show $BR >/dev/null 2>&1; then
    ip link add $BR type bridge
  fi
  ip link set $BR up            # no address on the host side: the host is not on this network
  if [ "$(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo 0)" = 1 ] && command -v iptables >/dev/null \
     && ! iptables -C FORWARD -i $BR -o $BR -j ACCEPT 2>/dev/null; then
    # br_netfilter (e.g. Docker's) would pass bridged frames through FORWARD (policy DROP): allow this bridge only
    iptables -I FORWARD -i $BR -o $BR -j ACCEPT
    touch "$DIR/run/iptables-rule"
  fi
  local all=(ance-ctl "${NODES[@]}") hosts
  hosts=$(printf '127.0.0.1 localhost\n'; for n in "${all[@]}"; do echo "$(addr_of "$n") $n"; done)
  for ns in "${all[@]}"; do
    local v; v=$(veth_of "$ns")
    ip netns list | grep -qw "^$ns" || ip netns add "$ns"
    mkdir -p "/etc/netns/$ns"
    echo "$hosts" > "/etc/netns/$ns/hosts"
    echo "# slurm-testbed: no name server (nothing leaves the machine)" > "/etc/netns/$ns/resolv.conf"
    if ! ip link show "$v" >/dev/null 2>&1; then
      ip link add "$v" type veth peer name tb0 netns "$ns"
      ip link set "$v" master $BR
    fi
    ip link set "$v" up
    in_ns "$ns" ip link set lo up
    in_ns "$ns" ip link set tb0 up
    in_ns "$ns" ip addr replace "$(addr_of "$ns")/24" dev tb0
  done
}

start_daemons() {
  local mpid; mpid=$(pid_in "$DIR/run/munged.pid")
  if ! alive "$mpid"; then
    [ -f "$DIR/munge/munge.key" ] || mungekey --create --keyfile="$DIR/munge/munge.key" >/dev/null
    chmod 700 "$DIR/munge"; chmod 600 "$DIR/munge/munge.key"
    munged --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
      --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/seed"
    say "munged started (pid $(pid_in "$DIR/run/munged.pid"))"
  fi
  if ! alive "$(pid_in "$DIR/run/slurmctld.pid")"; then
    in_node ance-ctl slurmctld -f "$SLURM_CONF"
    wait_pid "$DIR/run/slurmctld.pid" slurmctld
  fi
  for n in "${NODES[@]}"; do
    if ! alive "$(pid_in "$DIR/run/slurmd-$n.pid")"; then
      mkdir -p "$DIR/spool/$n"
      ANCE_NODE_LOCAL=$LOCAL in_node "$n" slurmd -f "$SLURM_CONF" -N "$n"
      wait_pid "$DIR/run/slurmd-$n.pid" "slurmd $n"
    fi
  done
  for _ in $(seq 1 60); do
    if [ "$(in_ns ance-ctl sinfo -h -o '%t' -N 2>/dev/null | grep -c idle)" = "$N" ]; then
      say "up: $N nodes idle"; return 0
    fi
    sleep 1
  done
  say "nodes not idle after 60 s:"; in_ns ance-ctl sinfo -N || true; return 1
}

wait_pid() {
  for _ in $(seq 1 50); do alive "$(pid_in "$1")" && { say "$2 started (pid $(pid_in "$1"))"; return 0; }; sleep 0.2; done
  say "$2 did not start; see $DIR/log/"; return 1
}

down() {
  if [ -f "$SLURM_CONF" ] && alive "$(pid_in "$DIR/run/slurmctld.pid")"; then
    in_ns ance-ctl scancel --full --quiet --partition tb 2>/dev/null || true
    for _ in $(seq 1 30); do [ -z "$(in_ns ance-ctl squeue -h 2>/dev/null)" ] && break; sleep 1; done
  fi
  for n in "${NODES[@]}"; do stop_pid "$(pid_in "$DIR/run/slurmd-$n.pid")" "slurmd $n"; done
  stop_pid "$(pid_in "$DIR/run/slurmctld.pid")" slurmctld
  # whatever a job left in a node (its processes live in that namespace): ended one by one, by PID
  for ns in ance-ctl "${NODES[@]}"; do
    if ip netns list | grep -qw "^$ns"; then
      for pid in $(ip netns pids "$ns" 2>/dev/null); do stop_pid "$pid" "leftover in $ns ($(tr '\0' ' ' < /proc/$pid/cmdline 2>/dev/null | cut -c1-60))"; done
      ip netns del "$ns"
    fi
    ip link del "$(veth_of "$ns")" 2>/dev/null || true
    rm -rf "/etc/netns/$ns"
  done
  stop_pid "$(pid_in "$DIR/run/munged.pid")" munged
  if [ -f "$DIR/run/iptables-rule" ]; then iptables -D FORWARD -i $BR -o $BR -j ACCEPT 2>/dev/null || true; fi
  ip link del $BR 2>/dev/null || true
  rmdir /etc/netns "$LOCAL" 2>/dev/null || true   # only when empty (made by `up`, or nobody else uses it)
  rm -rf "$DIR"
  say "down: no namespace, daemon or Slurm state left"
}

status() {
  echo "namespaces: $(ip netns list | awk '{print $1}' | grep '^ance-' | tr '\n' ' ')"
  for f in "$DIR"/run/*.pid; do [ -f "$f" ] && echo "$(basename "$f" .pid): pid $(cat "$f") $(alive "$(cat "$f")" && echo alive || echo dead)"; done
  if alive "$(pid_in "$DIR/run/slurmctld.pid")"; then in_ns ance-ctl sinfo -N; in_ns ance-ctl squeue; fi
}

[ "$(id -u)" = 0 ] || { say "needs root (namespaces, daemons)"; exit 3; }
case "${1:-}" in
  up) install_packages; write_conf; net_up; start_daemons ;;
  down) down ;;
  status) status ;;
  exec) shift; in_node ance-ctl "$@" ;;
  local) n=$2; shift 2; nsenter -t "$(pid_in "$DIR/run/slurmd-$n.pid")" -m "$@" ;;
  link) ip link set "$(veth_of "$2")" "$3"; say "$2: link $3" ;;
  *) echo "usage: $0 up|down|status|exec CMD...|link NODE up|down" >&2; exit 2 ;;
esac
