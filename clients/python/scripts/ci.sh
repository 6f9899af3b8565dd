#!/usr/bin/env bash
# Lints, type-checks and tests the Python publisher (clients/python) on a fresh Debian machine:
# installs what is missing, makes a virtual environment in clients/python/.venv (never the
# system Python), then ruff, mypy --strict and pytest, whose end-to-end tests start their own
# redis-server processes (one server, a three-master cluster, a sentinel) and gateway processes
# on free loopback ports. Arguments go to pytest.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$here"

updated=""
install() {
  echo "installing: $*"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  [ -n "$updated" ] || { $sudo apt-get update -qq; updated=1; }
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
need=()
command -v python3 >/dev/null || need+=(python3 python3-venv)
command -v redis-server >/dev/null || need+=(redis-server)
# The Redis Cluster tests join their nodes with `redis-cli --cluster create`.
command -v redis-cli >/dev/null || need+=(redis-tools)
[ ${#need[@]} -eq 0 ] || install "${need[@]}"

# The gateway the end-to-end tests start, and the Rust CLI the vectors are compared with.
if [ -z "${GATEWAY_BIN:-}" ] \
  && { [ ! -x "$repo/target/debug/gateway" ] || [ ! -x "$repo/target/debug/gateway-publish" ]; }; then
  (cd "$repo" && cargo build -p gateway -p publisher --bins)
fi

if ! .venv/bin/python -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null; then
  rm -rf .venv
  # Debian's python3 makes virtual environments only with python3-venv installed.
  if ! python3 -m venv .venv >/dev/null 2>&1; then
    rm -rf .venv
    install python3-venv
    python3 -m venv .venv
  fi
fi
.venv/bin/python -m pip install -q -e '.[dev]'

.venv/bin/ruff check src tests
.venv/bin/ruff format --check src tests
.venv/bin/mypy

status=0
.venv/bin/python -m pytest -p no:cacheprovider "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$status"
