#!/usr/bin/env bash
# A local cluster without Docker, on loopback: Redis, three gateways and nginx as the load
# balancer (WebSocket upgrade, long timeouts, least connections; ws, and wss with a
# development certificate made at first start). The same topology as docker-compose.yml.
#
#   scripts/cluster.sh up        build, start everything, print the URLs and credentials
#   scripts/cluster.sh token 42  print a token for user 42
#   scripts/cluster.sh publish --user 42 --event hello --data '{"x":1}'
#   scripts/cluster.sh down      stop everything
#
# Settings (environment): CLUSTER_DIR (/tmp/gateway-cluster), CLUSTER_PORT (8000, the
# balancer's ws), CLUSTER_TLS_PORT (8443, the balancer's wss), CLUSTER_BASE_PORT (8100:
# gateways on 8101.., admin on 9101..), CLUSTER_REDIS_PORT (6390), CLUSTER_BIN_DIR (built with
# cargo --release when unset), GATEWAY_JWT_SECRET and GATEWAY_API_KEY (made up when unset).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${CLUSTER_DIR:-/tmp/gateway-cluster}"
lb_port="${CLUSTER_PORT:-8000}"
tls_port="${CLUSTER_TLS_PORT:-8443}"
base_port="${CLUSTER_BASE_PORT:-8100}"
redis_port="${CLUSTER_REDIS_PORT:-6390}"
replicas=3

install_missing() {
  local need=()
  command -v redis-server >/dev/null || need+=(redis-server)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
  command -v openssl >/dev/null || need+=(openssl)
  command -v curl >/dev/null || need+=(curl)
  [ ${#need[@]} -eq 0 ] && return
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
}

nginx_bin() { command -v nginx || echo /usr/sbin/nginx; }

binaries() {
  if [ -n "${CLUSTER_BIN_DIR:-}" ]; then
    echo "$CLUSTER_BIN_DIR"
    return
  fi
  (cd "$root" && cargo build --release -q -p gateway -p publisher)
  echo "$root/target/release"
}

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }

token() {
  # shellcheck disable=SC1091
  source "$dir/cluster.env"
  local user="$1" exp header payload signature
  exp=$(($(date +%s) + 3600))
  header=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
  payload=$(printf '{"sub":"%s","exp":%d}' "$user" "$exp" | b64url)
  signature=$(printf '%s' "$header.$payload" | openssl dgst -sha256 -hmac "$GATEWAY_JWT_SECRET" -binary | b64url)
  echo "$header.$payload.$signature"
}

# wait_ready URL NAME [CURL ARGS…]
wait_ready() {
  local url="$1" name="$2"
  shift 2
  for _ in $(seq 1 200); do
    if curl -fsS -o /dev/null "$@" "$url" 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "$name did not become ready ($url); see $dir/*.log" >&2
  return 1
}

up() {
  install_missing
  mkdir -p "$dir"
  local bin
  bin="$(binaries)"
  if [ ! -f "$dir/cluster.env" ]; then
    {
      echo "GATEWAY_JWT_SECRET=${GATEWAY_JWT_SECRET:-$(openssl rand -hex 32)}"
      echo "GATEWAY_API_KEY=${GATEWAY_API_KEY:-$(openssl rand -hex 16)}"
      echo "CLUSTER_BIN=$bin"
      echo "CLUSTER_REDIS_PORT=$redis_port"
    } > "$dir/cluster.env"
  fi
  # shellcheck disable=SC1091
  source "$dir/cluster.env"

  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir"

  local upstreams=""
  for i in $(seq 1 $replicas); do
    local port=$((base_port + i)) admin=$((base_port + 1000 + i))
    GATEWAY_LISTEN="127.0.0.1:$port" GATEWAY_ADMIN_LISTEN="127.0.0.1:$admin" \
      GATEWAY_NODE_ID="gw-$i" GATEWAY_REDIS_URL="redis://127.0.0.1:$redis_port" \
      GATEWAY_JWT_SECRET="$GATEWAY_JWT_SECRET" GATEWAY_API_KEY="$GATEWAY_API_KEY" \
      nohup "$bin/gateway" > "$dir/gw-$i.log" 2>&1 &
    echo $! > "$dir/gw-$i.pid"
    upstreams+="    server 127.0.0.1:$port max_fails=1 fail_timeout=2s;"$'\n'
  done

  # The balancer's development certificate (self-signed; localhost, 127.0.0.1), made once and
  # kept across up/down: clients trust $dir/tls/tls.crt explicitly.
  sh "$root/deploy/nginx/dev-cert.sh" "$dir/tls" >/dev/null

  mkdir -p "$dir/nginx"
  cat > "$dir/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/nginx/body;
  proxy_temp_path $dir/nginx/proxy;
  fastcgi_temp_path $dir/nginx/fastcgi;
  uwsgi_temp_path $dir/nginx/uwsgi;
  scgi_temp_path $dir/nginx/scgi;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  upstream gateways {
    least_conn;
$upstreams  }
  proxy_http_version 1.1;
  proxy_set_header Upgrade \$http_upgrade;
  proxy_set_header Connection \$connection_upgrade;
  proxy_set_header Host \$host;
  proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
  proxy_set_header X-Forwarded-Proto \$scheme;
  proxy_read_timeout 1h;
  proxy_send_timeout 1h;
  proxy_buffering off;
  server {
    listen 127.0.0.1:$lb_port;
    location / {
      proxy_pass http://gateways;
    }
  }
  server {
    listen 127.0.0.1:$tls_port ssl;
    ssl_certificate $dir/tls/tls.crt;
    ssl_certificate_key $dir/tls/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://gateways;
    }
  }
}
EOF
  "$(nginx_bin)" -t -q -p "$dir/nginx" -c "$dir/nginx/nginx.conf"
  "$(nginx_bin)" -p "$dir/nginx" -c "$dir/nginx/nginx.conf"

  for i in $(seq 1 $replicas); do
    wait_ready "http://127.0.0.1:$((base_port + 1000 + i))/readyz" "gateway gw-$i"
  done
  wait_ready "http://127.0.0.1:$lb_port/healthz" "nginx"
  wait_ready "https://127.0.0.1:$tls_port/healthz" "nginx (TLS)" --cacert "$dir/tls/tls.crt"
  cat <<EOF
