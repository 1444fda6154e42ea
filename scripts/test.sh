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
# The two longest tests mostly wait (the chaos soak sleeps between its faults; the image build waits on
# pip and docker): for the whole suite (no test path given) they run in a second pytest beside the rest,
# their output printed after it. ANCE_TEST_SPLIT=0 runs everything in one pytest.
BESIDE=(tests/test_chaos.py tests/test_docker_smoke.py)
whole=1
for arg in "$@"; do [[ "$arg" == -* ]] || whole=0; done
norm() { [ "$1" -eq 5 ] && { echo "note: pytest collected no tests (exit 5); nothing failed" >&2; echo 0; } || echo "$1"; }
if [ "$whole" = 1 ] && [ "${ANCE_TEST_SPLIT:-1}" = 1 ]; then
  side_log=$(mktemp /tmp/ance-tests-beside.XXXXXX)
  python -m pytest -p no:cacheprovider --durations=5 "$@" "${BESIDE[@]}" >"$side_log" 2>&1 &
  side=$!
  trap 'kill $side 2>/dev/null; exit 130' INT
  trap 'kill $side 2>/dev/null; exit 143' TERM
  ignore=(); for t in "${BESIDE[@]}"; do ignore+=(--ignore="$t"); done
  python -m pytest -p no:cacheprovider --durations=25 "$@" "${ignore[@]}"
  rc=$(norm $?)
  wait $side
  side_rc=$(norm $?)
  echo "=== beside the rest: ${BESIDE[*]} (exit $side_rc) ==="
  cat "$side_log"
  rm -f "$side_log"
  [ "$rc" -ne 0 ] && exit "$rc"
  exit "$side_rc"
fi
python -m pytest -p no:cacheprovider --durations=25 "$@"
exit "$(norm $?)"
