#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
. .venv/bin/activate
# The compose test validates docker/docker-compose.yml with a real compose client.
if ! (docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose) >/dev/null 2>&1 \
      || echo "note: could not install docker-compose; the compose test will say so and skip"
  fi
fi
# promtool (tests/test_monitoring.py) from Debian's prometheus package, unpacked, never installed (its
# postinst would start a Prometheus server).
if [ -z "${PROMTOOL:-}" ] && ! command -v promtool >/dev/null; then
  if [ ! -x .cache/promtool/usr/bin/promtool ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (mkdir -p .cache/promtool && cd .cache/promtool && apt-get download -qq prometheus 2>/dev/null \
       && dpkg-deb -x prometheus_*.deb . && rm -f prometheus_*.deb) \
      || echo "note: could not unpack promtool; the prometheus.yml check will say so and skip"
  fi
  [ -x .cache/promtool/usr/bin/promtool ] && export PROMTOOL=$PWD/.cache/promtool/usr/bin/promtool
fi
# The compose smoke test (tests/test_docker_smoke.py) builds the image with docker/build-local.sh, which
# may start a dockerd; its PID goes here, and it is stopped when this script ends, even if pytest is killed.
# The GPU image (tests/test_docker_gpu_image.py) is built only with ANCE_CI_GPU_IMAGE=1; its fixture's
# dockerd PID goes to the same name + .gpu.
export ANCE_DOCKERD_PIDFILE=${ANCE_DOCKERD_PIDFILE:-$(mktemp /tmp/ance-dockerd.XXXXXX)}
trap 'bash docker/build-local.sh --stop-dockerd "$ANCE_DOCKERD_PIDFILE.gpu"
      bash docker/build-local.sh --stop-dockerd "$ANCE_DOCKERD_PIDFILE"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m pytest -p no:cacheprovider --durations=25 "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "warning: pytest collected no tests (exit 5); nothing failed" >&2
  exit 0
fi
exit $rc
