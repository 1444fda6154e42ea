#!/usr/bin/env bash
# Build the ance image where no container registry is reachable (only Debian and PyPI):
#   bash docker/build-local.sh                          the CPU image ance:0.1.0-cpu; a dockerd this script started is
#                                                       stopped at the end
#   bash docker/build-local.sh --gpu                    the GPU image ance:0.1.0 (the name docker/docker-compose.yml
#                                                       runs): torch's CUDA 12 wheels and faiss-gpu from PyPI, slim
#   bash docker/build-local.sh [--gpu] --keep-dockerd FILE   build and leave a dockerd it started running, its PID in
#                                                       FILE (FILE is empty when a dockerd was already running)
#   bash docker/build-local.sh --stop-dockerd FILE      stop the dockerd whose PID FILE holds (nothing if empty)
#   bash docker/build-local.sh [--gpu] --dry-run        print what it would build (image, base, torch, faiss, slim)
# What it does, each step only when needed:
#   1. Docker Engine, docker-compose, mmdebstrap from Debian's packages (apt-get, as root);
#   2. starts `dockerd` (defaults: overlay2, bridge) when none answers, remembering its PID;
#   3. a local base image ance-base:bookworm: `mmdebstrap --variant=minbase bookworm | docker import`;
#   4. the host's CA certificates (/usr/local/share/ca-certificates/*.crt: an HTTPS proxy's) into
#      docker/certs/; for the CPU image the torch wheel the host's pip finds offline (a CPU build) into docker/wheels/;
#   5. docker build with the Debian base, python3.11, that torch, faiss-cpu (CPU) or torch's CUDA 12 build from
#      PyPI and faiss-gpu (GPU: the CUDA runtime comes as nvidia-* wheels, the driver from the host through the
#      NVIDIA Container Toolkit; C headers and static libraries dropped); prints time and size.
# Settings (environment): ANCE_IMAGE (ance:0.1.0-cpu; --gpu: ance:0.1.0), ANCE_BASE (ance-base:bookworm),
# TORCH_SPEC (torch==2.13.0; --gpu: torch==2.10.0, PyPI's newest torch built for CUDA 12, the CUDA major of
# faiss-gpu 1.15.1), FAISS_SPEC (faiss-cpu; --gpu: faiss-gpu==1.15.1), ANCE_SLIM (--gpu: 1; 0 keeps headers
# and static libraries), DOCKER (/usr/bin/docker: Debian's CLI; a /usr/local/bin/docker without buildx may
# shadow it on PATH), DOCKERD_LOG (/tmp/ance-dockerd.log), BUILD_LOG (/tmp/ance-build.log).
# Exit status: 0 built; 1 the build failed; 2 usage; 3 Docker cannot run here (the reason on stderr).
set -euo pipefail
cd "$(dirname "$0")/.."

GPU=""
[ "${1:-}" = --gpu ] && { GPU=1; shift; }
if [ -n "$GPU" ]; then
  IMAGE=${ANCE_IMAGE:-ance:0.1.0}
  TORCH_SPEC=${TORCH_SPEC:-torch==2.10.0}
  FAISS_SPEC=${FAISS_SPEC:-faiss-gpu==1.15.1}
  SLIM=${ANCE_SLIM:-1}; [ "$SLIM" = 0 ] && SLIM=""
else
  IMAGE=${ANCE_IMAGE:-ance:0.1.0-cpu}
  TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
  FAISS_SPEC=${FAISS_SPEC:-faiss-cpu}
  SLIM=""
fi
BASE=${ANCE_BASE:-ance-base:bookworm}
DOCKER=${DOCKER:-/usr/bin/docker}
DOCKERD_LOG=${DOCKERD_LOG:-/tmp/ance-dockerd.log}
BUILD_LOG=${BUILD_LOG:-/tmp/ance-build.log}
PY_VERSION=3.11  # Debian bookworm's python3

say() { echo "build-local: $*" >&2; }
cannot() { say "Docker cannot run here: $*"; exit 3; }

stop_dockerd() {  # PID: TERM, then KILL after 30 s; only a process that is dockerd
  local pid=$1
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 0
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] || { say "PID $pid is not dockerd; left alone"; return 0; }
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 60); do [ -d "/proc/$pid" ] || { say "stopped dockerd (PID $pid)"; return 0; }; sleep 0.5; done
  say "dockerd (PID $pid) ignored SIGTERM for 30 s; SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