cluster up: Redis 127.0.0.1:$redis_port, gateways gw-1..gw-$replicas, balancer ws://127.0.0.1:$lb_port/ws
  TLS:         wss://localhost:$tls_port/ws  (development certificate: $dir/tls/tls.crt)
  admin APIs:  http://127.0.0.1:$((base_port + 1001))..$((base_port + 1000 + replicas))  (API key $GATEWAY_API_KEY)
  a token:     $0 token 42
  connect:     python3 -m websockets "ws://127.0.0.1:$lb_port/ws?token=\$($0 token 42)"
  over TLS:    SSL_CERT_FILE=$dir/tls/tls.crt python3 -m websockets "wss://localhost:$tls_port/ws?token=\$($0 token 42)"
  publish:     $0 publish --user 42 --event hello --data '{"x":1}'
  stop:        $0 down
EOF
}

down() {
  if [ -f "$dir/nginx/nginx.pid" ]; then
    "$(nginx_bin)" -q -p "$dir/nginx" -c "$dir/nginx/nginx.conf" -s stop 2>/dev/null || true
  fi
  for pidfile in "$dir"/gw-*.pid "$dir/redis.pid"; do
    [ -f "$pidfile" ] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
  rm -f "$dir/cluster.env"
  echo "cluster down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  token) token "${2:?user id}" ;;
  publish)
    shift
    # shellcheck disable=SC1091
    source "$dir/cluster.env"
    "$CLUSTER_BIN/gateway-publish" --redis-url "redis://127.0.0.1:$CLUSTER_REDIS_PORT" "$@"
    ;;
  *) echo "usage: $0 up|down|token USER|publish ARGS…" >&2; exit 2 ;;
esac
