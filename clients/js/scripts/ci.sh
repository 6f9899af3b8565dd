#!/usr/bin/env bash
# CI of the TypeScript client, on a fresh Debian machine: installs what is missing (Node, npm,
# Chromium, nginx, Redis from Debian's packages), then `npm ci`, lint (ESLint with
# typescript-eslint, tsc --noEmit of sources, tests and the example), build, bundle size, and
# `npm test`: unit tests, end-to-end tests against real gateway replicas behind nginx, and the
# example app in real Chromium. The gateway binary is $GATEWAY_BIN, or built with cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(cd ../.. && pwd)"

need=()
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
[ -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ] || need+=(chromium)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Vite and ESLint need Node 20.19 or later; Debian 12's nodejs is 18: take Node 20 from the npm
# registry's `node` package then.
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)'; then
  prefix="${XDG_CACHE_HOME:-$HOME/.cache}/gateway-js-node"
  echo "node $(node --version) is too old: installing node 20 into $prefix"
  npm install --prefix "$prefix" --no-save --no-audit --no-fund 'node@>=20.19 <21' >/dev/null
  export PATH="$prefix/node_modules/.bin:$PATH"
fi
echo "node $(node --version), npm $(npm --version)"

if [ -z "${GATEWAY_BIN:-}" ]; then
  (cd "$repo" && cargo build -q -p gateway --locked)
  export GATEWAY_BIN="$repo/target/debug/gateway"
fi

npm ci --no-audit --no-fund
npm run lint
npm run build
npm run size
npm test
