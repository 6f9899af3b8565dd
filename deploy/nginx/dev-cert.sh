#!/bin/sh
# Makes the load balancer's DEVELOPMENT certificate at first start, if there is none yet:
# self-signed, for localhost and 127.0.0.1, valid 90 days. Clients must trust tls.crt
# explicitly (curl --cacert, the browser's certificate store). Never use it in production.
#
#   dev-cert.sh DIR      writes DIR/tls.crt and DIR/tls.key (readable by the nginx user)
set -eu
dir="${1:-/certs}"
if [ -s "$dir/tls.crt" ] && [ -s "$dir/tls.key" ]; then
  echo "development certificate already in $dir"
  exit 0
fi
command -v openssl >/dev/null 2>&1 || apk add --no-cache openssl >/dev/null
mkdir -p "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 90 \
  -subj "/CN=localhost/O=gateway development" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" \
  -addext "basicConstraints=critical,CA:FALSE" \
  -addext "keyUsage=critical,digitalSignature" \
  -addext "extendedKeyUsage=serverAuth" \
  -keyout "$dir/tls.key" -out "$dir/tls.crt" 2>/dev/null
chmod 644 "$dir/tls.crt"
chmod 640 "$dir/tls.key"
echo "made a development certificate in $dir (CN=localhost, SAN localhost, 127.0.0.1, ::1)"
