#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine: installs what is missing, then
# `cargo test`. Tests start their own servers on free ports and stop them again.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v openssl >/dev/null || need+=(openssl)
command -v promtool >/dev/null || need+=(prometheus)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cargo test --workspace --all-targets --locked "$@"
cargo test --workspace --doc --locked
./scripts/fuzz-smoke.sh
./scripts/validate-deploy.sh
./clients/python/scripts/ci.sh
./clients/js/scripts/ci.sh