KEEP=""
case "${1:-}" in
  "") ;;
  --dry-run) [ $# -eq 1 ] || { say "usage: $0 [--gpu] --dry-run"; exit 2; }
    echo "image=$IMAGE base=$BASE torch=$TORCH_SPEC faiss=$FAISS_SPEC slim=${SLIM:-0}"; exit 0 ;;
  --keep-dockerd) [ $# -eq 2 ] || { say "usage: $0 --keep-dockerd PIDFILE"; exit 2; }; KEEP=$2; : >"$KEEP" ;;
  --stop-dockerd)
    [ -z "$GPU" ] && [ $# -eq 2 ] || { say "usage: $0 --stop-dockerd PIDFILE"; exit 2; }
    [ -f "$2" ] && stop_dockerd "$(cat "$2")"
    rm -f "$2"; exit 0 ;;
  *) say "usage: $0 [--gpu] [--keep-dockerd PIDFILE | --dry-run] | $0 --stop-dockerd PIDFILE"; exit 2 ;;
esac

# 1. packages
missing=()
[ -x "$DOCKER" ] && command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    || cannot "${missing[*]} missing, and installing needs root and apt-get"
  say "installing ${missing[*]} (apt-get)"
  t0=$SECONDS
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}"; } >/tmp/ance-apt.log 2>&1 || cannot "apt-get install ${missing[*]} failed (/tmp/ance-apt.log)"
  say "installed in $((SECONDS - t0)) s"
  [ -x "$DOCKER" ] || DOCKER=/usr/bin/docker
fi

# 2. a daemon
STARTED=""
if ! "$DOCKER" info >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || cannot "no Docker daemon answers and starting dockerd needs root"
  dockerd >"$DOCKERD_LOG" 2>&1 &
  STARTED=$!
  [ -n "$KEEP" ] && echo "$STARTED" >"$KEEP"
  say "started dockerd (PID $STARTED, log $DOCKERD_LOG)"
  for _ in $(seq 120); do "$DOCKER" info >/dev/null 2>&1 && break; [ -d "/proc/$STARTED" ] || break; sleep 0.5; done
  "$DOCKER" info >/dev/null 2>&1 || { tail -5 "$DOCKERD_LOG" >&2; stop_dockerd "$STARTED"; [ -n "$KEEP" ] && : >"$KEEP"
                                      cannot "dockerd did not come up (log above, $DOCKERD_LOG)"; }
fi
[ -z "$KEEP" ] && [ -n "$STARTED" ] && trap 'stop_dockerd "$STARTED"' EXIT

# 3. the base image
if ! "$DOCKER" image inspect "$BASE" >/dev/null 2>&1; then
  say "making $BASE (mmdebstrap --variant=minbase bookworm | docker import)"
  t0=$SECONDS
  mmdebstrap --variant=minbase --quiet bookworm - | "$DOCKER" import - "$BASE" >/dev/null \
    || cannot "mmdebstrap could not make a Debian base (is deb.debian.org reachable?)"
  say "$BASE made in $((SECONDS - t0)) s"
fi

# 4. certificates and the torch wheel into the build context (both git-ignored)
shopt -s nullglob
certs=(/usr/local/share/ca-certificates/*.crt)
rm -f docker/certs/*.crt
[ ${#certs[@]} -gt 0 ] && cp "${certs[@]}" docker/certs/
wheels=(docker/wheels/torch-*.whl)
if [ -z "$GPU" ] && [ ${#wheels[@]} -eq 0 ]; then
  python3 -m pip download -q --no-deps --no-index --only-binary=:all: --python-version "$PY_VERSION" \
      -d docker/wheels "$TORCH_SPEC" 2>/dev/null \
    || say "no local wheel for $TORCH_SPEC (python $PY_VERSION): the build takes torch from PyPI"
fi
wheels=(docker/wheels/torch-*.whl)
if [ -z "$GPU" ] && [ ${#wheels[@]} -gt 0 ]; then  # pin the wheel's own version (2.13.0+cpu), or pip may prefer PyPI's CUDA build
  version=${wheels[0]##*/torch-}
  TORCH_SPEC="torch==${version%%-*}"
fi

# 5. the image
say "building $IMAGE (base $BASE, $TORCH_SPEC, $FAISS_SPEC${SLIM:+, slim})"
t0=$SECONDS
DOCKER_BUILDKIT=0 "$DOCKER" build -f docker/Dockerfile -t "$IMAGE" \
  --build-arg BASE="$BASE" --build-arg PYTHON="python$PY_VERSION" \
  --build-arg TORCH_SPEC="$TORCH_SPEC" --build-arg TORCH_INDEX= --build-arg FAISS_SPEC="$FAISS_SPEC" \
  --build-arg SLIM="$SLIM" . \
  >"$BUILD_LOG" 2>&1 || { tail -30 "$BUILD_LOG" >&2; say "docker build failed (log $BUILD_LOG)"; exit 1; }
size=$("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE")
say "built $IMAGE in $((SECONDS - t0)) s, $((size / 1000000)) MB"
